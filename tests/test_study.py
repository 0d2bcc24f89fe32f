"""End-to-end studies: real tiny sweeps, then read Optuna's storage and MLflow's store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

# Tiny: 600 synthetic rows, 3 epochs, a two-parameter space. A trial takes ~0.3 s.
BASE = ["data=synthetic", "search=tiny", "trainer.max_epochs=3", "study.seed=1"]
QUICK = [*BASE, "champion.k=0", "tracking.log_model=false"]


def _tune(overrides: list[str]):
    from sweep.study import tune

    return tune(overrides, progress=False)


def _study(name: str, overrides: list[str] | None = None):
    from sweep.check import load_study

    study, _ = load_study([f"study.name={name}", *(overrides or [])])
    return study


def _runs(experiment: str, role: str | None = "trial"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    filter_string = f"tags.`sweep.role` = '{role}'" if role else ""
    return client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000)


def _custom_search(tmp_path: Path, name: str, text: str) -> str:
    """A search space in the user's own config folder, found through hydra.searchpath."""
    folder = tmp_path / "myconf" / "search"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"


def test_study_end_to_end_trials_runs_parent_and_champion(tracked, tmp_path):
    import mlflow
    import numpy as np
    import torch
    from mlflow.tracking import MlflowClient

    from sweep.check import check

    threads = torch.get_num_threads()
    summary = _tune(
        [
            *BASE,
            "study.name=e2e",
            "study.n_trials=5",
            "champion.k=2",
            "champion.seeds=2",
            "study.threads=1",
        ]
    )
    assert torch.get_num_threads() == threads  # the process's own again after the trials
    study = _study("e2e")
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5
    # The base config is the first trial: a study is never worse than the defaults.
    assert study.trials[0].params["optimizer.lr"] == pytest.approx(0.003)

    runs = _runs("e2e")
    by_id = {r.info.run_id: r for r in runs}
    assert len(runs) == len(study.trials)  # one child run per trial, one to one
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    for trial in study.trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["trial.state"] == trial.state.name
        assert run.data.tags["trial.number"] == str(trial.number)
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["sampler"] == "tpe"
        assert run.data.tags["device"] == "cpu (1 threads)"  # study.threads
        for key, value in trial.params.items():
            tagged = run.data.tags[f"param.{key}"]
            assert float(tagged) == pytest.approx(value, rel=1e-12)
        if trial.state.name == "COMPLETE":
            assert run.info.status == "FINISHED"
            assert run.data.metrics["best/acc"] == pytest.approx(trial.value)
            assert "test/acc" in run.data.metrics
            client = MlflowClient()
            curve = client.get_metric_history(run.info.run_id, "val/acc")
            assert [m.step for m in curve] == [0, 1, 2]

    client = MlflowClient()
    parents = _runs("e2e", role="study")
    assert [p.info.run_id for p in parents] == [parent_id]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler.name"] == "tpe"
    assert parent.data.params["study.threads"] == "1"
    best_curve = client.get_metric_history(parent_id, "best_value")
    assert len(best_curve) == 5 and best_curve[-1].value == pytest.approx(study.best_value)
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.csv", "search_space.yaml", "base_config.yaml"} <= artifacts
    states = [t.state.name for t in study.trials]
    for state in set(states):
        assert parent.data.metrics[f"trials/{state.lower()}"] == states.count(state)

    # Champion: registered, aliased, tagged with its spread, loads and predicts.
    champion = summary["champion"]
    version = client.get_model_version_by_alias("e2e", "champion")
    assert version.tags["trial"] == str(champion["trial"])
    assert float(version.tags["val_mean"]) == pytest.approx(champion["val_mean"])
    assert {"val_sd", "test_mean", "test_sd"} <= set(version.tags)
    reruns = _runs("e2e", role="champion_rerun")
    assert len(reruns) == 4  # top 2 x 2 seeds, children of the parent
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in reruns)
    model = mlflow.pyfunc.load_model("models:/e2e@champion")
    rows = np.random.default_rng(0).normal(size=(4, 12)).astype("float32")
    assert len(model.predict(rows)) == 4
    assert parent.data.tags["champion.trial"] == str(champion["trial"])
    assert check(["study.name=e2e"]) == []


