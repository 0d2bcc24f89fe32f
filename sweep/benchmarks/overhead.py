"""Per-trial overhead: the platform's trial vs a hand-written PyTorch loop.

Both train the same MLP on the same mnist1d tensors with the same batches (batch size,
seeded shuffling, Adam), validate every epoch on the whole validation split, keep the
best weights and evaluate the test split once. The platform's trial adds everything a
trial is: a sampled config composed by Hydra, Lightning's Trainer, the pruning hook,
the MLflow child run (params, per-epoch curves, test scores) and the logged model.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from sweep.benchmarks.common import median, trial_seconds, workdir

EPOCHS = 30
OVERRIDES = [
    "data=mnist1d",
    "model=mlp",
    "optimizer=adam",
    f"trainer.max_epochs={EPOCHS}",
    "trainer.early_stopping.enabled=false",
    "pruner=median",
    "champion.k=0",
]


def hand_loop(dataset: Any, cfg: Any) -> float:
    """Seconds for a plain PyTorch loop doing the trial's work (no tracking)."""
    import torch
    from torch.nn import functional as F

    from sweep.models.networks import build_network

    started = time.perf_counter()
    torch.manual_seed(int(cfg.seed))
    net = build_network(cfg.model, dataset.input_shape, dataset.num_outputs)
    opt = torch.optim.Adam(net.parameters(), lr=float(cfg.optimizer.lr))
    x, y = torch.from_numpy(dataset.x_train), torch.from_numpy(dataset.y_train)
    xv, yv = torch.from_numpy(dataset.x_val), torch.from_numpy(dataset.y_val)
    xt, yt = torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    bs, best, best_state = int(cfg.data.batch_size), -1.0, None
    for _ in range(EPOCHS):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), bs):
            idx = order[start : start + bs]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
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


def platform_trials(repetitions: int, extra: list[str]) -> list[float]:
    """Seconds per trial of a real study whose space holds a single point."""
    from pathlib import Path

    from sweep.study import tune

    with workdir("overhead") as tmp:
        search = Path(tmp) / "conf" / "search"
        search.mkdir(parents=True)
        # One point: every trial trains the same config as the hand loop.
        (search / "point.yaml").write_text("optimizer.lr: {type: categorical, choices: [0.003]}\n")
        overrides = [
            *OVERRIDES,
            *extra,
            f"hydra.searchpath=[file://{tmp}/conf]",
            "search=point",
            "sampler=random",
            f"study.n_trials={repetitions}",
            "study.name=overhead",
        ]
        tune(overrides, progress=False)
        from sweep.check import load_study

        study, _ = load_study(overrides)
        return trial_seconds(study)


def run(repetitions: int = 5) -> dict[str, Any]:
    import torch

    from sweep.config import compose, run_part
    from sweep.optuna_parts import env_threads
    from sweep.train import load_data

    torch.set_num_threads(env_threads(1))  # what a single worker's trials use
    cfg = run_part(compose("sweep", OVERRIDES))
    dataset = load_data(cfg)
    hand_loop(dataset, cfg)  # warm-up: first-call costs are not per-trial costs
    hand = [hand_loop(dataset, cfg) for _ in range(repetitions)]
    full = platform_trials(repetitions + 1, [])[1:]  # the first trial pays one-off imports
    lean = platform_trials(repetitions + 1, ["tracking.log_model=false"])[1:]
    torch.set_num_threads(env_threads(1))
    hand += [hand_loop(dataset, cfg) for _ in range(repetitions)]
    return {
        "epochs": EPOCHS,
        "hand_s": median(hand),
        "trial_s": median(full),
        "trial_nomodel_s": median(lean),
        "ratio": median(full) / median(hand),
        "ratio_nomodel": median(lean) / median(hand),
        "repetitions": repetitions,
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(run())
