"""The Lightning DataModule: in-memory tensors batched by index, or a torch DataLoader.

Small data sets live as tensors (moved to the accelerator once) and are batched by
index with a seeded permutation per epoch: a DataLoader over a TensorDataset fetches and
collates sample by sample, which costs more than the training step of a small model.
``loader: dataloader`` keeps the classic path for data that needs it, over the same
mini-batches (see :class:`BatchOrder`).
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch

from sweep.data.base import Dataset

EVAL_BATCH_SIZE = 4096  # validation and test need no small batches


def batch_bounds(n: int, batch_size: int, merge_single_tail: bool) -> list[tuple[int, int]]:
    """``(start, end)`` of each batch over ``n`` rows. With ``merge_single_tail`` a last batch
    of one row joins the batch before: BatchNorm cannot train on a single row."""
    bounds = [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    if merge_single_tail and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


class BatchOrder:
    """Which rows each mini-batch of one pass over a split holds: a seeded permutation,
    drawn anew every pass, when shuffling; the rows in order otherwise.

    Both loaders batch by it, so ``loader: memory`` and ``loader: dataloader`` train on
    the same mini-batches (the same seed gives the same metrics with either). Shuffled
    passes never end with a batch of one row (see :func:`batch_bounds`).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int):
        self.n = n
        self.bounds = batch_bounds(n, batch_size, merge_single_tail=shuffle)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.bounds)

    def __iter__(self) -> Iterator[torch.Tensor | slice]:
        return self.rows()

    def rows(self, device: torch.device | None = None) -> Iterator[torch.Tensor | slice]:
        """Index tensors (shuffled) or slices (in order: views, no copy).

        The permutation is drawn on the CPU (the generator's stream does not depend on the
        device) and moved to ``device`` once per pass: a copy per mini-batch from pageable
        memory waits for the GPU to finish all queued work, every step."""
        if not self.shuffle:
            yield from (slice(start, end) for start, end in self.bounds)
            return
        order = torch.randperm(self.n, generator=self.generator)
        if device is not None:
            order = order.to(device)
        yield from (order[start:end] for start, end in self.bounds)


class BatchOrderSampler(torch.utils.data.Sampler):
    """A DataLoader ``batch_sampler`` over a :class:`BatchOrder`."""

    def __init__(self, order: BatchOrder):
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        for rows in self.order:
            yield list(range(rows.start, rows.stop)) if isinstance(rows, slice) else rows.tolist()


class IndexBatches:
    """Iterable of (x, y) batches sliced from tensors, in a :class:`BatchOrder`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
        self.x, self.y = x, y
        self.order = BatchOrder(len(x), batch_size, shuffle, seed)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for rows in self.order.rows(self.x.device):
            yield self.x[rows], self.y[rows]


class OneEpoch:
    """A loader with a single item per epoch: the epoch's mini-batches. The model's
    training step runs them all (see ``Task.training_step``), so Lightning's per-step
    machinery runs once per epoch instead of once per mini-batch."""

    def __init__(self, batches: IndexBatches):
        self.batches = batches

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[IndexBatches]:
        yield self.batches


class ArrayDataModule(L.LightningDataModule):
    """Serves the splits of a :class:`Dataset` to the Trainer."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, loader: str = "memory"):
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.loader = loader
        d = dataset
        self.tensors = {
            split: (torch.from_numpy(x), torch.from_numpy(y))
            for split, x, y in (
                ("train", d.x_train, d.y_train),
                ("val", d.x_val, d.y_val),
                ("test", d.x_test, d.y_test),
            )
        }
        self._batches: dict[str, IndexBatches] = {}

    def move_to(self, device: torch.device) -> None:
        """Put the in-memory splits on the accelerator once, instead of once per batch."""
        if self.loader == "memory" and device.type != "cpu":
            self.tensors = {k: (x.to(device), y.to(device)) for k, (x, y) in self.tensors.items()}
            self._batches.clear()

    def _loader(self, split: str, batch_size: int, shuffle: bool):
        x, y = self.tensors[split]
        if self.loader == "dataloader":
            from torch.utils.data import DataLoader, TensorDataset

            order = BatchOrder(len(x), batch_size, shuffle, self.seed)
            # Its own generator: each pass would otherwise draw a worker base seed from
            # the global RNG, shifting every dropout mask after it.
            return DataLoader(
                TensorDataset(x, y),
                batch_sampler=BatchOrderSampler(order),
                generator=torch.Generator().manual_seed(self.seed),
            )
        if split not in self._batches:  # keep the generator's state across epochs
            self._batches[split] = IndexBatches(x, y, batch_size, shuffle, self.seed)
        return self._batches[split]

    def train_dataloader(self):
        loader = self._loader("train", self.batch_size, shuffle=True)
        return OneEpoch(loader) if self.loader == "memory" else loader

    def val_dataloader(self):
        return self._loader("val", max(self.batch_size, EVAL_BATCH_SIZE), shuffle=False)

    def test_dataloader(self):
        return self._loader("test", max(self.batch_size, EVAL_BATCH_SIZE), shuffle=False)