def test_resume_adds_trials_and_reuses_the_parent_run(tracked, tmp_path):
    _tune([*QUICK, "study.name=resume", "study.n_trials=2"])
    _tune([*QUICK, "study.name=resume", "study.n_trials=4"])
    study = _study("resume")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert len(_runs("resume", role="study")) == 1
    assert len(_runs("resume")) == 4
    # Nothing left to do: a third call adds no trial.
    narrower = _custom_search(
        tmp_path, "narrower", "optimizer.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
    )
    resumed = ["study.name=resume", "study.n_trials=4", "pruner=median", narrower]
    _tune([*QUICK, *resumed, "search=narrower"])
    assert len(_study("resume").trials) == 4
    # The parent keeps the first invocation's params; what later ones changed is tagged.
    parent = _runs("resume", role="study")[0].data
    assert parent.params["study.n_trials"] == "2"
    assert parent.params["pruner.name"] == "percentile_all"
    assert parent.tags["study.invocations"] == "3"
    assert parent.tags["resumed.study.n_trials"] == "4"
    assert parent.tags["resumed.pruner.name"] == "median"
    assert "resumed.study.seed" not in parent.tags
    # Another space: its digest is tagged, and the space in force is saved beside the first.
    assert parent.tags["resumed.search_space"] != parent.params["search_space"]
    from mlflow.tracking import MlflowClient

    parent_id = _runs("resume", role="study")[0].info.run_id
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent_id)}
    assert {"search_space.yaml", "search_space.3.yaml"} <= artifacts
    assert "search_space.2.yaml" not in artifacts  # the second call kept the space
    journal = Path.cwd() / ".sweep" / "optuna.journal"
    assert parent.params["storage"] == f"journal://{journal}"  # journal:///abs/path
    assert "resumed.storage" not in parent.tags


def test_a_storage_logged_in_another_spelling_is_not_a_resumed_change():
    from sweep.study import _same_storage_as

    now = "journal:///tmp/s/optuna.journal"
    assert _same_storage_as("journal:////tmp/s/optuna.journal", now) == now  # older runs
    assert _same_storage_as("journal:///tmp/t/optuna.journal", now) != now
    pg = "postgresql://u:pw@db/optuna"
    assert _same_storage_as("postgresql://u:***@db/optuna", pg) == "postgresql://u:***@db/optuna"


def test_resuming_or_joining_with_other_data_or_objectives_is_refused(tracked, cli):
    """A study's values mean its data set and its objectives: resuming or joining it with
    others is one line naming the key (exit 2), and the study and its parent run stay as
    they were. How it trains (batch size, space, sampler) may change."""
    from sweep.errors import ConfigError

    name = [*QUICK, "study.name=ident"]
    _tune([*name, "study.n_trials=2"])
    refused = {
        "data.num_samples=700": "data.num_samples=700: study 'ident' was run with "
        "data.num_samples=600; use another study.name, or the same data.num_samples",
        "study.metrics=[{name: val/f1, direction: maximize}]": "study.metrics=val/f1: "
        "study 'ident' was run with study.metrics=val/acc",
    }
    for override, message in refused.items():
        with pytest.raises(ConfigError) as info:
            _tune([*name, "study.n_trials=3", override])
        assert str(info.value).startswith(message)
    proc = cli("worker", *name, "study.n_trials=3", "data.split_seed=5")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: data.split_seed=5: study 'ident' was run with data.split_seed=0; "
        "use another study.name, or the same data.split_seed"
    ]
    assert len(_study("ident").trials) == 2
    (parent,) = _runs("ident", role="study")
    assert parent.info.status == "FINISHED" and "study.invocations" not in parent.data.tags

    _tune([*name, "study.n_trials=3", "data.batch_size=16"])
    assert len(_study("ident").trials) == 3


def test_a_studys_file_is_known_by_its_contents_not_its_path(tracked, tmp_path):
    """The same table copied elsewhere (another machine's mount, say) resumes the study;
    `data.task=auto` is the task it resolves to; a table with other rows is refused."""
    import numpy as np

    from sweep.errors import ConfigError

    rng = np.random.default_rng(0)
    rows = "\n".join(f"{a:.3f},{b:.3f},{int(a + b > 0)}" for a, b in rng.normal(size=(120, 2)))
    first, copy = tmp_path / "a" / "t.csv", tmp_path / "b" / "renamed.csv"
    for path in (first, copy):
        path.parent.mkdir()
        path.write_text("x1,x2,y\n" + rows + "\n")
    table = ["data=csv", "data.target=y", "search=tiny", "trainer.max_epochs=2"]
    name = [*table, "study.name=file", "champion.k=0", "tracking.log_model=false"]
    _tune([*name, f"data.path={first}", "study.n_trials=1"])
    _tune([*name, f"data.path={copy}", "data.task=classification", "study.n_trials=2"])
    assert len(_study("file").trials) == 2
    copy.write_text("x1,x2,y\n" + rows + "\n0.5,0.5,1\n")
    with pytest.raises(ConfigError) as info:
        _tune([*name, f"data.path={copy}", "study.n_trials=3"])
    assert str(info.value).startswith(f"data.path={copy}: other contents (sha256:")
    assert "than the file study 'file' was run on (sha256:" in str(info.value)
    # Another target on the same table: that key, not the direction it implies.
    with pytest.raises(ConfigError, match=r"^data.target=x1: study 'file' was run with"):
        _tune([*name, f"data.path={first}", "data.target=x1", "study.n_trials=3"])
    assert len(_study("file").trials) == 2


