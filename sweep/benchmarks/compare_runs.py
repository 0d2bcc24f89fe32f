"""Benchmark: ``sweep.compare.runs()`` over 10,000 runs in a sqlite MLflow store.

    .venv/bin/python -m sweep.benchmarks.compare_runs [--runs 10000] [--studies 10] [--keep DIR]

Fills a fresh store with sweep-shaped runs (one parent per study; trials with ~45
params, ~15 final metrics and the sweep tags, each written by one ``log_batch``), then
times ``runs()`` (best of --repeat; the first includes the imports, as a user's first
call in a fresh process does). The store lives on /dev/shm when it exists: the
fill then costs CPU, not fsyncs, and the timing measures the read path, which is what
users wait for. Prints one JSON line (``make bench`` puts it in bench/results.md).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path


def fill(uri: str, n_runs: int, n_studies: int, workers: int = 1) -> float:
    """Write ``n_runs`` trial runs spread over ``n_studies`` studies; seconds taken.

    MLflow's write path costs ~15-20 ms of CPU per run (three calls: create_run with the
    tags, one log_batch with params and metrics, set_terminated). ``workers`` > 1 writes
    studies from several processes; on the 2-core dev machine that was slower (the
    processes queue on sqlite's write lock), hence the default of 1.
    """
    from concurrent.futures import ProcessPoolExecutor

    from mlflow.tracking import MlflowClient

    started = time.perf_counter()
    MlflowClient(tracking_uri=uri).search_experiments()  # schema first: creation races
    sizes = [n_runs // n_studies + (1 if s < n_runs % n_studies else 0) for s in range(n_studies)]
    if workers <= 1:
        for s, size in enumerate(sizes):
            fill_study(uri, s, size)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(fill_study, [uri] * n_studies, range(n_studies), sizes))
    return time.perf_counter() - started


def fill_study(uri: str, s: int, size: int) -> None:
    """One study: a parent run and ``size`` trial runs, each one create + log_batch + end."""
    import logging

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    logging.getLogger("alembic").setLevel(logging.WARNING)
    rng = random.Random(s)
    client = MlflowClient(tracking_uri=uri)
    name = f"bench_{s:02d}"
    exp = client.create_experiment(name)
    t0 = 1_700_000_000_000 + s * 10_000_000
    parent = client.create_run(
        exp,
        start_time=t0,
        run_name=f"study-{name}",
        tags={"sweep.role": "study", "study.name": name},
    )
    client.log_batch(
        parent.info.run_id,
        params=[Param("study.metrics", "val/acc:maximize"), Param("sampler.name", "tpe")],
        metrics=[Metric("champion/val_mean", 0.8, t0, 0), Metric("champion/val_sd", 0.01, t0, 0)],
    )
    client.set_terminated(parent.info.run_id, end_time=t0 + 9_000_000)
    for number in range(size):
        start = t0 + number * 1000
        state = rng.choices(("COMPLETE", "PRUNED", "FAIL"), (0.6, 0.35, 0.05))[0]
        width = rng.choice((16, 32, 64, 128, 256))
        lr = 10 ** rng.uniform(-4, -1)
        run = client.create_run(
            exp,
            start_time=start,
            run_name=f"trial-{number:04d}",
            tags={
                "mlflow.parentRunId": parent.info.run_id,
                "sweep.role": "trial",
                "study.name": name,
                "trial.number": str(number),
                "trial.state": state,
                "monitor": "val/acc",
                "mode": "max",
            },
        )
        params = {f"data.p{i}": str(i) for i in range(12)}
        params.update({f"trainer.k{i}": str(i * 0.5) for i in range(12)})
        params.update(
            {
                "model.name": rng.choice(("mlp", "cnn")),
                "model.width": str(width),
                "model.depth": str(rng.randint(1, 4)),
                "model.dropout": str(round(rng.uniform(0, 0.5), 3)),
                "model.batch_norm": str(rng.random() < 0.5),
                "optimizer.name": rng.choice(("adam", "adamw", "sgd")),
                "optimizer.lr": repr(lr),
                "optimizer.weight_decay": "0.0",
                "scheduler.name": "none",
                "seed": "0",
                "study.timeout": "None",
                "tracking.uri": uri,
            }
        )
        params.update({f"extra.flag{i}": str(i % 2 == 0) for i in range(8)})
        acc = rng.uniform(0.4, 0.95)
        metrics = {
            "val/acc": acc,
            "val/f1": acc - 0.01,
            "val/loss": 1 - acc,
            "train/loss": 1.1 - acc,
            "best/acc": acc,
            "best/f1": acc,
            "best/loss": 1 - acc,
            "best/epoch": float(rng.randint(0, 29)),
            "lr": lr,
            "time/epoch": rng.uniform(0.1, 1),
            "time/fit": rng.uniform(5, 30),
        }
        if state == "COMPLETE":
            metrics.update({"test/acc": acc - 0.02, "test/f1": acc - 0.03, "test/loss": 1.0})
        tags = [RunTag("trial.pruned_epoch", str(rng.randint(2, 20)))] if state == "PRUNED" else []
        client.log_batch(
            run.info.run_id,
            params=[Param(k, v) for k, v in params.items()],
            metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
            tags=tags,
        )
        client.set_terminated(
            run.info.run_id,
            status="FAILED" if state == "FAIL" else "FINISHED",
            end_time=start + rng.randint(5_000, 60_000),
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=1, help="fill processes (sqlite locks: 1 is fastest)"
    )
    parser.add_argument("--keep", help="keep the store in this folder (reused if filled)")
    args = parser.parse_args()

    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    folder = (
        Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep-bench-", dir=base))
    )
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    uri = f"sqlite:///{db}"
    try:
        fill_s = None
        if not (args.keep and db.exists()):
            fill_s = fill(uri, args.runs, args.studies, args.workers)
            print(f"filled {args.runs} runs in {fill_s:.1f} s", file=sys.stderr)

        from sweep.compare import runs, summary

        timings = []
        frame = None
        for _ in range(args.repeat):
            started = time.perf_counter()
            frame = runs(tracking_uri=uri)
            timings.append(time.perf_counter() - started)
        assert frame is not None
        started = time.perf_counter()
        table = summary(tracking_uri=uri)
        summary_s = time.perf_counter() - started
        result = {
            "runs": len(frame),
            "columns": frame.shape[1],
            "fill_s": None if fill_s is None else round(fill_s, 2),
            "runs_s_best": round(min(timings), 3),
            "runs_s_all": [round(t, 3) for t in timings],
            "summary_s": round(summary_s, 3),
            "studies": len(table),
        }
        line = json.dumps(result)
        print(line)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
