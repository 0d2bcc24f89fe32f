"""The study dashboard: one self-contained HTML file per study.

``sweep report study.name=NAME [sweep overrides]`` reads the study from its Optuna
storage and its runs from MLflow, and writes ``dashboards/generated/<study>.html``
(relative to the working directory, like the study storage ``.sweep/``):

- optimisation history with the best value so far (per objective),
- parameter importances (Optuna's default evaluator; a note when trials are too few),
- parallel coordinates and slice plots (``optuna.visualization``),
- learning curves: the monitored validation metric per epoch (from MLflow) of the top
  trials beside the pruned ones, each pruned curve marked where it was cut,
- the Pareto front for a multi-objective study,
- the champion card (config, validation/test mean ± sd, registered model version),
- a table of every trial.

plotly.js is inlined once in the page: the file opens offline, from an e-mail or an
MLflow artifact view, with no CDN. The same file is logged to the study's parent MLflow
run (artifact ``report/<study>.html``). The page layout is the Jinja2 template
``dashboards/report_template.html``.

``sweep optuna-dashboard [sweep overrides]`` serves optuna-dashboard on 127.0.0.1 over
the same storage (:func:`optuna_dashboard_command`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import math
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    import pandas as pd

#: The page template, beside the package in the repository (like conf/).
TEMPLATE = Path(__file__).resolve().parent.parent / "dashboards" / "report_template.html"
#: Where reports land, relative to the working directory; git-ignored.
DEFAULT_OUT_DIR = Path("dashboards") / "generated"
#: Learning curves: this many best COMPLETE trials, and at most this many PRUNED ones.
TOP_CURVES = 5
MAX_PRUNED_CURVES = 12
#: Trials-table columns left out: per-epoch leftovers that say nothing about a trial.
HIDDEN_COLUMNS = ("train/loss", "lr", "time/epoch", "worker")
#: Optuna's importance evaluators need two finished trials to compare anything.
MIN_IMPORTANCE_TRIALS = 2
#: fANOVA's random forest (Optuna's default is 64 trees of depth 64).
FANOVA_TREES = 32
FANOVA_DEPTH = 8

_NAME_RE = r"[A-Za-z0-9_.\-]+"


@dataclass
class Section:
    """One titled block of the page: plotly figures (as HTML) and notes."""

    id: str
    title: str
    description: str = ""
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class StudyView:
    """What the page needs to know about the study, read once."""

    study: Any
    experiment: str
    tracking_uri: str
    storage: str
    frame: pd.DataFrame
    objectives: list[tuple[str, str]]  # (name, "maximize" | "minimize")
    monitor: str
    notes: list[str] = field(default_factory=list)
    #: False when the tracking server does not answer: MLflow calls are then skipped
    #: (MLflow's client would retry each one for minutes).
    mlflow_reachable: bool = True

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def parent(self) -> pd.Series | None:
        parents = self.frame[self.frame["role"] == "study"] if len(self.frame) else self.frame
        return parents.iloc[-1] if len(parents) else None


# -- entry points -------------------------------------------------------------------------
def build_report(
    overrides: list[str],
    out_dir: str | Path | None = None,
    log_to_mlflow: bool = True,
) -> Path:
    """Write ``<out_dir>/<study>.html`` for the study the sweep overrides name; its path.

    ``overrides`` are ``sweep tune``'s (at least ``study.name=...``; storage and tracking
    overrides find the study where it lives). The file is also logged to the study's
    parent MLflow run unless ``log_to_mlflow`` is False.
    """
    from sweep import config as config_mod
    from sweep.optuna_parts import load_existing_study, storage_url
    from sweep.study import validate_sweep_config
    from sweep.tracking import setup

    cfg = config_mod.compose("sweep", overrides)
    validate_sweep_config(cfg)  # a value sweep tune would refuse is refused here too
    name = str(cfg.study.name)
    if not re.fullmatch(_NAME_RE, name):  # the name becomes a file name
        raise ConfigError(f"study.name={name!r}: use letters, digits, '_', '-', '.'")
    key = "--out" if out_dir is not None else "report folder"
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR
    path = out / f"{name}.html"
    made = _prepare_out(out, path, key)  # before any work: a bad folder fails at once
    try:
        storage = storage_url(cfg.storage)
        tracking_uri = setup(cfg.tracking.uri, answer=False)  # the page notes an absent store
        study = load_existing_study(name, storage)
        html = render_report(study, str(cfg.tracking.experiment), tracking_uri, storage)
        _write(path, html, key)
    except BaseException:
        _remove(made)  # no empty folders left behind by a report that failed
        raise
    if log_to_mlflow:
        log_report(study, path, tracking_uri)
    return path


def _prepare_out(out: Path, path: Path, key: str) -> list[Path]:
    """Make ``out`` (and its missing parents) and check ``path`` can be written there.

    Returns the folders it made, for :func:`_remove` if the report then fails; a
    ConfigError naming ``key`` and the folder otherwise. Nothing is left behind.
    """
    if os.path.lexists(out) and not out.is_dir():
        raise ConfigError(f"{key} {out}: not a folder")
    made = [p for p in (out, *out.parents) if not os.path.lexists(p)]
    try:
        out.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        _temp(path).open("w").close()  # what _write() will create, then replace
        _temp(path).unlink()
    except OSError as exc:
        _remove(made)
        what = f"cannot write {path.name}" if out.is_dir() else "cannot create it"
        raise ConfigError(f"{key} {out}: {what} ({exc.strerror or exc})") from None
    return made


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write(path: Path, text: str, key: str) -> None:
    """Write ``path`` whole or not at all (a temporary file, then renamed over it)."""
    temp = _temp(path)
    try:
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        reason = exc.strerror or exc
        raise ConfigError(f"{key} {path.parent}: cannot write {path.name} ({reason})") from None


def _remove(folders: list[Path]) -> None:
    """Remove the folders :func:`_prepare_out` made, deepest first, where still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def report_command(args: list[str]) -> int:
    """``sweep report study.name=... [sweep overrides] [--out DIR] [--no-log]``."""
    out_dir: str | None = None
    log = True
    overrides: list[str] = []
    items = iter(args)
    for arg in items:
        if arg == "--no-log":
            log = False
        elif arg == "--out" or arg.startswith("--out="):
            out_dir = arg.split("=", 1)[1] if "=" in arg else next(items, None)
            if not out_dir or out_dir.startswith("--"):  # not the next option
                raise ConfigError("--out: give a folder")
        elif arg.startswith("--"):
            raise ConfigError(f"sweep report: unknown option {arg}; options: --out DIR, --no-log")
        else:
            overrides.append(arg)
    path = build_report(overrides, out_dir=out_dir, log_to_mlflow=log)
    print(f"report: {path}  (open it in a browser; no network needed)")
    return 0


