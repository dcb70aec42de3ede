"""Trial checkpoints: what a trial needs to go on after its process, worker or node is lost.

A checkpoint is one ``torch.save`` of a dict: the model, optimizer and schedule states
(and the EMA model's, :mod:`bench.trial.ema`, when the trial keeps one), every random
state the trial draws from (torch's, CUDA's, the batch-order generator's, Python's and
NumPy's), where training stands (:class:`Position`: epoch, steps done in it,
its batch order and running sums when taken mid-epoch), the epochs' metrics so far and
the step log's series. Restored into a freshly built trial, training continues exactly
where it stopped: on the CPU the metrics that follow are bit-identical to an uninterrupted
run's (the test suite checks every epoch).

A checkpoint is tied to its trial and to the code and data it was made with (their
fingerprints): one made by other code or on other data is not resumed, the trial starts
over. Where checkpoints live is the executor's business (:class:`Checkpoints`): a
directory here (:class:`DirectoryCheckpoints`, under ``$BENCH_CHECKPOINT_DIR``), Ray Tune's
checkpoint storage on Ray. Files are loaded with ``weights_only=True``: a checkpoint holds
tensors and plain values only, so loading one never runs code.

Signals: :func:`deferred_signals` holds SIGINT and SIGTERM during training so that the
loop can checkpoint at a step boundary (a model half-way through an optimizer step is not
a state to resume from), then re-raises them through the handlers they interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from bench.trial.ema import ModelEma

log = logging.getLogger(__name__)

FORMAT = 1  # a checkpoint of another format is not resumed
STATE_FILE = "state.pt"
WEIGHTS_FILE = "weights.pt"
DEFAULT_DIR = Path(".bench") / "checkpoints"


def checkpoint_dir() -> Path:
    """``$BENCH_CHECKPOINT_DIR``, else ``.bench/checkpoints`` under the current directory."""
    return Path(os.environ.get("BENCH_CHECKPOINT_DIR") or DEFAULT_DIR).expanduser().resolve()


class Checkpoints(Protocol):
    """Where one trial's checkpoints go."""

    def load(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None."""

    def save(self, state: dict[str, Any]) -> None:
        """Keeps ``state`` as the latest checkpoint (replacing the previous one)."""

    def finish(self, weights: dict[str, torch.Tensor] | None) -> dict[str, str]:
        """The trial is over: its checkpoints go. ``weights`` is the final model state (None
        for a diverged trial), kept when these checkpoints keep weights. Returns the
        artifacts kept, by name (``weights``: where the weights are)."""


@dataclass
class Position:
    """Where training stands, besides the modules' states. Between epochs ``order`` and
    ``sums`` are None; mid-epoch they hold the epoch's batch order and its running sums,
    and ``offset`` its steps already done."""

    epoch: int = 1
    offset: int = 0
    step: int = 0
    first_loss: float | None = None
    best_val: float = -math.inf
    train_seconds: float = 0.0
    order: torch.Tensor | None = None
    sums: dict[str, torch.Tensor] | None = None
    lr: float | None = None  # the learning rate the epoch started with
    seconds: float = 0.0  # the epoch's training time before this process
    resumed: bool = field(default=False, compare=False)

    def next_epoch(self) -> Position:
        return Position(
            epoch=self.epoch + 1, step=self.step, first_loss=self.first_loss, best_val=self.best_val,
            train_seconds=self.train_seconds,
        )


def snapshot(
    position: Position,
    *,
    identity: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    epochs: list[dict[str, Any]],
    series: dict[str, list[Any]] | None,
    ema: ModelEma | None = None,
) -> dict[str, Any]:
    """The checkpoint of a trial at ``position``; ``identity`` is what it must match to be
    resumed (trial id, code and data fingerprints). ``ema``: the trial's EMA model, if any."""
    where = {f.name: getattr(position, f.name) for f in fields(Position) if f.name != "resumed"}
    if where["order"] is not None:
        where["order"] = where["order"].cpu()
    if where["sums"] is not None:
        where["sums"] = {k: v.detach().cpu() for k, v in where["sums"].items()}
    return {
        "format": FORMAT,
        **identity,
        "position": where,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": random_states(generator),
        "epochs": [dict(e) for e in epochs],
        "series": {k: list(v) for k, v in series.items()} if series is not None else None,
    }


def mismatch(state: dict[str, Any], identity: dict[str, Any]) -> str | None:
    """Why ``state`` cannot be resumed by the trial of ``identity`` (None: it can)."""
    if state.get("format") != FORMAT:
        return f"it has format {state.get('format')!r}, not {FORMAT}"
    if state.get("trial_id") != identity.get("trial_id"):
        return f"it belongs to trial {state.get('trial_id')!r}"
    if state.get("code") != identity.get("code"):
        changed = sorted(k for k in {**(state.get("code") or {}), **(identity.get("code") or {})}
                         if (state.get("code") or {}).get(k) != (identity.get("code") or {}).get(k)) \
            if isinstance(state.get("code"), dict) and isinstance(identity.get("code"), dict) else ["code"]
        return f"it was made by other code ({', '.join(changed)} changed)"
    if state.get("data") != identity.get("data"):
        return "it was made on other data"
    return None


def restore(
    state: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    device: torch.device,
    ema: ModelEma | None = None,
) -> Position:
    """Loads ``state`` into a freshly built trial (and its EMA model, if it keeps one);
    returns where training stands."""
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_random_states(state["rng"], generator)
    where = dict(state["position"])
    if where["order"] is not None:
        where["order"] = where["order"].to(device)
    if where["sums"] is not None:
        where["sums"] = {k: v.to(device) for k, v in where["sums"].items()}
    return Position(**where, resumed=True)


def random_states(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a trial draws from; NumPy's key as a tensor (loadable weights-only)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "generator": generator.get_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
    }


def set_random_states(states: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["generator"])
    random.setstate(_tuples(states["python"]))
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))


