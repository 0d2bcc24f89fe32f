"""Bundled data sources, their seeded stratified splits, preprocessing and batching."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from sweep.config import load_run_config
from sweep.data import load_dataset
from sweep.data.base import ArrayPreprocessor, build_array_dataset, split_indices
from sweep.data.module import EVAL_BATCH_SIZE, ArrayDataModule, IndexBatches, batch_bounds
from sweep.data.sources import _mnist1d_arrays
from sweep.errors import DataError


def data_cfg(*overrides: str):
    """The composed ``data`` section, exactly as a run would see it."""
    return load_run_config(list(overrides)).data


def class_shares(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.array([(y == c).mean() for c in classes])


# -- sources and split sizes ---------------------------------------------------------------
def test_digits_split_sizes_and_shapes():
    ds = load_dataset(data_cfg("data=digits"))
    n = 1797
    assert ds.task == "classification"
    assert ds.input_shape == (8, 8)
    assert ds.num_outputs == 10
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == n
    assert len(ds.x_test) == math.ceil(0.15 * n)
    assert abs(len(ds.x_val) - 0.15 * n) <= 1
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    info = ds.shape_info()
    assert (info["n_train"], info["n_val"], info["n_test"]) == (
        len(ds.x_train),
        len(ds.x_val),
        len(ds.x_test),
    )
    assert info["input_shape"] == "8x8"


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_synthetic_split_sizes(task):
    ds = load_dataset(data_cfg("data=synthetic", f"data.task={task}"))
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (360, 120, 120)
    assert ds.input_shape == (12,)
    assert ds.task == task
    assert ds.num_outputs == (3 if task == "classification" else 1)
    if task == "regression":
        assert ds.y_train.dtype == np.float32
        # targets standardised with the training split's statistics
        assert abs(float(ds.y_train.mean())) < 1e-5
        assert float(ds.y_train.std()) == pytest.approx(1.0, abs=1e-4)


def test_mnist1d_small_split_sizes():
    ds = load_dataset(data_cfg("data=mnist1d", "data.num_samples=600"))
    # the generator keeps 80% for train (480) and 20% for test (120); val is 20% of train
    assert len(ds.x_test) == 120
    assert len(ds.x_val) == 96
    assert len(ds.x_train) == 384
    assert ds.input_shape == (40,)
    assert ds.num_outputs == 10


# -- stratification and seeds --------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [("data=digits",), ("data=synthetic",), ("data=mnist1d", "data.num_samples=600")],
    ids=["digits", "synthetic", "mnist1d"],
)
def test_splits_are_stratified(overrides):
    ds = load_dataset(data_cfg(*overrides))
    y_all = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    classes = np.unique(y_all)
    # mnist1d's test split is the generator's own; validation is stratified out of train
    reference = ds.y_train if "data=mnist1d" in overrides else y_all
    expected = class_shares(reference, classes)
    for y in (ds.y_val, ds.y_test) if "data=mnist1d" not in overrides else (ds.y_val,):
        # stratified: within one sample per class of the expected shares
        assert np.abs(class_shares(y, classes) - expected).max() <= 1.5 / len(y)


@pytest.mark.parametrize(
    "overrides",
    [("data=digits",), ("data=synthetic",), ("data=mnist1d", "data.num_samples=600")],
    ids=["digits", "synthetic", "mnist1d"],
)
def test_split_seed_fixes_the_split(overrides):
    a = load_dataset(data_cfg(*overrides, "data.split_seed=3"))
    b = load_dataset(data_cfg(*overrides, "data.split_seed=3"))
    c = load_dataset(data_cfg(*overrides, "data.split_seed=4"))
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert np.array_equal(getattr(a, split), getattr(b, split)), split
    assert not np.array_equal(a.x_train, c.x_train)
    assert not np.array_equal(a.x_val, c.x_val)


def test_split_indices_partition_and_seed():
    y = np.repeat(np.arange(4), 25)
    tr, va, te = split_indices(100, 0.2, 0.2, seed=1, stratify=y)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(100))
    assert (len(tr), len(va), len(te)) == (60, 20, 20)
    for part in (va, te):
        assert np.bincount(y[part]).tolist() == [5, 5, 5, 5]
    again = split_indices(100, 0.2, 0.2, seed=1, stratify=y)
    other = split_indices(100, 0.2, 0.2, seed=2, stratify=y)
    assert all(np.array_equal(p, q) for p, q in zip((tr, va, te), again, strict=True))
    assert not np.array_equal(te, other[2])


# -- preprocessing fitted on train only ----------------------------------------------------
def test_digits_preprocessor_uses_train_statistics_only():
    cfg = data_cfg("data=digits")
    ds = load_dataset(cfg)
    bunch = load_digits()
    raw = bunch.images.astype(np.float64)
    tr, _va, te = split_indices(
        len(raw), cfg.val_fraction, cfg.test_fraction, cfg.split_seed, stratify=bunch.target
    )
    pre = ds.preprocessor
    assert isinstance(pre, ArrayPreprocessor)
    assert pre.mean == pytest.approx(raw[tr].mean())
    assert pre.scale == pytest.approx(raw[tr].std())
    assert pre.mean != pytest.approx(raw.mean(), abs=1e-9)
    # the stored splits are exactly the raw rows of those indices, transformed
    assert np.array_equal(ds.x_test, pre.transform(raw[te]))
    assert np.array_equal(ds.y_test, bunch.target[te])
    assert pre.classes == list(range(10))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_test_rows_cannot_leak_into_statistics(task):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 5)).astype(np.float32)
    y = rng.integers(0, 3, 100) if task == "classification" else rng.normal(size=100)
    tr, va, te = np.arange(60), np.arange(60, 80), np.arange(80, 100)
    before = build_array_dataset("t", task, x, y, tr, va, te).preprocessor
    x2, y2 = x.copy(), y.copy()
    x2[te] += 1000.0  # wildly different test (and val) rows change nothing
    x2[va] -= 1000.0
    if task == "regression":
        y2[te] += 1000.0
        y2[va] -= 50.0
    else:
        y2[te] = 0  # a different class mix in the test rows
    after = build_array_dataset("t", task, x2, y2, tr, va, te).preprocessor
    for name in ("mean", "scale", "target_mean", "target_scale"):
        assert getattr(before, name) == getattr(after, name), name
    assert after.mean == pytest.approx(float(x[tr].astype(np.float64).mean()))
    if task == "regression":
        assert after.target_mean == pytest.approx(float(y[tr].mean()))
        assert after.target_scale == pytest.approx(float(y[tr].std()))
        decoded = after.decode_target(after.encode_target(y[te]))
        assert np.allclose(decoded, y[te], atol=1e-4)
    else:
        assert after.classes == sorted(np.unique(y[tr]).tolist())


def test_array_preprocessor_rejects_wrong_width():
    pre = ArrayPreprocessor("classification", (8, 8)).fit(np.zeros((4, 8, 8)), np.arange(4))
    assert pre.transform(np.zeros((2, 64))).shape == (2, 8, 8)
    with pytest.raises(ValueError, match="expected shape"):
        pre.transform(np.zeros((2, 63)))


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["data=synthetic", "data.num_samples=20", "data.num_classes=5"], "data.val_fraction"),
        (["data=mnist1d", "data.num_samples=100", "data.val_fraction=0.01"], "data.val_fraction"),
        (
            [
                "data=synthetic",
                "data.task=regression",
                "data.num_samples=20",
                "data.val_fraction=0.01",
                "data.test_fraction=0.01",
            ],
            "at least 2 rows",
        ),
        (["data=synthetic", "data.num_features=2", "data.num_classes=5"], "data.num_features"),
    ],
)
def test_impossible_splits_and_shapes_are_data_errors(overrides, named):
    with pytest.raises(DataError) as info:
        load_dataset(data_cfg(*overrides))
    message = str(info.value)
    assert named in message and "\n" not in message, message
    assert message.startswith(overrides[0]), message


def test_synthetic_with_two_features():
    ds = load_dataset(data_cfg("data=synthetic", "data.num_features=2"))
    assert ds.input_shape == (2,)
    assert ds.num_outputs == 3


def test_mnist1d_generation_leaves_the_global_generators_alone():
    """mnist1d seeds `random` and numpy itself; left so, every run would get the same
    MLflow run name (and any other random choice would repeat)."""

    def draws() -> tuple[float, float]:
        return random.random(), float(np.random.rand())

    random.seed(11)
    np.random.seed(11)
    expected = draws()
    random.seed(11)
    np.random.seed(11)
    _mnist1d_arrays.cache_clear()
    _mnist1d_arrays(200, 0.2)
    assert draws() == expected


# -- in-memory batches ------------------------------------------------------------------------
def test_batch_bounds_merge_a_single_row_tail_only_when_asked():
    assert batch_bounds(33, 16, merge_single_tail=True) == [(0, 16), (16, 33)]
    assert batch_bounds(33, 16, merge_single_tail=False) == [(0, 16), (16, 32), (32, 33)]
    assert batch_bounds(34, 16, merge_single_tail=True) == [(0, 16), (16, 32), (32, 34)]
    assert batch_bounds(1, 16, merge_single_tail=True) == [(0, 1)]


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_training_batches_never_hold_a_single_row(loader):
    """BatchNorm cannot train on one row: a shuffled epoch never ends with such a batch."""
    ds = load_dataset(data_cfg("data=synthetic"))
    batch_size = len(ds.x_train) - 1  # the last row would be a batch of its own
    dm = ArrayDataModule(ds, batch_size=batch_size, seed=0, loader=loader)
    train = dm.train_dataloader()
    batches = list(next(iter(train))) if loader == "memory" else list(train)
    assert min(len(y) for _, y in batches) > 1
    assert sum(len(y) for _, y in batches) == len(ds.x_train)  # merged: every row trains
    val_sizes = [len(y) for _, y in dm.val_dataloader()]
    assert sum(val_sizes) == len(ds.x_val)  # evaluation keeps every row


def epochs_of(batches: IndexBatches, n_epochs: int) -> list[list[int]]:
    return [torch.cat([x for x, _ in batches]).tolist() for _ in range(n_epochs)]


def test_index_batches_seeded_shuffle():
    n = 103
    x, y = torch.arange(n), torch.arange(n) * 10
    a = IndexBatches(x, y, batch_size=16, shuffle=True, seed=5)
    b = IndexBatches(x, y, batch_size=16, shuffle=True, seed=5)
    c = IndexBatches(x, y, batch_size=16, shuffle=True, seed=6)
    ea, eb, ec = epochs_of(a, 3), epochs_of(b, 3), epochs_of(c, 3)
    assert ea == eb  # same seed: same order, epoch after epoch
    assert ea != ec  # another seed: another order
    for order in ea:
        assert sorted(order) == list(range(n))  # every row exactly once per epoch
        assert order != list(range(n))
    assert ea[0] != ea[1] != ea[2]  # reshuffled every epoch
    assert len(a) == math.ceil(n / 16)
    sizes = [len(xb) for xb, _ in a]
    assert sizes == [16] * 6 + [7]
    for xb, yb in a:  # rows stay paired with their targets
        assert torch.equal(yb, xb * 10)


def test_index_batches_move_the_permutation_once_per_epoch(monkeypatch):
    """On an accelerator, an epoch's row indices take one host-to-device copy, not one
    per mini-batch: a copy from pageable memory waits for all queued GPU work."""
    copies = []
    to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        copies.append(len(self))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    n = 103
    batches = IndexBatches(torch.arange(n), torch.arange(n), batch_size=16, shuffle=True, seed=5)
    assert len(epochs_of(batches, 2)[0]) == n
    assert copies == [n, n]  # the whole permutation, once per epoch (7 batches each)


def test_index_batches_unshuffled_keep_order():
    x = torch.arange(10)
    batches = IndexBatches(x, x.clone(), batch_size=4, shuffle=False, seed=0)
    assert [xb.tolist() for xb, _ in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_datamodule_keeps_its_train_batches_between_epochs():
    ds = load_dataset(data_cfg("data=synthetic"))
    dm = ArrayDataModule(ds, batch_size=32, seed=0)
    # The in-memory loader yields one item per epoch: that epoch's mini-batches, from one
    # IndexBatches whose generator persists, so the order moves on each epoch.
    (epoch_batches,) = list(dm.train_dataloader())
    (again,) = list(dm.train_dataloader())
    assert again is epoch_batches
    first, second = epochs_of(epoch_batches, 2)
    assert first != second
    val = list(dm.val_dataloader())
    assert len(val) == 1 and len(val[0][0]) == len(ds.x_val) <= EVAL_BATCH_SIZE
    assert torch.equal(val[0][0], torch.from_numpy(ds.x_val))


def test_datamodule_dataloader_mode():
    ds = load_dataset(OmegaConf.merge(data_cfg("data=synthetic"), {"loader": "dataloader"}))
    dm = ArrayDataModule(ds, batch_size=50, seed=0, loader="dataloader")
    seen = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(seen) == len(ds.y_train)
    assert sorted(seen.tolist()) == sorted(ds.y_train.tolist())


@pytest.mark.parametrize("batch_size", [32, 50])
def test_both_loaders_give_the_same_batches(batch_size):
    """The same seed trains on the same mini-batches with either loader, epoch after
    epoch (so a run's metrics do not depend on the loader)."""
    ds = load_dataset(data_cfg("data=synthetic"))
    memory = ArrayDataModule(ds, batch_size=batch_size, seed=3, loader="memory")
    classic = ArrayDataModule(ds, batch_size=batch_size, seed=3, loader="dataloader")
    (in_memory,) = list(memory.train_dataloader())
    loader = classic.train_dataloader()
    for _ in range(3):  # a new permutation each epoch, the same on both sides
        pairs = list(zip(in_memory, loader, strict=True))
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for split in ("val_dataloader", "test_dataloader"):
        a, b = list(getattr(memory, split)()), list(getattr(classic, split)())
        assert [torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b, strict=True)] == [True]


