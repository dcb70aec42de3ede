"""In-memory datasets: local file formats, standardization, subsets, downloads and errors.

Nothing here uses the network: real formats are reproduced in tiny files and torchvision's
download is replaced by a fake or by a failure.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets

from bench.zoo.datasets import (
    DATASETS,
    DOWNLOAD_TIMEOUT_S,
    DatasetSource,
    dataset_source,
    Splits,
    default_data_dir,
    load_dataset,
    read_idx,
    stratified_subset,
)
from bench.errors import BenchError, ConfigError, UnknownNameError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
FASHION_DIR = Path("/work/shared/data/fashion-mnist")
N_TRAIN, N_VAL = 60, 20


# ------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """Write ``array`` (uint8) in the IDX format, as the MNIST distribution does."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def mnist_arrays(size: int = 28, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    train_y = np.arange(N_TRAIN, dtype=np.uint8) % 10
    val_y = np.arange(N_VAL, dtype=np.uint8) % 10
    # Brightness grows with the label so the pixels carry the class.
    train_x = rng.integers(0, 100, (N_TRAIN, size, size)) + 15 * train_y[:, None, None]
    val_x = rng.integers(0, 100, (N_VAL, size, size)) + 15 * val_y[:, None, None]
    return train_x.astype(np.uint8), train_y, val_x.astype(np.uint8), val_y


def write_mnist(directory: Path, *, compress: bool, size: int = 28) -> tuple[np.ndarray, ...]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = mnist_arrays(size)
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(directory / (name + (".gz" if compress else "")), array, compress=compress)
    return arrays


def cifar_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Flat (n, 3072) uint8 rows with distinct per-channel brightness, as CIFAR stores them."""
    base = np.array([40, 120, 200])[None, :, None]
    images = base + rng.integers(0, 50, (n, 3, 1024))
    return images.reshape(n, 3072).astype(np.uint8)


def write_cifar10(root: Path, per_batch: int = 10, n_test: int = 12) -> None:
    """Five training batches and a test batch with bytes keys, like the real pickles."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {b"data": cifar_images(n, rng), b"labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry))


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [("train", n_train), ("test", n_test)]:
        entry = {
            "data": cifar_images(n, rng),
            "fine_labels": [i % 100 for i in range(n)],
            "coarse_labels": [i % 20 for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(entry))


def assert_standardized(splits: Splits) -> None:
    x = splits.train_x.double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-4)