def log_report(study: optuna.Study, path: Path, tracking_uri: str | None = None) -> str | None:
    """Log the report to the study's parent MLflow run; its run id (None: no parent run)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from sweep.study import PARENT_RUN_ATTR
    from sweep.tracking import check_reachable, one_line

    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        print("note: the study has no parent MLflow run; report not logged", file=sys.stderr)
        return None
    try:
        if tracking_uri:  # fail in seconds, not after MLflow's minutes of retries
            check_reachable(tracking_uri, must_exist=True)
        MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(path), "report")
    except ConfigError as exc:
        print(f"note: report not logged to MLflow: {exc}", file=sys.stderr)
        return None
    except MlflowException as exc:  # e.g. the parent run is in another store, or deleted
        print(f"note: report not logged to MLflow: {one_line(exc)}", file=sys.stderr)
        return None
    return run_id


# -- the page ---------------------------------------------------------------------------------
def render_report(
    study: optuna.Study, experiment: str, tracking_uri: str, storage: str = ""
) -> str:
    """The report page for ``study`` (its runs in MLflow ``experiment``) as HTML text."""
    import jinja2
    from plotly.offline import get_plotlyjs

    from sweep.tracking import redact

    view = _view(study, experiment, tracking_uri, storage)
    sections = [
        _section("history", "Optimisation history", _history, view),
        _section("importance", "Parameter importances", _importances, view),
        _section("parallel", "Parallel coordinates", _parallel, view),
        _section("slice", "Slice plots", _slices, view),
        _section("curves", "Learning curves", _curves, view),
    ]
    if view.multi_objective:
        sections.append(_section("pareto", "Pareto front", _pareto, view))
    champion, champion_note = _champion(view)
    trials = _trials_table(view, champion)
    trials["failures"] = _failures(view)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails, not renders blank
    )
    parent = view.parent()
    header = {
        "name": study.study_name,
        "n_trials": len(trials["rows"]),
        "objectives": ", ".join(f"{n} ({d})" for n, d in view.objectives),
        "sampler": _param(parent, "sampler.name"),
        # Optuna cannot prune a multi-objective study: it ran without the configured one.
        "pruner": "none (multi-objective)"
        if view.multi_objective
        else _param(parent, "pruner.name"),
        "experiment": experiment,
        "parent_run_id": None if parent is None else parent["run_id"],
        "storage": redact(storage),
        "tracking_uri": redact(tracking_uri),
    }
    return env.get_template(TEMPLATE.name).render(
        plotlyjs=get_plotlyjs(),
        study=header,
        cards=_cards(view, champion),
        notes=view.notes,
        sections=sections,
        champion=champion,
        champion_note=champion_note,
        trials=trials,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def _view(study: optuna.Study, experiment: str, tracking_uri: str, storage: str) -> StudyView:
    import pandas as pd

    notes: list[str] = []
    frame, reachable = _mlflow_frame(study, experiment, tracking_uri, notes)
    objectives = _objectives(study, frame)
    monitors = frame.loc[frame["role"] == "trial", "monitor"].dropna() if len(frame) else []
    if len(monitors):
        monitor = str(pd.Series(monitors).mode().iloc[0])
    else:
        monitor = next((n for n, _ in objectives if n.startswith("val/")), "val/loss")
    return StudyView(
        study, experiment, tracking_uri, storage, frame, objectives, monitor, notes, reachable
    )


def _mlflow_frame(
    study: optuna.Study, experiment: str, tracking_uri: str, notes: list[str]
) -> tuple[pd.DataFrame, bool]:
    """The study's MLflow runs (parents included), and whether the store answered.

    Without them (no experiment, no server) the page still shows Optuna's side; why is
    added to ``notes``.
    """
    import pandas as pd

    from sweep import compare
    from sweep.tracking import check_reachable, one_line

    empty = pd.DataFrame(columns=list(compare.BASE_COLUMNS))
    try:
        check_reachable(tracking_uri, must_exist=True)
    except ConfigError as exc:
        notes.append(f"MLflow: {exc}")
        return empty, False
    try:
        frame = compare.runs(
            experiments=[experiment],
            studies=[study.study_name],
            tracking_uri=tracking_uri,
            include_parents=True,
            tags=compare.CHAMPION_TAGS,
        )
    except Exception as exc:
        notes.append(f"MLflow: {exc if isinstance(exc, ConfigError) else one_line(exc)}")
        return empty, True
    return frame, True


def _objectives(study: optuna.Study, frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Objective names from the parent run's ``study.metrics`` param; generic otherwise."""
    directions = [d.name.lower() for d in study.directions]
    logged = None
    if len(frame) and "study.metrics" in frame:
        values = frame.loc[frame["role"] == "study", "study.metrics"].dropna()
        logged = str(values.iloc[-1]) if len(values) else None
    names = [item.rsplit(":", 1)[0] for item in logged.split(",")] if logged else []
    if len(names) != len(directions):
        names = (
            ["value"]
            if len(directions) == 1
            else [f"objective {i}" for i, _ in enumerate(directions)]
        )
    return list(zip(names, directions, strict=True))