def test_the_next_trial_may_start_only_once_this_ones_point_is_stored(tracked, monkeypatch):
    """Parallel workers sample knowing the running trials' points (TPE's constant liar,
    the grid of a conditional space): the start-a-trial lock is released after the
    trial's parameters are in the storage, not before."""
    from sweep import budget as budget_mod
    from sweep import study as study_mod

    events = []
    suggest, release = study_mod.suggest, budget_mod.TrialBudget.release

    def recorded_suggest(trial, *args):
        sampled = suggest(trial, *args)
        stored = trial.study._storage.get_trial(trial._trial_id).params
        events.append(("stored", trial.number, stored == sampled))
        return sampled

    def recorded_release(self):
        if self.held:
            events.append(("released", None, None))
        release(self)

    monkeypatch.setattr(study_mod, "suggest", recorded_suggest)
    monkeypatch.setattr(budget_mod.TrialBudget, "release", recorded_release)
    _tune([*QUICK, "study.name=lock_order", "study.n_trials=3"])
    # The last release: after the third trial the budget finds the study complete.
    assert [e[0] for e in events] == ["stored", "released"] * 3 + ["released"]
    assert all(ok for kind, _, ok in events if kind == "stored")


def test_a_failure_before_the_trials_closes_the_parent_run_and_stops_waiting_workers(
    tracked, monkeypatch
):
    """Workers start while the study is set up; an error after the parent run exists
    (here, enqueuing the first points) ends that run FAILED and kills the workers still
    waiting for their go."""
    from sweep import study as study_mod
    from sweep import workers

    started, start = [], workers.start_local_workers

    def start_and_keep(spec, wait=False):
        procs = start(spec, wait)
        started.extend(procs)
        return procs

    def broken(study, spec):
        raise RuntimeError("enqueue failed")

    monkeypatch.setattr(workers, "start_local_workers", start_and_keep)
    monkeypatch.setattr(study_mod, "enqueue_base_point", broken)
    with pytest.raises(RuntimeError, match="enqueue failed"):
        _tune([*QUICK, "study.name=setup_fails", "study.n_workers=2"])
    assert len(started) == 1  # worker 0 is this process
    assert all(p.returncode is not None for p in started)  # killed and reaped
    (parent,) = _runs("setup_fails", role="study")
    assert parent.info.status == "FAILED"
    assert _study("setup_fails").trials == []


def test_a_pruner_that_must_prune_prunes_and_records_the_epoch(tracked):
    # Percentile 95 keeps only trials in the top 5% at each epoch: almost all are cut.
    _tune(
        [
            *QUICK,
            "study.name=prune",
            "study.n_trials=6",
            "sampler=random",
            "pruner=percentile",
            "pruner.percentile=95",
            "pruner.n_startup_trials=1",
            "pruner.n_warmup_steps=0",
            "trainer.max_epochs=4",
        ]
    )
    study = _study("prune")
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, "no trial was pruned"
    runs = {r.info.run_id: r for r in _runs("prune")}
    for trial in pruned:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial.state"] == "PRUNED"
        epoch = int(run.data.tags["trial.pruned_epoch"])
        assert epoch < 3  # stopped before max_epochs
        from mlflow.tracking import MlflowClient

        curve = MlflowClient().get_metric_history(run.info.run_id, "val/acc")
        assert len(curve) == epoch + 1  # its curve up to where it was cut


