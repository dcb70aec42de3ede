"""Datasets held in memory as tensors.

A whole split is one float32 tensor and a batch is an index slice of it (the airbench
way): no DataLoader workers, no per-item Python, and the data can live on the GPU next
to the model. Images are standardized per channel with the statistics of the training
images a trial actually uses, so no information leaks from the validation split.

Real datasets (MNIST, Fashion-MNIST, CIFAR-10/100) are read from the standard files in
the data directory (``--data-dir``, env ``BENCH_DATA_DIR``, else ``~/.cache/bench/data``)
and downloaded there through torchvision on first use. The files are parsed here rather
than by torchvision so that local copies are accepted as they are: torchvision insists
on its own directory layout and on md5 checksums that an independently produced copy
(such as a re-packaged Fashion-MNIST) does not match.
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import numbers
import os
import pickle
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import BenchError, ConfigError
from bench.provenance import digest
from bench.zoo.registry import DATASETS

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

#: Seconds a single network operation of a download may block. Without it a machine
#: with no route to the mirrors can hang for minutes before the OS gives up.
DOWNLOAD_TIMEOUT_S = 15.0

#: Seeds of the fixed subset selections; independent of any trial seed on purpose.
_TRAIN_SUBSET_SEED = 0
_VAL_SUBSET_SEED = 1

#: Whether a loader may download a dataset missing from the data directory (see
#: :func:`dataset_fingerprint`).
_DOWNLOADS: contextvars.ContextVar[bool] = contextvars.ContextVar("bench_downloads", default=True)


class DataNotPresent(BenchError):
    """A dataset's files are not in the data directory, and downloading was not allowed."""


@dataclass(frozen=True)
class DatasetSource:
    """How to obtain one dataset: its shape and a loader returning raw numpy splits."""

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    #: root → (train_x, train_y, val_x, val_y); images NCHW or NHW, uint8 or float.
    load: Callable[[Path], Arrays]
    #: Whether the loader reads (or downloads) files under the data directory.
    needs_files: bool
    #: Images in the full training split (planning: steps per epoch, batch-size checks).
    train_size: int = 0
    #: Images in the full validation split (planning: the cost of evaluating every epoch);
    #: 0 when unknown.
    val_size: int = 0


@dataclass(frozen=True)
class Splits:
    """Train and validation tensors of one dataset, ready for index-slice batching.

    Images are float32 NCHW standardized per channel with the training images' mean and
    std; labels are int64 class indices. ``fingerprint`` identifies the data they were made
    from (:func:`fingerprint_arrays` of the loaded, subset-selected arrays before
    standardization); None when the splits were not made by :func:`load_dataset`.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    fingerprint: str | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device | str) -> Splits:
        """Move every tensor to ``device`` (one copy, then batches are free slices)."""
        return Splits(
            name=self.name,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            val_x=self.val_x.to(device),
            val_y=self.val_y.to(device),
            num_classes=self.num_classes,
            fingerprint=self.fingerprint,
        )


def dataset_source(name: str) -> DatasetSource:
    """The registered dataset ``name``: its shape and loader (entries build their source)."""
    return DATASETS.get(name)()


def default_data_dir() -> Path:
    """Where datasets live unless a study says otherwise: env BENCH_DATA_DIR or a cache."""
    env = os.environ.get("BENCH_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "bench" / "data"


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    train_subset: int | None = None,
    val_subset: int | None = None,
) -> Splits:
    """Load a registered dataset as standardized in-memory tensors.

    ``train_subset`` / ``val_subset`` keep a fixed, class-stratified selection of that
    many images, the same for every trial of a study whatever its seed; a subset larger
    than the split keeps the whole split. The splits carry the data's fingerprint.
    """
    source = dataset_source(name)
    train_x, train_y, val_x, val_y = _selected(source, data_dir, train_subset, val_subset)
    mean, std = _channel_stats(train_x)
    return Splits(
        name=source.name,
        train_x=_standardize(train_x, mean, std),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        val_x=_standardize(val_x, mean, std),
        val_y=torch.from_numpy(val_y.astype(np.int64)),
        num_classes=source.num_classes,
        fingerprint=fingerprint_arrays(train_x, train_y, val_x, val_y),
    )


def dataset_fingerprint(
    name: str,
    *,
    data_dir: str | Path | None = None,
    train_subset: int | None = None,
    val_subset: int | None = None,
    download: bool = True,
) -> str:
    """The fingerprint :func:`load_dataset` gives these splits, without standardizing
    them. With ``download=False`` a dataset whose files are not in the data directory
    raises :class:`DataNotPresent` instead of being downloaded."""
    token = _DOWNLOADS.set(download)
    try:
        arrays = _selected(dataset_source(name), data_dir, train_subset, val_subset)
    finally:
        _DOWNLOADS.reset(token)
    return fingerprint_arrays(*arrays)


def fingerprint_arrays(*arrays: np.ndarray) -> str:
    """A short SHA-256 (:data:`bench.provenance.DIGITS` hex digits) of arrays: each one's
    dtype, shape and bytes in C order. Equal exactly when the data are equal."""
    def chunks() -> Iterator[Any]:
        for array in arrays:
            array = np.ascontiguousarray(array)
            yield f"{array.dtype.str}{array.shape}".encode()
            yield array.reshape(-1).view(np.uint8)  # the bytes, not copied

    return digest(chunks())


def _selected(
    source: DatasetSource, data_dir: str | Path | None, train_subset: int | None, val_subset: int | None
) -> Arrays:
    """The dataset's splits as loaded, validated (NCHW) and subset-selected."""
    _check_subset("train_subset", train_subset)
    _check_subset("val_subset", val_subset)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()

    train_x, train_y, val_x, val_y = source.load(root)
    train_x, train_y = _validated(source, "train", train_x, train_y)
    val_x, val_y = _validated(source, "validation", val_x, val_y)

    if train_subset is not None:
        keep = stratified_subset(train_y, train_subset, seed=_TRAIN_SUBSET_SEED)
        train_x, train_y = train_x[keep], train_y[keep]
    if val_subset is not None:
        keep = stratified_subset(val_y, val_subset, seed=_VAL_SUBSET_SEED)
        val_x, val_y = val_x[keep], val_y[keep]
    return train_x, train_y, val_x, val_y