def _section(id_: str, title: str, build: Callable[[StudyView, Section], None], view) -> Section:
    """Build one section; a failure becomes a note on the page, not a failed report."""
    from sweep.tracking import one_line

    section = Section(id_, title)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build(view, section)
        for w in caught:
            text = str(w.message).strip().splitlines()[0]
            if issubclass(w.category, UserWarning) and text not in section.notes:
                section.notes.append(text)
    except Exception as exc:
        section.notes.append(f"could not draw this section: {one_line(exc)}")
    return section


def _finished(view: StudyView, state: str = "COMPLETE") -> list:
    return [t for t in view.study.get_trials(deepcopy=False) if t.state.name == state]


def _target(view: StudyView, index: int) -> Callable | None:
    """Optuna's ``target`` argument: None for a single objective (Optuna's own handling)."""
    if not view.multi_objective:
        return None
    return lambda t: t.values[index]


def _html(fig, height: int = 420) -> str:
    fig.update_layout(
        template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 50, "b": 50}
    )
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,  # inlined once in the page head
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


# -- sections -----------------------------------------------------------------------------------
def _history(view: StudyView, section: Section) -> None:
    import optuna.visualization as ov
    import plotly.graph_objects as go

    section.description = "Each finished trial's objective; the line is the best so far."
    complete = _finished(view)
    if not complete:
        section.notes.append("no completed trial yet")
        return
    for i, (name, direction) in enumerate(view.objectives):
        target = _target(view, i)
        fig = ov.plot_optimization_history(view.study, target=target, target_name=name)
        if target is not None:  # Optuna draws the best-so-far line only without a target
            xs, best, current = [], [], None
            for t in sorted(complete, key=lambda t: t.number):
                v = t.values[i]
                pick = max if direction == "maximize" else min
                current = v if current is None else pick(current, v)
                xs.append(t.number)
                best.append(current)
            fig.add_trace(go.Scatter(x=xs, y=best, mode="lines", name="best so far"))
        fig.update_layout(title=f"{name} ({direction})")
        if len(view.study.trials) <= 20:  # whole trial numbers, not plotly's 0.5 steps
            fig.update_xaxes(dtick=1)
        section.figures.append(_html(fig))