def test_failing_trials_are_recorded_and_the_study_goes_on(tracked, tmp_path):
    searchpath = _custom_search(
        tmp_path,
        "diverge",
        "optimizer.lr: {type: categorical, choices: [0.01, 1.0e12]}\n",
    )
    _tune(
        [
            searchpath,
            "search=diverge",
            "data=synthetic",
            "data.task=regression",
            "optimizer=sgd",
            "trainer.max_epochs=3",
            "sampler=grid",
            "champion.k=0",
            "tracking.log_model=false",
            "study.name=diverge",
            "study.n_trials=2",
        ]
    )
    study = _study("diverge", [searchpath])
    states = {t.params["optimizer.lr"]: t.state.name for t in study.trials}
    assert states[0.01] == "COMPLETE"
    assert states[1.0e12] == "FAIL"
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert "NonFiniteLossError" in failed.user_attrs["error"]
    run = next(r for r in _runs("diverge") if r.info.run_id == failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "became" in run.data.tags["error"]


def test_the_same_error_in_every_trial_stops_the_study_early(tracked, tmp_path):
    from sweep.study import StudyAborted

    searchpath = _custom_search(
        tmp_path, "explode", "optimizer.lr: {type: float, low: 1.0e10, high: 1.0e12, log: true}\n"
    )
    with pytest.raises(StudyAborted, match="3 trials in a row failed with: NonFiniteLossError"):
        _tune(
            [
                searchpath,
                "search=explode",
                "data=synthetic",
                "data.task=regression",
                "optimizer=sgd",
                "trainer.max_epochs=2",
                "champion.k=0",
                "study.name=explode",
                "study.n_trials=20",
            ]
        )
    study = _study("explode", [searchpath])
    assert len(study.trials) == 3  # not the whole budget
    assert all(t.state.name == "FAIL" for t in study.trials)
    runs = _runs("explode", role=None)
    assert runs and all(r.info.status != "RUNNING" for r in runs)


def test_a_conditional_parameter_is_only_sampled_when_its_condition_holds(tracked, tmp_path):
    searchpath = _custom_search(
        tmp_path,
        "cond",
        "model: {type: categorical, choices: [mlp, cnn]}\n"
        "model.width: {type: int, low: 8, high: 32, step: 24, when: {model: mlp}}\n"
        "model.channels: {type: int, low: 4, high: 8, step: 4, when: {model: cnn}}\n",
    )
    # 2 mlp points and 2 cnn points: the grid walks all 4, so both models are tried.
    _tune(
        [
            *QUICK,
            searchpath,
            "search=cond",
            "sampler=grid",
            "study.name=cond",
            "study.n_trials=4",
            "trainer.max_epochs=2",
        ]
    )
    study = _study("cond", [searchpath])
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    runs = {r.info.run_id: r for r in _runs("cond")}
    models = set()
    for trial in study.trials:
        model = trial.params["model"]
        models.add(model)
        run = runs[trial.user_attrs["mlflow_run_id"]]
        if model == "cnn":
            assert "model.width" not in trial.params and "param.model.width" not in run.data.tags
            assert "model.channels" in trial.params
            assert run.data.params["model.name"] == "cnn"
        else:
            assert "model.channels" not in trial.params
            assert "param.model.channels" not in run.data.tags
    assert models == {"mlp", "cnn"}
    # The parent's trials.csv: a conditional int keeps its ints where it was sampled.
    import io

    import pandas as pd
    from mlflow.tracking import MlflowClient

    parent_id = study.user_attrs["mlflow_parent_run_id"]
    path = MlflowClient().download_artifacts(parent_id, "trials.csv", str(tmp_path))
    table = pd.read_csv(io.StringIO(Path(path).read_text()), dtype=str)  # the cells as written
    widths = table.loc[table["params.model"] == "mlp", "params.model.width"]
    assert sorted(widths) == ["32", "8"]  # not 8.0: the cnn rows' gaps make no floats
    assert table.loc[table["params.model"] == "cnn", "params.model.width"].isna().all()


def test_multi_objective_study_logs_the_pareto_front(tracked):
    from mlflow.tracking import MlflowClient

    summary = _tune(
        [
            *QUICK,
            "study.name=pareto",
            "study.n_trials=4",
            "sampler=nsga2",
            "study.metrics=[val/acc,model/params]",
        ]
    )
    study = _study("pareto")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(summary["pareto"]) == len(study.best_trials) >= 1
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert "pareto_front.csv" in {a.path for a in MlflowClient().list_artifacts(parent)}
    front = ",".join(str(t.number) for t in study.best_trials)
    assert MlflowClient().get_run(parent).data.tags["pareto_trials"] == front


def test_a_single_objective_other_than_the_monitor_is_what_trials_monitor(tracked):
    """study.metrics=val/loss on a classification task: each trial's best epoch, early
    stopping, pruning and the champion all read val/loss, in its direction."""
    from mlflow.tracking import MlflowClient

    objective = "study.metrics=[{name: val/loss, direction: minimize}]"
    settings = ["study.name=loss", "study.n_trials=4", "champion.k=1", "champion.seeds=1"]
    summary = _tune([*BASE, *settings, "tracking.log_model=false", "pruner=median", objective])
    client = MlflowClient()
    for trial in _study("loss").trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.params["trainer.monitor"] == "val/loss"
        assert run.data.params["trainer.mode"] == "min"
        losses = [m.value for m in client.get_metric_history(run.info.run_id, "val/loss")]
        best_so_far = [min(losses[: i + 1]) for i in range(len(losses))]
        assert list(trial.intermediate_values.values()) == pytest.approx(best_so_far)
        if trial.state.name == "COMPLETE":
            assert trial.value == pytest.approx(min(losses))
    champion = summary["champion"]
    assert champion["monitor"] == "val/loss"
    # Its test score is the objective's own, not the task's headline accuracy.
    assert champion["test_metric"] == "test/loss"
    (rerun,) = _runs("loss", role="champion_rerun")
    assert champion["test_mean"] == pytest.approx(rerun.data.metrics["test/loss"])
    version = client.get_model_version_by_alias("loss", "champion")
    assert version.tags["test_metric"] == "test/loss"


def test_a_multi_objective_champion_is_the_front_s_best_by_validation_score(tracked):
    """model/params first, val/acc second: the candidates are the Pareto front's best by
    val/acc (what the champion is picked by), not its smallest models."""
    objectives = (
        "study.metrics=[{name: model/params, direction: minimize}, "
        "{name: val/acc, direction: maximize}]"
    )
    settings = ["study.name=front", "study.n_trials=6", "champion.k=1", "champion.seeds=1"]
    summary = _tune([*BASE, *settings, "tracking.log_model=true", objectives])
    front = _study("front").best_trials
    best = max(front, key=lambda t: t.user_attrs["val/acc"])
    smallest = min(front, key=lambda t: t.user_attrs["model/params"])
    assert best.number != smallest.number  # seeded: the front trades one for the other
    assert summary["champion"]["trial"] == best.number


def test_ctrl_c_while_a_finished_trial_is_recorded_keeps_it_then_stops(tracked, monkeypatch):
    """A real SIGINT after a trial's training, while its result is being recorded: the
    trial stays COMPLETE with its FINISHED run, the study stops (KeyboardInterrupt, as
    Ctrl-C anywhere else), and rerunning the command goes on from there."""
    import signal

    import optuna
    from mlflow.tracking import MlflowClient

    set_user_attr = optuna.trial.Trial.set_user_attr

    def record_then_signal(trial, key, value):
        set_user_attr(trial, key, value)
        if key == "best_epoch" and trial.number == 1:  # among the result's attributes
            signal.raise_signal(signal.SIGINT)

    settings = [*QUICK, "pruner=none", "study.name=ctrlc", "study.n_trials=4"]
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", record_then_signal)
    with pytest.raises(KeyboardInterrupt):
        _tune(settings)
    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", set_user_attr)
    trials = _study("ctrlc").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    client = MlflowClient()
    assert client.get_run(trials[1].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    _tune(settings)
    assert [t.state.name for t in _study("ctrlc").trials] == ["COMPLETE"] * 4


def test_ctrl_c_as_a_trial_is_created_fails_it_as_this_process_s_not_left_running(
    tracked, monkeypatch
):
    """A real SIGINT right after ``ask()`` made trial 1 RUNNING, before the objective
    recorded its worker: the signal waits until the trial is this process's, so it ends
    FAIL (interrupted, with its FAILED run), not RUNNING with no owner to declare dead; its
    point is retried when the command is rerun."""
    import signal

    import optuna
    from mlflow.tracking import MlflowClient

    ask = optuna.Study.ask

    def ask_then_signal(study, *args, **kwargs):
        trial = ask(study, *args, **kwargs)
        if trial.number == 1:
            signal.raise_signal(signal.SIGINT)
        return trial

    from sweep import interrupts

    settings = [*QUICK, "pruner=none", "study.name=askc", "study.n_trials=3"]
    monkeypatch.setattr(optuna.Study, "ask", ask_then_signal)
    handler = signal.signal(signal.SIGINT, interrupts.raise_keyboard_interrupt)  # the CLI's
    try:
        with pytest.raises(KeyboardInterrupt):
            _tune(settings)
    finally:
        signal.signal(signal.SIGINT, handler)
    monkeypatch.setattr(optuna.Study, "ask", ask)
    assert not interrupts._raised  # taken: the trainings below are not interrupted
    first, cut = _study("askc").trials[:2]
    assert (first.state.name, cut.state.name) == ("COMPLETE", "FAIL")
    assert cut.user_attrs["error"].startswith("interrupted")
    assert cut.user_attrs["worker"].endswith(f":{os.getpid()}")
    run = MlflowClient().get_run(cut.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    _tune(settings)
    trials = _study("askc").trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert [t.state.name for t in trials].count("COMPLETE") == 3
    assert any(t.user_attrs.get("retry_of") == 1 for t in trials)


def test_a_study_name_taken_in_another_live_storage_is_refused_until_that_study_is_gone(
    tracked, tmp_path
):
    """One MLflow experiment per study: a new study named like a live one of another
    Optuna storage is refused before it exists; once that one is gone, the name is free."""
    import optuna
    from mlflow.tracking import MlflowClient

    from sweep.errors import ConfigError

    first, second = tmp_path / "a" / "optuna.journal", tmp_path / "b" / "optuna.journal"
    settings = [*QUICK, "study.name=twin", "study.n_trials=2"]
    _tune([*settings, f"storage.path={first}"])
    (parent,) = _runs("twin", role="study")
    assert parent.data.tags["sweep.storage"] == f"journal://{first}"

    with pytest.raises(ConfigError) as refused:
        _tune([*settings, f"storage.path={second}"])
    message = str(refused.value)
    assert message.startswith("study.name=twin: MLflow experiment 'twin' holds study 'twin'")
    assert f"journal://{first}" in message and parent.info.run_id in message
    assert not second.exists()  # refused before its storage existed
    assert len(_runs("twin", role=None)) == 3  # the first study's parent and two trials

    # Resuming the first study is not a new study: it goes on.
    _tune([*settings, "study.n_trials=3", f"storage.path={first}"])
    assert len(_study("twin", [f"storage.path={first}"]).trials) == 3

    # The first study deleted from its storage: the name is free again.
    optuna.delete_study(
        study_name="twin",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(first))
        ),
    )
    _tune([*settings, f"storage.path={second}"])
    parents = _runs("twin", role="study")
    assert {p.data.tags["sweep.storage"] for p in parents} == {
        f"journal://{first}",
        f"journal://{second}",
    }
    client = MlflowClient()
    newest = _study("twin", [f"storage.path={second}"]).user_attrs["mlflow_parent_run_id"]
    assert client.get_run(newest).data.tags["sweep.storage"] == f"journal://{second}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["study.metrics=[model/params]"], "study.metrics=model/params: alone it would ignore"),
        (
            ["study.metrics=[val/loss]", "trainer.monitor=val/acc"],
            "study.metrics=val/loss (minimize): trainer.monitor=val/acc disagrees",
        ),
        (
            ["study.metrics=[{name: val/f1, direction: minimize}]", "trainer.mode=max"],
            "study.metrics=val/f1 (minimize): trainer.mode=max disagrees",
        ),
    ],
)
def test_a_single_objective_the_trials_cannot_monitor_is_refused(tracked, overrides, message):
    from sweep.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _tune([*QUICK, "study.name=bad", *overrides])
    assert str(info.value).startswith(message)
    assert _runs("bad", role=None) == []