def assert_well_formed(splits: Splits, channels: int, size: int, classes: int) -> None:
    assert splits.train_x.dtype == torch.float32 and splits.val_x.dtype == torch.float32
    assert splits.train_y.dtype == torch.int64 and splits.val_y.dtype == torch.int64
    assert splits.train_x.shape[1:] == (channels, size, size) == splits.val_x.shape[1:]
    assert len(splits.train_x) == len(splits.train_y) and len(splits.val_x) == len(splits.val_y)
    assert splits.in_channels == channels and splits.image_size == size
    assert splits.num_classes == classes
    for y in (splits.train_y, splits.val_y):
        assert 0 <= int(y.min()) and int(y.max()) < classes
    assert_standardized(splits)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every torchvision download fail at once, as on a machine without network."""

    def refuse(self: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", refuse)


# ------------------------------------------------------------------ MNIST-style files


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("layout", ["direct", "torchvision", "named"])
def test_mnist_style_files_are_read_from_either_layout(
    tmp_path: Path, offline: None, compress: bool, layout: str
) -> None:
    directory = {
        "direct": tmp_path,
        "torchvision": tmp_path / "FashionMNIST" / "raw",
        "named": tmp_path / "fashion-mnist",
    }[layout]
    train_x, train_y, val_x, val_y = write_mnist(directory, compress=compress)
    splits = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert_well_formed(splits, 1, 28, 10)
    assert len(splits.train_x) == N_TRAIN and len(splits.val_x) == N_VAL
    assert torch.equal(splits.train_y, torch.from_numpy(train_y.astype(np.int64)))
    assert torch.equal(splits.val_y, torch.from_numpy(val_y.astype(np.int64)))
    # Standardization is affine and increasing, so pixel order is kept.
    flat = splits.train_x[0].flatten()
    raw = torch.from_numpy(train_x[0].flatten())
    assert torch.equal(flat.argsort(stable=True), raw.argsort(stable=True))


def test_mnist_reads_torchvision_layout(tmp_path: Path, offline: None) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", compress=False)
    assert_well_formed(load_dataset("mnist", data_dir=tmp_path), 1, 28, 10)


def test_torchvision_layout_wins_over_files_at_the_root(tmp_path: Path, offline: None) -> None:
    # MNIST and Fashion-MNIST share file names; the dataset's own directory must win.
    write_mnist(tmp_path, compress=True)
    write_mnist(tmp_path / "MNIST" / "raw", compress=False)
    (tmp_path / "MNIST" / "raw" / IDX_NAMES[0]).write_bytes(b"")  # corrupt: proves it was chosen
    with pytest.raises(BenchError, match="MNIST/raw"):
        load_dataset("mnist", data_dir=tmp_path)


def test_read_idx_handles_gzip_and_plain(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array, compress=False)
    write_idx(tmp_path / "b.gz", array, compress=True)
    for name in ("a", "b.gz"):
        read = read_idx(tmp_path / name)
        assert read.dtype == np.uint8 and np.array_equal(read, array)


def test_truncated_idx_file_is_a_clear_error(tmp_path: Path, offline: None) -> None:
    write_mnist(tmp_path, compress=False)
    path = tmp_path / IDX_NAMES[0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BenchError, match="truncated"):
        load_dataset("mnist", data_dir=tmp_path)


def test_files_of_the_wrong_image_size_are_refused(tmp_path: Path, offline: None) -> None:
    write_mnist(tmp_path, compress=False, size=8)
    with pytest.raises(BenchError, match=r"'mnist'.*1×28×28"):
        load_dataset("mnist", data_dir=tmp_path)


# -------------------------------------------------------------------------- CIFAR


def test_cifar10_pickles(tmp_path: Path, offline: None) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    assert_well_formed(splits, 3, 32, 10)
    assert len(splits.train_x) == 50 and len(splits.val_x) == 12
    assert splits.train_y.tolist() == [i % 10 for i in range(10)] * 5


def test_cifar100_pickles_use_fine_labels(tmp_path: Path, offline: None) -> None:
    write_cifar100(tmp_path)
    splits = load_dataset("cifar100", data_dir=tmp_path)
    assert_well_formed(splits, 3, 32, 100)
    assert len(splits.train_x) == 200 and len(splits.val_x) == 100
    assert set(splits.train_y.tolist()) == set(range(100))


def test_cifar_channels_are_standardized_separately(tmp_path: Path, offline: None) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    # Raw channel means are 40/120/200 apart; after standardization the val split,
    # drawn from the same distribution, is near zero in every channel.
    assert splits.val_x.mean(dim=(0, 2, 3)).abs().max() < 0.1


def test_cifar_directory_may_be_the_data_dir_itself(tmp_path: Path, offline: None) -> None:
    write_cifar10(tmp_path)
    splits = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py")
    assert len(splits.train_x) == 50


# ---------------------------------------------------------------- missing / download


@pytest.mark.parametrize(
    ("name", "expected_file"),
    [
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion-mnist", "t10k-labels-idx1-ubyte"),
        ("cifar10", "data_batch_1"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_files_without_network_is_one_clear_paragraph(
    tmp_path: Path, offline: None, name: str, expected_file: str
) -> None:
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(BenchError) as info:
        load_dataset(name, data_dir=root)
    message = str(info.value)
    assert "\n" not in message
    for part in (repr(name), str(root), expected_file, "--data-dir", "BENCH_DATA_DIR", "URLError"):
        assert part in message
    assert list(root.iterdir()) == []  # no partial download left behind


def test_failed_download_into_a_new_directory_removes_it(tmp_path: Path, offline: None) -> None:
    root = tmp_path / "fresh" / "data"
    with pytest.raises(BenchError, match=str(root)):
        load_dataset("cifar10", data_dir=root)
    assert not root.exists()


def test_interrupted_download_leaves_nothing_and_the_next_try_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True)
            (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b partial")
            raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Broken)
    with pytest.raises(BenchError, match="ConnectionResetError"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []

    class Working:
        calls = 0

        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download and socket.getdefaulttimeout() == DOWNLOAD_TIMEOUT_S
            Working.calls += 1
            self.raw_folder = os.path.join(root, "FashionMNIST", "raw")
            write_mnist(Path(self.raw_folder), compress=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Working)
    timeout_before = socket.getdefaulttimeout()
    first = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert socket.getdefaulttimeout() == timeout_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FashionMNIST"]
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(IDX_NAMES)
    second = load_dataset("fashion-mnist", data_dir=tmp_path)  # now read from disk
    assert Working.calls == 1
    assert torch.equal(first.train_x, second.train_x)


def test_cifar_download_is_moved_into_torchvision_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            self.root = root
            write_cifar10(Path(root))
            (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"archive")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    splits = load_dataset("cifar10", data_dir=tmp_path)
    assert len(splits.train_x) == 50
    assert [p.name for p in tmp_path.iterdir()] == ["cifar-10-batches-py"]


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("BENCH_DATA_DIR")
    assert default_data_dir() == Path.home() / ".cache" / "bench" / "data"


def test_env_data_dir_is_used_when_none_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, offline: None
) -> None:
    write_mnist(tmp_path, compress=True)
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist").train_x) == N_TRAIN


# ------------------------------------------------------------------------- subsets


def test_subsets_are_fixed_stratified_and_independent_of_the_seed() -> None:
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_dataset("digits", train_subset=100, val_subset=50)
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_dataset("digits", train_subset=100, val_subset=50)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert len(a.train_x) == 100 and len(a.val_x) == 50
    assert a.train_y.bincount(minlength=10).tolist() == [10] * 10
    assert a.val_y.bincount(minlength=10).tolist() == [5] * 10
    assert_standardized(a)


def test_stratified_subset_properties() -> None:
    labels = np.repeat(np.arange(5), [50, 30, 10, 5, 2])  # imbalanced
    small = stratified_subset(labels, 10, seed=0)
    large = stratified_subset(labels, 40, seed=0)
    assert set(labels[small]) == set(range(5))
    assert np.bincount(labels[small]).tolist() == [2, 2, 2, 2, 2]
    assert set(small) <= set(large)  # a smaller subset is part of a larger one
    assert np.all(np.diff(large) > 0)  # dataset order, no duplicates
    counts = np.bincount(labels[large]).tolist()
    assert counts[2:] == [10, 5, 2]  # rare classes are used up entirely
    assert sorted(counts[:2]) == [11, 12]  # the rest is shared as evenly as possible
    assert np.array_equal(stratified_subset(labels, 40, seed=0), large)
    assert np.array_equal(stratified_subset(labels, 500, seed=0), np.arange(len(labels)))


def test_subset_larger_than_the_split_keeps_everything() -> None:
    full = load_dataset("synthetic")
    big = load_dataset("synthetic", train_subset=10_000, val_subset=10_000)
    assert torch.equal(full.train_x, big.train_x) and torch.equal(full.val_x, big.val_x)


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "100"])
@pytest.mark.parametrize("which", ["train_subset", "val_subset"])
def test_invalid_subset_is_a_config_error(bad: object, which: str) -> None:
    with pytest.raises(ConfigError, match=which):
        load_dataset("synthetic", **{which: bad})  # type: ignore[arg-type]


# ------------------------------------------------------------------ bundled datasets


def test_registry_describes_every_dataset() -> None:
    expected = {"digits", "synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100"}
    assert expected <= set(DATASETS.names())
    for entry in DATASETS.entries():
        source = entry.factory()  # entries are functions that build their source
        assert isinstance(source, DatasetSource) and source.name == entry.name
        assert entry.description
    assert "offline default" in DATASETS.entry("digits").description
    assert not dataset_source("digits").needs_files and dataset_source("cifar10").needs_files
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_dataset("imagenet")


def test_digits_split(tmp_path: Path) -> None:
    splits = load_dataset("digits", data_dir=tmp_path / "unused")
    assert_well_formed(splits, 1, 8, 10)
    assert len(splits.train_x) == 1437 and len(splits.val_x) == 360
    assert splits.val_y.bincount(minlength=10).min() >= 35  # stratified
    assert not (tmp_path / "unused").exists()
    again = load_dataset("digits")
    assert torch.equal(splits.val_x, again.val_x)


def test_synthetic_is_deterministic_and_learnable() -> None:
    splits = load_dataset("synthetic")
    assert_well_formed(splits, 1, 8, 10)
    assert (len(splits.train_x), len(splits.val_x)) == (512, 128)
    assert torch.equal(splits.train_x, load_dataset("synthetic").train_x)

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def accuracy() -> float:
        with torch.no_grad():
            return (model(splits.val_x.flatten(1)).argmax(1) == splits.val_y).float().mean().item()

    before = accuracy()
    for step in range(20):
        idx = torch.arange(step * 64, step * 64 + 64) % 512
        logits = model(splits.train_x[idx].flatten(1))
        loss = torch.nn.functional.cross_entropy(logits, splits.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert accuracy() > max(0.6, before + 0.3)


def test_splits_to_moves_every_tensor() -> None:
    splits = load_dataset("synthetic")
    moved = splits.to("cpu")
    assert moved.name == "synthetic" and moved.num_classes == 10
    assert torch.equal(moved.train_x, splits.train_x) and moved.val_y.device.type == "cpu"
    if torch.cuda.is_available():
        on_gpu = splits.to("cuda")
        assert all(t.is_cuda for t in (on_gpu.train_x, on_gpu.train_y, on_gpu.val_x, on_gpu.val_y))


# ------------------------------------------------------------- the real offline copy


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"{FASHION_DIR} not present")
def test_real_fashion_mnist_copy(offline: None) -> None:
    train_labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    val_labels = read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    assert train_labels.shape == (60_000,) and val_labels.shape == (10_000,)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(val_labels).tolist() == [1000] * 10

    splits = load_dataset("fashion-mnist", data_dir=FASHION_DIR, train_subset=2000, val_subset=500)
    assert_well_formed(splits, 1, 28, 10)
    assert (len(splits.train_x), len(splits.val_x)) == (2000, 500)
    assert splits.train_y.bincount(minlength=10).tolist() == [200] * 10
    assert splits.val_y.bincount(minlength=10).tolist() == [50] * 10

