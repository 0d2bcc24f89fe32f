"""``python -m sweep.benchmarks.gpu``: the benchmark's measures that a GPU changes, short
enough for a lent GPU machine (the whole ``make bench`` takes 30-70 minutes).

The per-trial overhead (:func:`sweep.benchmarks.overhead.run`) and, for each seed, the
search's template-style study and our one-worker study on the same space, seed and trial
budget (:func:`sweep.benchmarks.search.baseline` and :func:`~sweep.benchmarks.search.ours`).
Both arms use the GPU when there is one (``accelerator=auto``). The results are written
after each step, so a run stopped at its time limit keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sweep.benchmarks.common import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.benchmarks.gpu")
    parser.add_argument("--repetitions", type=int, default=5, help="overhead rounds; 0 skips")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1], help="search seeds")
    parser.add_argument("--trials", type=int, default=20, help="trials per search")
    parser.add_argument("--out", type=Path, default=Path("bench/gpu.json"), help="JSON file")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    import torch

    from sweep.benchmarks import overhead, search
    from sweep.optuna_parts import env_threads

    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m sweep.benchmarks.gpu", *argv]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    save()
    if args.repetitions:
        results["overhead"] = overhead.run(args.repetitions)
        save()
    torch.set_num_threads(env_threads(1))  # as search.run: one worker's threads
    seeds: list[dict[str, Any]] = []
    for seed in args.seeds:
        template, ours = search.baseline(args.trials, seed), search.ours(args.trials, seed)
        seeds.append({"seed": seed, "template": template, "ours": ours})
        results["search"] = _search_summary(args.trials, seeds)
        save()
    print(json.dumps(results, indent=2))
    return 0


def _search_summary(n_trials: int, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall-time ratio per seed and their median; on how many seeds ours found an equal or
    better best val."""
    for s in seeds:
        s["speedup"] = s["template"]["wall_s"] / s["ours"]["wall_s"]
    return {
        "n_trials": n_trials,
        "median_speedup": statistics.median(s["speedup"] for s in seeds),
        "seeds_at_least_template": sum(
            s["ours"]["best_val"] >= s["template"]["best_val"] for s in seeds
        ),
        "per_seed": seeds,
    }


if __name__ == "__main__":
    sys.exit(main())