def test_the_terminal_summary_shows_the_pareto_front_with_metric_names(tracked, capsys):
    from sweep.study import print_summary

    summary = _tune(
        [*QUICK, "study.name=front", "study.n_trials=3", "study.metrics=[val/acc,model/params]"]
    )
    capsys.readouterr()
    print_summary(summary)
    out = capsys.readouterr().out
    assert "Pareto front (val/acc max, model/params min)" in out
    header = next(line for line in out.splitlines() if "number" in line)
    assert "val/acc" in header and "model/params" in header and "state" in header
    for number in summary["pareto"]["number"]:
        assert any(line.split()[1:2] == [str(number)] for line in out.splitlines())


@pytest.mark.parametrize("sampler", ["random", "cmaes", "gp", "qmc"])
def test_every_sampler_runs_a_study(tracked, sampler):
    # tpe runs in the other tests, grid in the conditional and failure tests.
    _tune(
        [
            *QUICK,
            f"sampler={sampler}",
            f"study.name=s_{sampler}",
            "study.n_trials=2",
            "trainer.max_epochs=2",
        ]
    )
    assert len(_study(f"s_{sampler}").trials) == 2


def test_a_seeded_study_reproduces_its_points_and_values(tracked):
    settings = [*QUICK, "sampler.n_startup_trials=1", "study.n_trials=3", "pruner=none"]
    _tune([*settings, "study.name=seeded_a"])
    _tune([*settings, "study.name=seeded_b"])
    first, second = _study("seeded_a").trials, _study("seeded_b").trials
    assert len(first) == len(second) == 3
    # Trials 1 and 2 are TPE's model-based proposals: they depend on earlier values too.
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.values for t in first] == [t.values for t in second]