def stratified_subset(labels: np.ndarray, size: int, *, seed: int) -> np.ndarray:
    """Indices of a fixed, class-balanced selection of ``size`` items, in dataset order.

    Items are taken round-robin over the classes in a seeded random order, so every class
    is represented once ``size`` reaches the number of classes, a smaller subset is a
    prefix of a larger one, and the selection depends only on the labels and ``seed``.
    """
    n = len(labels)
    if size >= n:
        return np.arange(n)
    perm = np.random.default_rng(seed).permutation(n)
    permuted = np.asarray(labels)[perm]
    by_class = np.argsort(permuted, kind="stable")
    sorted_labels = permuted[by_class]
    _, first = np.unique(sorted_labels, return_index=True)
    starts = np.repeat(first, np.diff(np.append(first, n)))
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - starts  # k-th item of its class in permuted order
    order = np.lexsort((np.arange(n), rank))
    return np.sort(perm[order[:size]])


def _check_subset(what: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(
            f"{what} must be a positive number of images (or unset for the whole split), "
            f"got {value!r}."
        )


def _validated(
    source: DatasetSource, split: str, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bring images to NCHW and refuse files that do not hold the dataset they claim to."""
    x, y = np.asarray(x), np.asarray(y).reshape(-1)
    if x.ndim == 3:
        x = x[:, None]
    expected = (source.in_channels, source.image_size, source.image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected or len(x) != len(y) or len(y) == 0:
        raise BenchError(
            f"The {split} split of dataset {source.name!r} has images of shape "
            f"{tuple(x.shape)} and {len(y)} labels; expected N×{'×'.join(map(str, expected))} "
            f"images with one label each. Check the dataset files in the data directory."
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= source.num_classes:
        raise BenchError(
            f"The {split} split of dataset {source.name!r} has labels outside 0–"
            f"{source.num_classes - 1} (dtype {y.dtype}, range {y.min()}–{y.max()}). "
            f"Check the dataset files in the data directory."
        )
    return x, y


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over images and pixels, accumulated in float64."""
    flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
    mean = flat.mean(axis=1, dtype=np.float64)
    std = np.empty_like(mean)
    for c in range(flat.shape[0]):  # per channel keeps the float64 temporary small
        std[c] = np.sqrt(np.mean((flat[c].astype(np.float64) - mean[c]) ** 2))
    std[std == 0] = 1.0  # a constant channel carries no signal; leave it at zero
    return mean, std


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    out = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32, copy=True)
    m = torch.from_numpy(mean.astype(np.float32)).view(1, -1, 1, 1)
    s = torch.from_numpy(std.astype(np.float32)).view(1, -1, 1, 1)
    return out.sub_(m).div_(s)


# --------------------------------------------------------------------------- readers


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Read directly rather than through torchvision so that copies whose md5 differs from
    torchvision's records (re-packaged but valid files) are accepted.
    """
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise BenchError(f"Cannot read IDX file {path}: {exc}. Delete it and retry.") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise BenchError(f"{path} is not an IDX file (bad magic number). Delete it and retry.")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + count * dtype.itemsize:
        raise BenchError(
            f"IDX file {path} is truncated or corrupt: its header declares shape {shape} "
            f"but it holds {len(data) - header} bytes of data. Delete it and retry."
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python pickle (as torchvision does, but without its md5 check)."""
    try:
        with open(path, "rb") as fh:
            raw = pickle.load(fh, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise BenchError(f"Cannot read CIFAR file {path}: {exc}. Delete it and retry.") from exc
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in raw.items()}
    if "data" not in entry or label_key not in entry:
        raise BenchError(
            f"CIFAR file {path} lacks the 'data' or {label_key!r} entry; it is not a CIFAR "
            f"python batch. Delete it and retry."
        )
    images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(entry[label_key], dtype=np.int64)


# ------------------------------------------------------------------------ downloading


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking network call, so an offline machine fails in seconds."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _missing_files_error(
    dataset: str, root: Path, searched: Sequence[Path], files: Sequence[str], reason: str
) -> BenchError:
    where = ", ".join(str(d) for d in searched)
    return BenchError(
        f"Dataset {dataset!r} is not in the data directory {root} and could not be "
        f"downloaded ({reason}). Searched: {where}; expected there: {', '.join(files)}. "
        f"To use a local copy, pass --data-dir pointing at the directory holding these "
        f"files (or set the environment variable BENCH_DATA_DIR); otherwise retry on a "
        f"machine with network access, which downloads the dataset into {root}."
    )