def _importances(view: StudyView, section: Section) -> None:
    import plotly.graph_objects as go

    complete = _finished(view)
    params = {k for t in complete for k in t.params}
    if len(complete) < MIN_IMPORTANCE_TRIALS or not params:
        section.notes.append(
            f"needs at least {MIN_IMPORTANCE_TRIALS} completed trials with sampled "
            f"parameters (has {len(complete)})"
        )
        return
    section.description = (
        "Two of Optuna's evaluators: PED-ANOVA (its default) scores what it takes to reach "
        "the top 10% of trials; fANOVA scores each parameter's share of the objective's "
        "variance over all trials. Where they disagree, or with few trials, treat the "
        f"ranking as a hint ({len(complete)} completed trials)."
    )
    for i, (name, direction) in enumerate(view.objectives):
        scores = _importance_scores(view, i, direction, section)
        if not scores:
            continue
        # Rank by the mean over evaluators, most important on top (plotly draws y upwards).
        order = sorted(params, key=lambda p: sum(s.get(p, 0.0) for s in scores.values()))
        fig = go.Figure(
            [
                go.Bar(
                    x=[values.get(p, 0.0) for p in order],
                    y=order,
                    name=label,
                    orientation="h",
                    text=[f"{values.get(p, 0.0):.2f}" for p in order],
                    textposition="auto",
                )
                for label, values in scores.items()
            ]
        )
        fig.update_layout(
            title=f"importance for {name}",
            xaxis_title="importance (sums to 1 per evaluator)",
            barmode="group",
            legend={"orientation": "h", "y": -0.25},
        )
        section.figures.append(_html(fig, height=max(300, 120 + 50 * len(order))))


def _importance_scores(
    view: StudyView, index: int, direction: str, section: Section
) -> dict[str, dict[str, float]]:
    """evaluator label -> {param: importance} for objective ``index``; failures as notes."""
    import optuna

    from sweep.tracking import one_line

    target = None
    if view.multi_objective:
        # PED-ANOVA ranks parameters by how they reach *low* values of a target: flip
        # maximised objectives (fANOVA's variance shares are unchanged by the sign).
        sign = -1.0 if direction == "maximize" else 1.0
        target = lambda t: sign * t.values[index]  # noqa: E731
    evaluators = {
        "PED-ANOVA (top 10%)": optuna.importance.PedAnovaImportanceEvaluator(),
        # Fewer, shallower trees than Optuna's default (64 of depth 64): measured on
        # 100- and 400-trial studies, the same ranking (shares within 0.05) 8-15x faster.
        "fANOVA (variance)": optuna.importance.FanovaImportanceEvaluator(
            n_trees=FANOVA_TREES, max_depth=FANOVA_DEPTH, seed=0
        ),
    }
    scores = {}
    for label, evaluator in evaluators.items():
        try:
            with warnings.catch_warnings():
                # PED-ANOVA warns on every target that it ranks for low values: done above.
                warnings.filterwarnings("ignore", message=r".*to achieve low `target` values.*")
                found = optuna.importance.get_param_importances(
                    view.study, evaluator=evaluator, target=target
                )
            scores[label] = {k: float(v) for k, v in found.items()}
        except Exception as exc:  # one evaluator failing still leaves the other's answer
            section.notes.append(f"{label}: {one_line(exc)}")
    return scores