def _tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples where a round trip may give lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_file(value: Any, path: Path) -> None:
    """``torch.save`` to ``path`` atomically: written beside it, synced, then renamed, so
    a kill mid-write leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        torch.save(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def load_file(path: Path) -> dict[str, Any] | None:
    """A checkpoint file; None (logged) when it is missing or unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint means starting over, not failing
        log.warning("The checkpoint %s could not be read (%s: %s); the trial starts over.", path, type(exc).__name__, exc)
        return None


class DirectoryCheckpoints:
    """A trial's checkpoints in ``directory`` (``state.pt``); kept weights as ``weights.pt``."""

    def __init__(self, directory: Path, *, keep: bool = False) -> None:
        self.directory, self.keep = Path(directory), keep

    @property
    def path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> dict[str, Any] | None:
        return load_file(self.path)

    def save(self, state: dict[str, Any]) -> None:
        save_file(state, self.path)

    def finish(self, weights: dict[str, torch.Tensor] | None) -> dict[str, str]:
        self.path.unlink(missing_ok=True)
        if weights is not None and self.keep:
            target = self.directory / WEIGHTS_FILE
            save_file(weights, target)
            return {"weights": str(target)}
        shutil.rmtree(self.directory, ignore_errors=True)
        return {}


class SignalGate:
    """SIGINT and SIGTERM received while it is open: held until :meth:`deliver`."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _hold(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: no more waiting for a step boundary
            self.deliver()
        self.received = signum

    def open(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._hold)

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def deliver(self) -> None:
        """Gives the held signal to the handler it interrupted (Ctrl-C: KeyboardInterrupt)."""
        signum, self.received = self.received, None
        self.close()
        if signum is not None:
            signal.raise_signal(signum)


@contextmanager
def deferred_signals(enabled: bool = True) -> Iterator[SignalGate]:
    """Holds SIGINT and SIGTERM while training runs (main thread only: signals are
    delivered there); the loop checks :attr:`SignalGate.requested` at step boundaries."""
    gate = SignalGate()
    active = enabled and threading.current_thread() is threading.main_thread()
    if active:
        gate.open()
    try:
        yield gate
    finally:
        if active:
            held, gate.received = gate.received, None
            gate.close()
            if held is not None:  # training ended (diverged) before a step boundary delivered it
                signal.raise_signal(held)
