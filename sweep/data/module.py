"""The Lightning DataModule: in-memory tensors batched by index, or a torch DataLoader.

Small data sets live as tensors (moved to the accelerator once) and are batched by
index with a seeded permutation per epoch: a DataLoader over a TensorDataset fetches and
collates sample by sample, which costs more than the training step of a small model.
``loader: dataloader`` keeps the classic path for data that needs it.
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


class IndexBatches:
    """Iterable of (x, y) batches sliced from tensors; reshuffled every pass when asked.

    Shuffled (training) passes never end with a batch of one row (see :func:`batch_bounds`).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(batch_bounds(len(self.x), self.batch_size, self.shuffle))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        bounds = batch_bounds(n, self.batch_size, merge_single_tail=self.shuffle)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            for start, end in bounds:
                idx = order[start:end]
                yield self.x[idx], self.y[idx]
        else:
            for start, end in bounds:
                yield self.x[start:end], self.y[start:end]


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

            g = torch.Generator().manual_seed(self.seed)
            # A last training batch of one row would break BatchNorm: skip it (a different
            # row each shuffled epoch).
            single_tail = shuffle and len(x) > batch_size and len(x) % batch_size == 1
            return DataLoader(
                TensorDataset(x, y),
                batch_size=batch_size,
                shuffle=shuffle,
                generator=g,
                drop_last=single_tail,
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