def _parallel(view: StudyView, section: Section) -> None:
    import optuna.visualization as ov

    section.description = "Every completed trial as a line through its parameter values."
    if not _finished(view):
        section.notes.append("no completed trial yet")
        return
    for i, (name, _) in enumerate(view.objectives):
        fig = ov.plot_parallel_coordinate(view.study, target=_target(view, i), target_name=name)
        fig.update_layout(title=f"parallel coordinates: {name}")
        section.figures.append(_html(fig))


def _slices(view: StudyView, section: Section) -> None:
    import optuna.visualization as ov

    section.description = "The objective against each parameter (colour: trial number)."
    if not _finished(view):
        section.notes.append("no completed trial yet")
        return
    for i, (name, _) in enumerate(view.objectives):
        fig = ov.plot_slice(view.study, target=_target(view, i), target_name=name)
        fig.update_layout(title=f"slice plots: {name}")
        section.figures.append(_html(fig))


def _curves(view: StudyView, section: Section) -> None:
    import plotly.graph_objects as go

    from sweep import compare

    monitor = view.monitor
    # The curves are of the monitored metric: the best trials are the best by it.
    complete = [t for t in _finished(view) if t.user_attrs.get(monitor) is not None]
    complete.sort(key=lambda t: t.user_attrs[monitor], reverse=_maximized(view, monitor))
    top = complete[:TOP_CURVES]
    pruned = _finished(view, "PRUNED")[-MAX_PRUNED_CURVES:]
    section.description = (
        f"{monitor} per epoch (MLflow step) of the {len(top)} best completed trials "
        f"(by {monitor}) and of {len(pruned)} pruned trials; × marks where a pruned "
        "trial was stopped."
    )
    if not top and not pruned:
        section.notes.append("no completed or pruned trial yet")
        return
    run_ids = {t.number: t.user_attrs.get("mlflow_run_id") for t in (*top, *pruned)}
    wanted = [r for r in run_ids.values() if r]
    curves = None  # without MLflow, Optuna's intermediate values draw the curves
    if wanted and view.mlflow_reachable:
        curves = compare.history(wanted, [monitor], tracking_uri=view.tracking_uri)
    fig = go.Figure()
    palette = ["#0969da", "#1a7f37", "#8250df", "#bf3989", "#0a7d87", "#953800"]
    for rank, trial in enumerate(top):
        xs, ys = _curve(trial, run_ids.get(trial.number), curves)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"trial {trial.number} (#{rank + 1})",
                line={"color": palette[rank % len(palette)], "width": 2.5},
            )
        )
    for trial in pruned:
        xs, ys = _curve(trial, run_ids.get(trial.number), curves)
        if not xs:
            continue
        cut = trial.user_attrs.get("pruned_epoch", xs[-1])
        cut_value = ys[xs.index(cut)] if cut in xs else ys[-1]
        group = f"pruned-{trial.number}"
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"trial {trial.number} (pruned @ {cut})",
                legendgroup=group,
                line={"color": "#9a6700", "dash": "dot", "width": 1.5},
                opacity=0.75,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[cut if cut in xs else xs[-1]],
                y=[cut_value],
                mode="markers",
                legendgroup=group,
                showlegend=False,
                marker={"symbol": "x", "size": 12, "color": "#cf222e"},
                hovertext=[f"trial {trial.number} pruned at epoch {cut}"],
                hoverinfo="text",
            )
        )
    fig.update_layout(title=f"{monitor} per epoch", xaxis_title="epoch", yaxis_title=monitor)
    fig.update_xaxes(tick0=0, dtick=1 if _max_epoch(fig) <= 20 else None)
    section.figures.append(_html(fig, height=460))