def _download(
    dataset: str,
    root: Path,
    fetch: Callable[[Path], None],
    searched: Sequence[Path],
    files: Sequence[str],
) -> None:
    """Run ``fetch(staging_dir)`` in a private directory under ``root``.

    ``fetch`` downloads and moves the finished files into place; whatever happens, the
    staging directory is removed, so a failed or interrupted attempt leaves nothing that
    a later attempt (or a concurrent trial) could mistake for the dataset.
    """
    if not _DOWNLOADS.get():
        where = ", ".join(str(d) for d in searched)
        raise DataNotPresent(f"Dataset {dataset!r} is not in the data directory {root} (searched: {where}).")
    root_existed = root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".bench-download-{dataset}-", dir=root))
    except OSError as exc:
        raise _missing_files_error(
            dataset, root, searched, files, f"cannot write there: {exc.strerror or exc}"
        ) from exc
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            fetch(staging)
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise _missing_files_error(
            dataset, root, searched, files, f"{type(exc).__name__}: {first_line}".rstrip(": ")
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not root_existed:
            with contextlib.suppress(OSError):
                root.rmdir()  # only succeeds if the failed attempt left it empty


def _torchvision_dataset(class_name: str) -> Any:
    """Look the class up at call time (keeps torchvision off the import path of bench)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, class_name)


# ---------------------------------------------------------------------- MNIST family


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_dirs(root: Path, name: str, tv_class: str) -> list[Path]:
    """Directories that may hold the four IDX files, most specific first.

    The torchvision layout and a directory named after the dataset come before ``root``
    itself, because MNIST and Fashion-MNIST use the same file names.
    """
    return [root / tv_class / "raw", root / name, root]


def _find_idx(directory: Path) -> list[Path] | None:
    found = []
    for base in _IDX_FILES:
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found


def _mnist_loader(name: str, tv_class: str) -> Callable[[Path], Arrays]:
    def load(root: Path) -> Arrays:
        searched = _idx_dirs(root, name, tv_class)
        found = next((f for f in map(_find_idx, searched) if f is not None), None)
        if found is None:
            final = root / tv_class / "raw"

            def fetch(staging: Path) -> None:
                ds = _torchvision_dataset(tv_class)(root=str(staging), train=True, download=True)
                raw = Path(ds.raw_folder)
                final.mkdir(parents=True, exist_ok=True)
                for base in _IDX_FILES:
                    os.replace(raw / base, final / base)

            files = [f"{b} (or {b}.gz)" for b in _IDX_FILES]
            _download(name, root, fetch, searched, files)
            found = _find_idx(final)
            if found is None:  # the download reported success but left no files
                raise _missing_files_error(name, root, searched, files, "no files after download")
        train_x, train_y, val_x, val_y = (read_idx(p) for p in found)
        return train_x, train_y, val_x, val_y

    return load


# ---------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    folder: str  # torchvision's extracted directory name
    train: tuple[str, ...]
    test: str
    label_key: str
    tv_class: str


_CIFAR10 = _CifarLayout(
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "labels",
    "CIFAR10",
)
_CIFAR100 = _CifarLayout("cifar-100-python", ("train",), "test", "fine_labels", "CIFAR100")


def _cifar_loader(name: str, layout: _CifarLayout) -> Callable[[Path], Arrays]:
    files = (*layout.train, layout.test)

    def holds(directory: Path) -> bool:
        return all((directory / f).is_file() for f in files)

    def load(root: Path) -> Arrays:
        searched = [root / layout.folder, root / name / layout.folder, root]
        directory = next((d for d in searched if holds(d)), None)
        if directory is None:
            final = root / layout.folder

            def fetch(staging: Path) -> None:
                tv_class = _torchvision_dataset(layout.tv_class)
                ds = tv_class(root=str(staging), train=True, download=True)
                extracted = Path(ds.root) / layout.folder
                try:
                    os.replace(extracted, final)
                except OSError:
                    if not holds(final):  # not merely a concurrent download that won
                        raise

            _download(name, root, fetch, searched, files)
            directory = final
            if not holds(directory):
                raise _missing_files_error(name, root, searched, files, "no files after download")
        train = [_read_cifar_batch(directory / f, layout.label_key) for f in layout.train]
        val_x, val_y = _read_cifar_batch(directory / layout.test, layout.label_key)
        train_x = np.concatenate([x for x, _ in train])
        train_y = np.concatenate([y for _, y in train])
        return train_x, train_y, val_x, val_y

    return load


# ------------------------------------------------------------------ bundled datasets


def _load_digits(_root: Path) -> Arrays:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)  # (1797, 8, 8), values 0–16
    train_x, val_x, train_y, val_y = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return train_x, train_y, val_x, val_y


SYNTHETIC_SHAPE = (1, 8, 8)
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN, SYNTHETIC_VAL = 512, 128


def _load_synthetic(_root: Path) -> Arrays:
    """Class prototypes plus Gaussian noise: separable, so a few steps of SGD help."""
    rng = np.random.default_rng(1234)
    prototypes = rng.normal(size=(SYNTHETIC_CLASSES, *SYNTHETIC_SHAPE)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % SYNTHETIC_CLASSES)
        noise = rng.normal(size=(n, *SYNTHETIC_SHAPE)).astype(np.float32)
        return prototypes[y] + noise, y.astype(np.int64)

    train_x, train_y = split(SYNTHETIC_TRAIN)
    val_x, val_y = split(SYNTHETIC_VAL)
    return train_x, train_y, val_x, val_y


@DATASETS.register(
    "digits",
    "scikit-learn's bundled 8×8 handwritten digits (1,437 train / 360 val); the offline default, needs no download",
    "Alpaydin & Kaynak 1998, UCI Optical Recognition of Handwritten Digits",
)
def digits() -> DatasetSource:
    return DatasetSource("digits", 1, 8, 10, _load_digits, needs_files=False, train_size=1437,
                         val_size=360)


@DATASETS.register(
    "synthetic",
    "Deterministic Gaussian class prototypes plus noise, 1×8×8, 10 classes, 512 train / 128 val; for fast tests",
)
def synthetic() -> DatasetSource:
    return DatasetSource(
        "synthetic", SYNTHETIC_SHAPE[0], SYNTHETIC_SHAPE[1], SYNTHETIC_CLASSES, _load_synthetic, needs_files=False,
        train_size=SYNTHETIC_TRAIN, val_size=SYNTHETIC_VAL,
    )


@DATASETS.register(
    "mnist",
    "MNIST handwritten digits, 1×28×28, 60,000 train / 10,000 val",
    "LeCun et al. 1998, Gradient-based learning applied to document recognition",
)
def mnist() -> DatasetSource:
    return DatasetSource("mnist", 1, 28, 10, _mnist_loader("mnist", "MNIST"), needs_files=True, train_size=60000,
                         val_size=10000)


@DATASETS.register(
    "fashion-mnist",
    "Fashion-MNIST clothing images, 1×28×28, 10 classes, 60,000 train / 10,000 val",
    "Xiao et al. 2017, Fashion-MNIST (arXiv:1708.07747)",
)
def fashion_mnist() -> DatasetSource:
    loader = _mnist_loader("fashion-mnist", "FashionMNIST")
    return DatasetSource("fashion-mnist", 1, 28, 10, loader, needs_files=True, train_size=60000, val_size=10000)


@DATASETS.register(
    "cifar10",
    "CIFAR-10 natural images, 3×32×32, 10 classes, 50,000 train / 10,000 val",
    "Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
)
def cifar10() -> DatasetSource:
    return DatasetSource("cifar10", 3, 32, 10, _cifar_loader("cifar10", _CIFAR10), needs_files=True, train_size=50000,
                         val_size=10000)


@DATASETS.register(
    "cifar100",
    "CIFAR-100 natural images, 3×32×32, 100 fine classes, 50,000 train / 10,000 val",
    "Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
)
def cifar100() -> DatasetSource:
    return DatasetSource(
        "cifar100", 3, 32, 100, _cifar_loader("cifar100", _CIFAR100), needs_files=True, train_size=50000,
        val_size=10000,
    )