def test_mnist1d_is_generated_once_per_machine(tmp_path, monkeypatch):
    """Generated arrays are cached under .sweep/cache: a later process loads the same
    arrays instead of generating them again."""
    import numpy as np

    from sweep.data import sources

    monkeypatch.chdir(tmp_path)
    sources._mnist1d_arrays.cache_clear()
    generated = sources._mnist1d_arrays(500, 0.2)
    (cached,) = (tmp_path / ".sweep" / "cache").glob("mnist1d-*-500-0.2.npz")
    sources._mnist1d_arrays.cache_clear()  # as a new process would start
    monkeypatch.setattr(sources, "_generate_mnist1d", None)  # must not be called now
    loaded = sources._mnist1d_arrays(500, 0.2)
    assert cached.exists() and set(loaded) == set(generated)
    for key in generated:
        np.testing.assert_array_equal(loaded[key], generated[key])
    sources._mnist1d_arrays.cache_clear()


def test_a_later_process_reads_the_mnist1d_split_without_importing_scikit_learn(tmp_path):
    """The stratified validation split is cached beside the arrays: importing scikit-learn
    for it cost ~1.4 s of every worker's start. The cached split is the same split."""
    import subprocess
    import sys

    code = (
        "import sys, hashlib\n"
        "from omegaconf import OmegaConf\n"
        "from sweep.data.sources import load_mnist1d\n"
        "cfg = OmegaConf.create(dict(num_samples=500, test_fraction=0.2, val_fraction=0.2))\n"
        "ds = load_mnist1d(cfg, 3)\n"
        "digest = hashlib.md5(ds.x_train.tobytes() + ds.y_val.tobytes()).hexdigest()\n"
        "print('sklearn' in sys.modules, digest)\n"
    )

    def run() -> list[str]:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        return proc.stdout.split()

    first, second = run(), run()
    assert first[0] == "True" and second[0] == "False"
    assert first[1] == second[1]
    assert len(list((tmp_path / ".sweep" / "cache").glob("mnist1d-*-val-0.2-seed-3-*.npz"))) == 1