def _max_epoch(fig) -> float:
    return max((max(t.x) for t in fig.data if t.x is not None and len(t.x)), default=0)


def _curve(trial, run_id: str | None, curves: pd.DataFrame | None) -> tuple[list, list]:
    """A trial's curve from MLflow; Optuna's intermediate values (the best value so far
    at each epoch, as the pruning hook reports it) when MLflow has none."""
    if curves is not None and run_id:
        points = curves[curves["run_id"] == run_id]
        if len(points):
            return points["epoch"].tolist(), points["value"].tolist()
    steps = sorted(trial.intermediate_values)
    return steps, [trial.intermediate_values[s] for s in steps]


def _pareto(view: StudyView, section: Section) -> None:
    import optuna.visualization as ov

    names = [n for n, _ in view.objectives]
    section.description = "Trials no other trial beats on every objective (red: the front)."
    if len(names) > 3:
        section.notes.append(f"{len(names)} objectives: a Pareto plot shows 2 or 3")
        return
    if not _finished(view):
        section.notes.append("no completed trial yet")
        return
    fig = ov.plot_pareto_front(view.study, target_names=names)
    section.figures.append(_html(fig, height=480))


# -- champion, cards, trials table ----------------------------------------------------------
def _champion(view: StudyView) -> tuple[dict[str, Any] | None, str]:
    from sweep.champion import CHAMPION_ATTR

    raw = view.study.user_attrs.get(CHAMPION_ATTR)
    if not raw:
        return None, "no champion yet (champion.k=0, or the study has not finished)"
    card = {
        "trial": raw.get("trial"),
        "monitor": raw.get("monitor", view.monitor),
        "seeds": raw.get("seeds"),
        "val": _mean_sd(raw.get("val_mean"), raw.get("val_sd")),
        "test_metric": raw.get("test_metric", "test"),
        "test": _mean_sd(raw.get("test_mean"), raw.get("test_sd")),
        "model_uri": raw.get("model_uri", ""),
        "registered_name": raw.get("registered_name", ""),
        "version": raw.get("version", "?"),
        "source_run_id": raw.get("source_run_id"),
        "params": {k: _fmt(v) for k, v in (raw.get("params") or {}).items()},
        "config": {},
    }
    current = None
    if view.mlflow_reachable:
        current = _alias_version(raw.get("registered_name"), view.tracking_uri)
    if current and current != str(card["version"]):
        card["version"] = f"{card['version']} (the alias now points at version {current})"
    frame = view.frame
    if card["source_run_id"] and len(frame):
        from sweep.compare import param_columns

        row = frame[frame["run_id"] == card["source_run_id"]]
        if len(row):
            values = row.iloc[0]
            card["config"] = {
                c: _fmt(values[c]) for c in param_columns(frame) if not _missing(values[c])
            }
    card["search"] = _search_score(view, raw.get("trial"), card["monitor"])
    card["candidates"] = _candidates(view, raw)
    return card, ""


def _search_score(view: StudyView, number: Any, monitor: str) -> str:
    """The champion trial's own validation score in the search (one run, one seed)."""
    trial = next((t for t in view.study.get_trials(deepcopy=False) if t.number == number), None)
    value = None if trial is None else trial.user_attrs.get(monitor)
    return "n/a" if _missing(value) else f"{float(value):.4f}"


