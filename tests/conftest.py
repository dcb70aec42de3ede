from __future__ import annotations

import os
import signal

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own store and data directory and never sees the user's."""
    monkeypatch.delenv("BENCH_MONGO_URI", raising=False)
    monkeypatch.setenv("BENCH_STORE", str(tmp_path / "store.sqlite"))
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BENCH_RAY_DIR", str(tmp_path / "ray"))
    monkeypatch.setenv("BENCH_JOURNAL_DIR", str(tmp_path / "journal"))
    monkeypatch.setenv("BENCH_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    torch.manual_seed(0)
    # Every test starts with Ctrl-C raising KeyboardInterrupt, as in a terminal: a shell without
    # job control starts background commands with SIGINT ignored, and Ray Tune's driver leaves
    # its own handler installed after some runs (the next SIGINT only restores the previous one).
    signal.signal(signal.SIGINT, signal.default_int_handler)
