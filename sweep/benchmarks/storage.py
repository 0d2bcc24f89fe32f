"""Concurrent writers: Optuna's journal file vs SQLite RDB storage, and MLflow's sqlite
store vs a local tracking server over it, each under 4 processes doing what sweep workers
do (no training: pure storage).

Per Optuna worker: ``n`` trials of ask -> 10 x report -> tell through ``study.optimize``
(heartbeat on for SQLite, as a crash-safe setup needs). Per MLflow worker: ``n`` runs of
create -> params -> 10 metric batches -> terminate, on the store as the platform opens it
(``sweep.tracking.setup``: WAL mode, a checkpoint as each run ends). Reports wall time,
errors, and for Optuna whether trial numbers stayed unique and every trial finished.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
import time
import traceback
from typing import Any


def _optuna_worker(url: str, n: int, out: Any) -> None:
    import optuna

    from sweep.optuna_parts import build_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors: list[str] = []
    heartbeat = (5, 20) if url.startswith("sqlite") else (None, None)
    try:
        storage = build_storage(url, *heartbeat)
        study = optuna.load_study(study_name="bench", storage=storage)

        def objective(trial):
            x = trial.suggest_float("x", -1, 1)
            for step in range(10):
                trial.report(x * step, step)
            return x * x

        study.optimize(objective, n_trials=n, catch=(Exception,))
    except Exception as exc:
        errors.append("".join(traceback.format_exception_only(exc)).strip())
    out.put(errors)


def _mlflow_worker(uri: str, n: int, out: Any) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from sweep import tracking

    errors: list[str] = []
    tracking.setup(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name("bench").experiment_id
        for i in range(n):
            run = client.create_run(exp, run_name=f"r{i}")
            rid = run.info.run_id
            client.log_batch(rid, params=[Param(f"p{k}", str(k)) for k in range(40)])
            for step in range(10):
                client.log_batch(rid, metrics=[Metric(f"m{k}", 0.1 * k, 0, step) for k in range(5)])
            client.set_terminated(rid)
            tracking.checkpoint_stores()  # as sweep.tracking.open_run does
    except Exception as exc:
        errors.append("".join(traceback.format_exception_only(exc)).strip())
    out.put(errors)


def _run(target, arg: str, workers: int, n: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(arg, n, out)) for _ in range(workers)]
    started = time.perf_counter()
    for p in procs:
        p.start()
    errors = [e for _ in procs for e in out.get()]
    for p in procs:
        p.join()
    return {"wall_s": round(time.perf_counter() - started, 2), "errors": errors}


def optuna_storage(kind: str, workers: int, n: int) -> dict[str, Any]:
    import optuna

    from sweep.optuna_parts import build_storage

    with tempfile.TemporaryDirectory() as tmp:
        url = (
            f"journal:///{tmp}/optuna.journal"
            if kind == "journal"
            else f"sqlite:///{tmp}/optuna.db"
        )
        optuna.create_study(study_name="bench", storage=build_storage(url))  # once, up front
        result = _run(_optuna_worker, url, workers, n)
        study = optuna.load_study(study_name="bench", storage=build_storage(url))
        numbers = [t.number for t in study.trials]
        result.update(
            trials=len(numbers),
            unique_numbers=len(set(numbers)) == len(numbers),
            complete=sum(t.state.name == "COMPLETE" for t in study.trials),
        )
        return result


def mlflow_store(workers: int, n: int) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from sweep import tracking

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        tracking.setup(uri)  # as sweep tune: the store, then the workers
        MlflowClient(tracking_uri=uri).create_experiment("bench")  # schema first
        result = _run(_mlflow_worker, uri, workers, n)
        runs = MlflowClient(tracking_uri=uri).search_runs(
            [MlflowClient(tracking_uri=uri).get_experiment_by_name("bench").experiment_id],
            max_results=5000,
        )
        result.update(runs=len(runs), finished=sum(r.info.status == "FINISHED" for r in runs))
        return result


def mlflow_server(workers: int, n: int) -> dict[str, Any]:
    """The same writers through a local tracking server (``mlflow server`` on loopback
    over a sqlite backend store, one uvicorn worker): the alternative for many writers."""
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    from mlflow.tracking import MlflowClient

    from sweep.server import stop_group

    with tempfile.TemporaryDirectory() as tmp, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", f"{tmp}/art",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{uri}/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.5)
            client = MlflowClient(tracking_uri=uri)
            client.create_experiment("bench")
            result = _run(_mlflow_worker, uri, workers, n)
            runs = client.search_runs(
                [client.get_experiment_by_name("bench").experiment_id], max_results=5000
            )
            result.update(runs=len(runs), finished=sum(r.info.status == "FINISHED" for r in runs))
            return result
        finally:
            stop_group(server)


def run(workers: int = 4, n: int = 100) -> dict[str, Any]:
    return {
        "workers": workers,
        "per_worker": n,
        "journal": optuna_storage("journal", workers, n),
        "sqlite": optuna_storage("sqlite", workers, n),
        "mlflow_sqlite": mlflow_store(workers, n),
        "mlflow_server": mlflow_server(workers, n),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
