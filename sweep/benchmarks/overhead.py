"""Per-trial overhead: the platform's trial vs a hand-written PyTorch loop.

Both train the same MLP on the same mnist1d tensors with the same batches (batch size,
seeded shuffling, Adam), validate every epoch on the whole validation split, keep the
best weights and evaluate the test split once. The platform's trial adds everything a
trial is: a sampled config composed by Hydra, Lightning's Trainer, the pruning hook,
the MLflow child run (params, per-epoch curves, test scores) and the logged model.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweep.benchmarks.common import median, trial_seconds, workdir

EPOCHS = 30
OVERRIDES = [
    "data=mnist1d",
    "model=mlp",
    "optimizer=adam",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.early_stopping.enabled=false",
    "champion.k=0",
]


def hand_loop(dataset: Any, cfg: Any, split: dict[str, float] | None = None) -> float:
    """Seconds for a plain PyTorch loop doing the trial's work (no tracking). With
    ``split``, the seconds of its training steps are added to ``split["training_steps"]``
    (two clock reads an epoch)."""
    import torch
    from torch.nn import functional as F

    from sweep.models.networks import build_network

    started = time.perf_counter()
    # The device the trial's Trainer picks (accelerator auto), data moved there once.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(int(cfg.seed))
    net = build_network(cfg.model, dataset.input_shape, dataset.num_outputs).to(device)
    # The multi-tensor step the platform's optimisers use (bit-identical to the default
    # per-tensor one, and faster): the ratio then measures the platform, not the optimiser.
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.optimizer.lr), foreach=True)
    x, y = (torch.from_numpy(a).to(device) for a in (dataset.x_train, dataset.y_train))
    xv, yv = (torch.from_numpy(a).to(device) for a in (dataset.x_val, dataset.y_val))
    xt, yt = (torch.from_numpy(a).to(device) for a in (dataset.x_test, dataset.y_test))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    bs, best, best_state = int(cfg.data.batch_size), -1.0, None
    for _ in range(EPOCHS):
        net.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(len(x), generator=gen).to(device)
        for start in range(0, len(x), bs):
            idx = order[start : start + bs]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if split is not None:
            split["training_steps"] = (
                split.get("training_steps", 0.0) + time.perf_counter() - epoch_started
            )
        net.eval()
        with torch.no_grad():
            out = net(xv)
            float(F.cross_entropy(out, yv))
            acc = float((out.argmax(1) == yv).float().mean())
        if acc > best:
            best, best_state = acc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    with torch.no_grad():
        float((net(xt).argmax(1) == yt).float().mean())
    return time.perf_counter() - started


def _next_trial(overrides: list[str], count: int) -> float:
    """Resume the study to ``count`` trials (one more) and return that trial's seconds."""
    from sweep.check import load_study
    from sweep.study import tune

    tune([*overrides, f"study.n_trials={count}"], progress=False)
    study, _ = load_study([*overrides, f"study.n_trials={count}"])
    return trial_seconds(study)[-1]


@contextlib.contextmanager
def point_study() -> Iterator[tuple[Any, Any, list[str], list[str]]]:
    """A private store and two studies of one point (every trial trains the hand loop's
    config), each warmed up by a first trial: yields the run config, the data, and the
    overrides of the study with the logged model and of the one without."""
    from sweep.config import compose, run_part
    from sweep.train import load_data

    cfg = run_part(compose("sweep", OVERRIDES))
    dataset = load_data(cfg)
    with workdir("overhead") as tmp:
        search = Path(tmp) / "conf" / "search"
        search.mkdir(parents=True)
        (search / "point.yaml").write_text("optimizer.lr: {type: categorical, choices: [0.003]}\n")
        common = [*OVERRIDES, f"hydra.searchpath=[file://{tmp}/conf]", "search=point"]
        full = [*common, "sampler=random", "study.name=full"]
        lean = [*common, "sampler=random", "study.name=lean", "tracking.log_model=false"]
        # Warm-up: first calls pay one-off costs (imports, the store's schema, caches).
        _next_trial(full, 1), _next_trial(lean, 1)
        yield cfg, dataset, full, lean


def run(repetitions: int = 5, breakdown_rounds: int = 3) -> dict[str, Any]:
    """Interleaved: a hand loop, a platform trial, a trial without the logged model, again
    and again; ratios are medians of each round's pair, so a machine that slows down or
    speeds up over the minutes (measured here: +-20%) affects both sides alike. Then
    ``breakdown_rounds`` more pairs with timers on the trial's steps (see
    :mod:`sweep.benchmarks.breakdown`), apart from the ratio's rounds."""
    import torch

    from sweep.benchmarks import breakdown
    from sweep.optuna_parts import env_threads

    with point_study() as (cfg, dataset, full, lean):
        hand, trial, trial_lean = [], [], []
        for i in range(repetitions):
            torch.set_num_threads(env_threads(1))  # what a single worker's trials use
            hand.append(hand_loop(dataset, cfg))
            trial.append(_next_trial(full, i + 2))
            trial_lean.append(_next_trial(lean, i + 2))
        steps = None
        if breakdown_rounds:
            steps = breakdown.measure(
                hand=lambda split: hand_loop(dataset, cfg, split),
                trial=lambda count: _next_trial(full, count),
                first=repetitions + 2,
                rounds=breakdown_rounds,
            )
    return {
        "epochs": EPOCHS,
        "hand_s": median(hand),
        "trial_s": median(trial),
        "trial_nomodel_s": median(trial_lean),
        "ratio": median(ratios := [t / h for t, h in zip(trial, hand, strict=True)]),
        "ratio_nomodel": median(lean := [t / h for t, h in zip(trial_lean, hand, strict=True)]),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "ratio_nomodel_range": [round(min(lean), 3), round(max(lean), 3)],
        "repetitions": repetitions,
        "threads": torch.get_num_threads(),
        **({"breakdown": steps} if steps else {}),
    }


if __name__ == "__main__":
    print(run())