def _candidates(view: StudyView, champion: dict[str, Any]) -> list[dict[str, Any]]:
    """Every re-trained candidate (top-k trials, same number of seeds), best first.

    How far the champion's mean is from the runner-up's, against the seeds' spread, is
    how sure the choice is; the search score beside it shows the optimism of picking the
    best of many single runs.
    """
    from types import SimpleNamespace

    from sweep.champion import RERUNS_ATTR, candidates

    seeds = champion.get("seeds")
    reruns = [
        r
        for r in view.study.user_attrs.get(RERUNS_ATTR, {}).values()
        if r.get("seeds") == seeds and not _missing(r.get("val_mean"))
    ]
    monitor = champion.get("monitor", view.monitor)
    maximize = _maximized(view, monitor)
    if champion.get("k"):  # the cache may also hold re-runs of an earlier, larger top-k
        spec = SimpleNamespace(
            multi_objective=view.multi_objective,
            directions=[d for _, d in view.objectives],
            monitor=monitor,
            mode="max" if maximize else "min",
        )
        top = {t.number for t in candidates(view.study, spec, int(champion["k"]))}
        reruns = [r for r in reruns if r.get("trial") in top]
    reruns.sort(key=lambda r: float(r["val_mean"]), reverse=maximize)
    return [
        {
            "trial": r.get("trial"),
            "val": _mean_sd(r.get("val_mean"), r.get("val_sd")),
            "test": _mean_sd(r.get("test_mean"), r.get("test_sd")),
            "search": _search_score(view, r.get("trial"), r.get("monitor", view.monitor)),
            "champion": r.get("trial") == champion.get("trial"),
        }
        for r in reruns
    ]


def _maximized(view: StudyView, monitor: str) -> bool:
    """Whether a higher ``monitor`` is better: the runs' ``mode`` tag, else the objectives."""
    frame = view.frame
    if len(frame) and "mode" in frame:
        modes = frame.loc[frame["monitor"] == monitor, "mode"].dropna()
        if len(modes):
            return str(modes.mode().iloc[0]) == "max"
    for name, direction in view.objectives:
        if name == monitor:
            return direction == "maximize"
    return monitor not in ("val/loss", "val/mae")


def _failures(view: StudyView) -> list[dict[str, Any]]:
    """Failed trials grouped by their error (the first line), most frequent first."""
    groups: dict[str, list[int]] = {}
    for trial in _finished(view, "FAIL"):
        error = str(trial.user_attrs.get("error") or "no error recorded").strip()
        groups.setdefault(error.splitlines()[0] if error else "", []).append(trial.number)
    return [
        {"error": error, "count": len(numbers), "trials": ", ".join(map(str, numbers))}
        for error, numbers in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]


def _alias_version(name: str | None, tracking_uri: str) -> str | None:
    """The version the registry's ``champion`` alias points at now (None: unknown)."""
    if not name:
        return None
    from mlflow.tracking import MlflowClient

    from sweep.champion import ALIAS

    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        return str(client.get_model_version_by_alias(name, ALIAS).version)
    except Exception:
        return None


def _cards(view: StudyView, champion: dict[str, Any] | None) -> list[dict[str, str]]:
    trials = view.study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    cards = [{"label": "trials", "value": str(len(trials)), "note": "", "id": "n-trials"}]
    cards += [
        {"label": s.lower(), "value": str(n), "note": "", "id": f"n-{s.lower()}", "cls": s}
        for s, n in sorted(states.items())
    ]
    if view.multi_objective:
        front = [t.number for t in view.study.best_trials] if _finished(view) else []
        cards.append(
            {
                "label": "pareto front",
                "value": str(len(front)),
                "note": "trials " + ", ".join(map(str, front)) if front else "",
            }
        )
    elif _finished(view):
        best = view.study.best_trial
        name = view.objectives[0][0]
        cards.append(
            {"label": f"best {name}", "value": _fmt(best.value), "note": f"trial {best.number}"}
        )
    if champion:
        cards.append(
            {
                "label": f"champion {champion['monitor']}",
                "value": champion["val"],
                "note": f"trial {champion['trial']} · {champion['test_metric']} "
                f"{champion['test']} · version {champion['version']}",
                "id": "champion-value",
            }
        )
    frame = view.frame
    work = frame[frame["role"] != "study"] if len(frame) else frame
    seconds = float(work["duration_s"].sum()) if len(work) else 0.0
    if not seconds:
        seconds = sum(
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in trials
            if t.datetime_start and t.datetime_complete
        )
    cards.append({"label": "compute", "value": _duration(seconds), "note": "all runs, wall time"})
    for card in cards:
        card.setdefault("id", "")
        card.setdefault("cls", "")
    return cards