def test_a_grid_study_walks_its_points_once_without_the_base_point(tracked, tmp_path):
    # The base width (64) is outside the grid: enqueued, the grid sampler would fail it.
    searchpath = _custom_search(
        tmp_path,
        "grid2",
        "model.width: {type: categorical, choices: [8, 16]}\n"
        "optimizer.lr: {type: categorical, choices: [0.003, 0.01]}\n",
    )
    settings = [*QUICK, searchpath, "search=grid2", "sampler=grid", "pruner=none"]
    settings.append("study.name=grid2")
    _tune([*settings, "study.n_trials=10", "trainer.max_epochs=2"])
    _tune([*settings, "study.n_trials=10", "trainer.max_epochs=2"])  # resumed: done already
    study = _study("grid2", [searchpath])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    points = {(t.params["model.width"], t.params["optimizer.lr"]) for t in study.trials}
    assert points == {(8, 0.003), (8, 0.01), (16, 0.003), (16, 0.01)}


def test_a_conditional_grid_trains_each_distinct_config_once(tracked, tmp_path):
    # The product of the values would be 2 x 2 x 2 = 8 points; a width and a channel count
    # are never used together, so there are 2 mlp points and 2 cnn points.
    searchpath = _custom_search(
        tmp_path,
        "cgrid",
        "model: {type: categorical, choices: [mlp, cnn]}\n"
        "model.width: {type: categorical, choices: [8, 16], when: {model: mlp}}\n"
        "model.channels: {type: categorical, choices: [4, 8], when: {model: cnn}}\n",
    )
    settings = [*QUICK, searchpath, "search=cgrid", "sampler=grid", "pruner=none"]
    settings += ["study.name=cgrid", "study.n_trials=10", "trainer.max_epochs=2"]
    _tune(settings)
    _tune(settings)  # resumed: done already
    study = _study("cgrid", [searchpath])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    points = {tuple(sorted(t.params.items())) for t in study.trials}
    assert points == {
        (("model", "mlp"), ("model.width", 8)),
        (("model", "mlp"), ("model.width", 16)),
        (("model", "cnn"), ("model.channels", 4)),
        (("model", "cnn"), ("model.channels", 8)),
    }
    assert len(_runs("cgrid")) == 4


