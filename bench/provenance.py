"""Where a result came from: versions, host, device, code revision.

Stored in every run document (``env``) and printed in every report's footer, so a
number can always be traced to the software and hardware that produced it.
"""

from __future__ import annotations

import datetime as dt
import functools
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def utcnow() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def git_commit() -> str | None:
    """The commit of the source tree bench runs from (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def device_name(device: str | None = None) -> str:
    import torch

    if (device is None and torch.cuda.is_available()) or (device or "").startswith("cuda"):
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def environment(device: str | None = None) -> dict[str, Any]:
    import torch

    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "bench": _version("bench"),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "ray": _version("ray"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "device": device_name(device),
        "cpu_threads": torch.get_num_threads(),
    }
