"""Where a result came from: versions, host, device, code revision, code and data fingerprints.

Stored in every run document (``env``) and printed in every report's footer, so a
number can always be traced to the software and hardware that produced it.

A *fingerprint* is a short SHA-256 (:data:`DIGITS` hex digits) of bytes. A trial's code
fingerprint (:func:`code_fingerprint`) holds one per technique it chose — the source
files of the module that defines the entry's builder and of that module's package
``__init__`` (where a family keeps what its entries share) — under ``"<kind>:<name>"``,
and one of the trainer (``bench/trial/*.py``) under ``"trial"``. The data fingerprint is
computed where the data is loaded (:func:`bench.zoo.datasets.load_dataset`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.util
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

#: The directory of the ``bench`` package (its source, wherever it is installed).
PACKAGE_DIR = Path(__file__).resolve().parent

#: Hex digits kept of a SHA-256 fingerprint (48 bits: collisions are not a concern here).
DIGITS = 12


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def package_version() -> str | None:
    """The installed distribution's version (None from a bare source tree)."""
    return _version("ablation-bench")


@functools.cache
def source_revision(package_dir: Path = PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """The git commit of the package's own source tree and whether it is dirty.

    The commit is that of the repository whose work tree holds ``package_dir`` as tracked
    files (a checkout, or an editable install of one). A package installed elsewhere — a
    wheel in a virtual environment that happens to sit inside some other repository — is
    in no repository's tracked files, and records no commit: (None, None). Dirty: files
    under the package directory differ from that commit (edits, or new files git does
    not ignore); tests and documentation do not count.
    """
    if _git(package_dir, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return None, None
    commit = _git(package_dir, "rev-parse", "--short=12", "HEAD")
    if not commit:
        return None, None
    status = _git(package_dir, "status", "--porcelain", "--", ".")
    return commit, None if status is None else bool(status)


def _git(cwd: Path, *args: str) -> str | None:
    """Standard output of ``git -C cwd args`` (stripped), or None when git fails."""
    try:
        out = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the source tree bench runs from (None when it is not a checkout's)."""
    return source_revision()[0]


def device_name(device: str | None = None) -> str:
    import torch

    if (device is None and torch.cuda.is_available()) or (device or "").startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def environment(device: str | None = None, config: Any = None) -> dict[str, Any]:
    """What a run records of where it ran: host, versions, the package's commit and dirty
    flag (:func:`source_revision`), the device and, given the trial's ``config``, the
    fingerprint of the code it runs (``code``, :func:`code_fingerprint`)."""
    import torch

    commit, dirty = source_revision()
    env = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "bench": package_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "ray": _version("ray"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device_name(device),
        "cpu_threads": torch.get_num_threads(),
    }
    if config is not None:
        env["code"] = code_fingerprint(config)
    return env


# -- fingerprints ----------------------------------------------------------------------------


def digest(chunks: Iterable[Any]) -> str:
    """The fingerprint of a sequence of byte strings or other contiguous buffers (each
    length-prefixed, so the split between them counts)."""
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(memoryview(chunk).nbytes.to_bytes(8, "little"))
        sha.update(chunk)
    return sha.hexdigest()[:DIGITS]


_FILE_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def _file_hash(path: Path) -> bytes:
    """SHA-256 of a file's bytes, kept while its modification time and size stay the same
    (so a plan of thousands of trials reads each source file once); b"" for no file."""
    try:
        stat = path.stat()
    except OSError:
        return b""
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _FILE_DIGESTS:
        _FILE_DIGESTS[key] = hashlib.sha256(path.read_bytes()).digest()
    return _FILE_DIGESTS[key]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """The fingerprint of these files' contents, in this order (a missing file counts as empty)."""
    return digest(_file_hash(path) for path in paths)


def module_path(module: str) -> Path | None:
    """The source file of ``module`` (dotted), found without importing it when it is part of
    this package; for other modules (plugins) the imported module's file, else the file
    the import system would load. None when there is none."""
    top = PACKAGE_DIR.name
    if module == top or module.startswith(top + "."):
        base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
        return base / "__init__.py" if (base / "__init__.py").is_file() else base.with_suffix(".py")
    loaded = sys.modules.get(module)
    if getattr(loaded, "__file__", None):
        return Path(loaded.__file__)  # type: ignore[union-attr, arg-type]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.has_location else None


def module_files(module: str) -> tuple[Path, ...]:
    """The files an entry's code fingerprint covers: ``module``'s source and, when it sits
    in a package, the package's ``__init__`` (a norm family's NormFactory, the optimizers'
    ``make``)."""
    own = module_path(module)
    files = [own] if own is not None else []
    parent = module.rpartition(".")[0]
    if parent and not (own is not None and own.name == "__init__.py"):
        shared = module_path(parent)
        if shared is not None:
            files.append(shared)
    return tuple(files)


def trainer_files() -> tuple[Path, ...]:
    """The trainer's sources: ``bench/trial/*.py``."""
    return tuple(sorted((PACKAGE_DIR / "trial").glob("*.py")))


def code_fingerprint(config: Any) -> dict[str, str]:
    """``{"<kind>:<name>": fingerprint}`` for each registry entry ``config`` chooses (the
    source of the module defining its builder, :func:`module_files`); ``"option:<name>"``
    for each trial-level technique it switches on (an option declaring ``modules``, set to
    anything but its default: those modules' sources); and ``"trial"``: the trainer's. Read
    from the files as they are now; nothing is imported."""
    from bench.spec.config import TRIAL_OPTIONS
    from bench.zoo.registry import REGISTRIES

    out: dict[str, str] = {}
    for registry in REGISTRIES.values():
        entry = registry.chosen(config)
        if entry is None:  # a null choice: the architecture's own, named in its source
            continue
        out[f"{registry.kind}:{entry.name}"] = files_fingerprint(module_files(entry.module))
    for option in TRIAL_OPTIONS:
        if option.modules and getattr(config, option.name) != option.default:
            paths = [path for module in option.modules for path in module_files(module)]
            out[f"option:{option.name}"] = files_fingerprint(dict.fromkeys(paths))
    out["trial"] = files_fingerprint(trainer_files())
    return out