def test_champion_skips_a_candidate_whose_rerun_fails_and_follows_new_settings(tracked, tmp_path):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from sweep.train import _cached_dataset

    rows = pd.DataFrame({"x": range(120), "z": [i % 7 for i in range(120)]})
    rows["y"] = (rows.x % 3 == 0).astype(int)
    rows.to_csv(tmp_path / "keep.csv", index=False)
    rows.to_csv(tmp_path / "gone.csv", index=False)
    searchpath = _custom_search(
        tmp_path, "files", "data.path: {type: categorical, choices: [gone.csv, keep.csv]}\n"
    )
    settings = [
        searchpath,
        "search=files",
        "data=csv",
        "data.path=keep.csv",
        "data.target=y",
        "trainer.max_epochs=2",
        "sampler=grid",
        "study.name=files",
        "study.n_trials=2",
    ]
    _tune([*settings, "champion.k=0"])
    assert {t.params["data.path"] for t in _study("files", [searchpath]).trials} == {
        "gone.csv",
        "keep.csv",
    }
    # The file of one candidate disappears before the champion is picked.
    (tmp_path / "gone.csv").unlink()
    _cached_dataset.cache_clear()
    summary = _tune([*settings, "champion.k=2", "champion.seeds=1"])
    study = _study("files", [searchpath])
    keep = next(t for t in study.trials if t.params["data.path"] == "keep.csv")
    assert summary["champion"]["trial"] == keep.number
    version = MlflowClient().get_model_version_by_alias("files", "champion")
    assert version.tags["trial"] == str(keep.number)
    failed = [r for r in _runs("files", role="champion_rerun") if r.info.status == "FAILED"]
    assert len(failed) == 1 and "gone.csv" in failed[0].data.tags["error"]


def test_a_point_sampled_twice_is_one_champion_candidate(tracked, tmp_path):
    searchpath = _custom_search(
        tmp_path, "two", "optimizer.lr: {type: categorical, choices: [0.003, 0.01]}\n"
    )
    summary = _tune(
        [
            *BASE,
            searchpath,
            "search=two",
            "sampler=random",
            "pruner=none",
            "study.name=twice",
            "study.n_trials=5",
            "champion.k=3",
            "champion.seeds=1",
            "tracking.log_model=false",
        ]
    )
    study = _study("twice", [searchpath])
    assert {t.params["optimizer.lr"] for t in study.trials} == {0.003, 0.01}  # 5 of 2 points
    reruns = _runs("twice", role="champion_rerun")
    sources = sorted(int(r.data.tags["champion.source_trial"]) for r in reruns)
    lrs = sorted(study.trials[n].params["optimizer.lr"] for n in sources)
    assert lrs == [0.003, 0.01]  # each point re-trained once, however often it was sampled
    for n in sources:  # a point's candidate is its best-scored trial
        same = [t.value for t in study.trials if t.params == study.trials[n].params]
        assert study.trials[n].value == max(same)
    assert summary["champion"]["trial"] in sources


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("model.widthh: {type: int, low: 8, high: 16}\n", "search.model.widthh"),
        ("optimizer.lr: {type: float, low: 0.1, high: 0.01}\n", "low (0.1) must be < high"),
        (
            "optimizer.lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
            "log scale needs low > 0",
        ),
        ("data.batch_size: {type: categorical, choices: []}\n", "non-empty list"),
        ("model.width: {type: int, low: 8, high: 20, step: 5}\n", "does not divide"),
        ("model.width: {type: integer, low: 8, high: 20}\n", "unknown type"),
        (
            "model: {type: categorical, choices: [mlp, transformer]}\n",
            "unknown option 'transformer'",
        ),
        ("model.dropout: {type: float, low: 0.0, high: 1.5}\n", "model.dropout"),
    ],
)
def test_bad_search_spaces_fail_before_any_trial(tracked, tmp_path, space, message):
    from sweep.errors import SearchSpaceError

    searchpath = _custom_search(tmp_path, "bad", space)
    with pytest.raises(SearchSpaceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _tune([*QUICK, searchpath, "search=bad", "study.name=bad"])
    assert _runs("bad", role=None) == []
    assert not (tmp_path / ".sweep" / "optuna.journal").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampler=annealing", "sampler=annealing: unknown option"),
        ("pruner=asha", "pruner=asha: unknown option"),
        ("sampler.n_startup_trials=abc", "sampler.n_startup_trials"),
        ("study.n_trials=0", "study.n_trials=0"),
        ("study.threads=0", "study.threads=0"),
        ("study.threads=many", "study.threads='many': must be an integer, or auto"),
        ("study.n_workers=0", "study.n_workers=0: must be >= 1, or auto"),
        ("study.metrics=[val/r2]", "unknown metric 'val/r2'"),
        ("study.metrics=[5]", "study.metrics: 5 is not a metric; give auto, a metric name"),
        ("study.metrics=5", "study.metrics=5: give auto, a metric name, or a list like"),
        (
            "study.metrics=[{name: val/acc, dirction: minimize}]",
            "study.metrics: unknown key 'dirction'",
        ),
        ("study.name=''", "study.name='': use letters"),
    ],
)
def test_bad_sampler_pruner_or_study_settings_fail_before_any_trial(
    tracked, tmp_path, override, message
):
    from sweep.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        _tune([*QUICK, "study.name=bad", override])
    assert _runs("bad", role=None) == []