def _trials_table(view: StudyView, champion: dict[str, Any] | None) -> dict[str, Any]:
    from sweep.study import trials_table

    table = trials_table(view.study)
    if table.empty:
        return {"columns": [], "rows": [], "text_columns": []}
    table = table.drop(columns=[c for c in HIDDEN_COLUMNS if c in table])
    first = ["number", "state"]
    values = [c for c in table if c == "value" or c.startswith("value_")]
    params = [c for c in table if c.startswith("params.")]
    metrics = sorted(c for c in table if c.startswith("val/")) + sorted(
        c for c in table if c.startswith("test/")
    )
    tail = [c for c in ("error", "mlflow_run_id") if c in table]  # long text last
    rest = [c for c in table if c not in {*first, *values, *params, *metrics, *tail}] + tail
    order = [*first, *values, *params, *metrics, *rest]
    names = {c: c.removeprefix("params.") for c in order}
    if len(values) == len(view.objectives):
        for col, (name, _) in zip(values, view.objectives, strict=True):
            names[col] = f"{col} ({name})"
    text_columns = {"state", "mlflow_run_id", "error"}
    champion_trial = champion.get("trial") if champion else None
    rows = []
    for record in table[order].to_dict("records"):
        cells = [
            {
                "text": _fmt(record[c]),
                "cls": ("text " if c in text_columns else "")
                + (f"state state-{record[c]}" if c == "state" else ""),
            }
            for c in order
        ]
        rows.append(
            {
                "state": record["state"],
                "number": record["number"],
                "champion": record["number"] == champion_trial,
                "cells": cells,
            }
        )
    return {
        "columns": [names[c] for c in order],
        "rows": rows,
        "text_columns": [names[c] for c in order if c in text_columns],
    }


# -- formatting -----------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    """None, NaN, or pandas' NA (the typed frame's empty cell)."""
    import pandas as pd

    if value is None or value is pd.NA:
        return True
    try:
        return bool(value != value)  # NaN
    except TypeError:
        return False


def _fmt(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _mean_sd(mean: Any, sd: Any) -> str:
    if _missing(mean):
        return "n/a"
    return f"{float(mean):.4f} ± {0.0 if _missing(sd) else float(sd):.4f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _param(row: pd.Series | None, key: str) -> str:
    if row is None or key not in row or _missing(row[key]):
        return "?"
    return str(row[key])


# -- optuna-dashboard -----------------------------------------------------------------------------
def optuna_dashboard_command(args: list[str]) -> int:
    """``sweep optuna-dashboard [sweep overrides] [--host H] [--port P]``.

    Serves optuna-dashboard over the storage the sweep config names, on 127.0.0.1 by
    default. The storage is opened with the project's own ``build_storage``, so the
    embedded journal file (``journal:///...``), sqlite and PostgreSQL all work the same.
    """
    from sweep import config as config_mod
    from sweep.deploy import check_port_free
    from sweep.optuna_parts import build_storage, missing_storage_file, storage_url
    from sweep.tracking import redact

    host, port, overrides = "127.0.0.1", 8080, []
    items = iter(args)
    for arg in items:
        key, _, inline = arg.partition("=")
        if key in ("--host", "--port"):
            value = inline or next(items, "")
            if key == "--host":
                host = value
            elif value.isdigit() and 1 <= int(value) <= 65535:
                port = int(value)
            else:
                raise ConfigError(f"--port={value!r}: must be a port number (1-65535)")
        elif arg.startswith("--"):
            raise ConfigError(f"unknown option {arg}; options: --host H, --port P")
        else:
            overrides.append(arg)
    from sweep.study import validate_sweep_config

    cfg = config_mod.compose("sweep", overrides)
    validate_sweep_config(cfg)
    url = storage_url(cfg.storage)
    missing = missing_storage_file(url)
    if missing is not None:  # not created empty: a dashboard of nothing
        raise ConfigError(f"no Optuna storage at {missing}; run a study first (make sweep)")
    check_port_free(host, port)  # a host or port it cannot listen on: one line, now
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on http://{host}:{port}  (storage {redact(url)}; Ctrl-C stops)")
    run_server(build_storage(url), host=host, port=port)
    return 0
