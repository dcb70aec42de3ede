from __future__ import annotations

import os
import signal

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
torch.set_num_threads(1)
# A shell without job control starts background commands with SIGINT ignored, and Python then
# keeps it ignored; the tests that stop a trial with SIGINT need it to raise KeyboardInterrupt,
# as it does in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