USER_FILES = {"table": "a,b\n1,2\n", "one line": "hello", "json lines": '{"a": 1}\n{"b": 2}\n'}


@pytest.mark.parametrize("kind", ["directory", "no parent", *USER_FILES])
def test_a_storage_file_that_cannot_be_a_journal_is_one_line(tracked, tmp_path, kind):
    """Never a traceback, and never Optuna's log appended to a file of the user's."""
    from sweep.errors import ConfigError

    path = tmp_path / "x"
    if kind == "directory":
        path.mkdir()
    elif kind == "no parent":
        path = Path("/proc/no/such/x.journal")
    else:
        path.write_text(USER_FILES[kind])
    with pytest.raises(ConfigError) as info:
        _tune([*QUICK, "study.name=bad", f"storage.path={path}"])
    expected = (
        f"storage.path={path}: a directory"
        if kind == "directory"
        else f"storage {path}: cannot open it as an Optuna journal: "
    )
    assert str(info.value).startswith(expected)
    assert _runs("bad", role=None) == []
    assert not Path(f"{path}.flock").exists()  # nothing left beside the user's file
    if kind in USER_FILES:
        assert path.read_text() == USER_FILES[kind]


def test_a_relative_sqlite_storage_url_keeps_its_files_here(tracked, tmp_path, monkeypatch):
    """sqlite:///optuna.db is relative (SQLAlchemy's rule): the database and the trial
    budget's lock beside it, in the working directory."""
    monkeypatch.setenv("SWEEP_STORAGE_URL", "sqlite:///rel.db")
    _tune([*QUICK, "study.name=rel", "study.n_trials=1", "storage=sqlite"])
    assert (tmp_path / "rel.db").exists() and (tmp_path / "rel.db.rel.lock").exists()


def test_joining_a_study_where_there_is_no_storage_creates_none(tracked, cli, tmp_path):
    proc = cli("worker", *QUICK, "study.name=nothing")
    assert proc.returncode == 2
    journal = tmp_path / ".sweep" / "optuna.journal"
    assert (
        proc.stderr.strip() == f"error: study.name=nothing: no such study (no storage at {journal})"
    )
    assert not (tmp_path / ".sweep").exists()


def test_bad_settings_on_the_cli_exit_2_with_one_line_and_no_run(cli, tmp_path):
    from conftest import count_runs

    proc = cli("tune", *QUICK, "study.name=bad", "pruner=asha")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pruner=asha: unknown option" in lines[0], proc.stderr
    assert count_runs(tmp_path / "mlflow.db") == 0
    assert not (tmp_path / ".sweep").exists()


@pytest.mark.parametrize("command", ["tune", "worker"])
def test_a_storage_server_it_cannot_reach_leaves_no_mlflow_store(tmp_path, command):
    from conftest import run_cli

    url = "postgresql://postgres:secret@127.0.0.1:1/test"  # nothing listens on port 1
    proc = run_cli(command, *QUICK, "storage=postgres", f"storage.url={url}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "storage.url=postgresql://postgres:***@127.0.0.1:1/test: cannot open" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no .sweep


def test_tune_cli_prints_the_top_trials_and_the_champion(cli):
    proc = cli(
        "tune", *BASE, "study.name=cli", "study.n_trials=3", "champion.k=1", "champion.seeds=2"
    )
    assert proc.returncode == 0, proc.stderr
    assert "top trials" in proc.stdout
    assert "champion: trial" in proc.stdout and "models:/cli@champion" in proc.stdout
    assert "make ui" in proc.stdout
