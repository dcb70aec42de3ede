"""User mistakes end in one readable paragraph, exit status 1, no traceback, nothing written.

Each test replays one mistake through the command line (or the function it reaches) and
checks the message, the exit status and that nothing was created or changed."""

from __future__ import annotations

import math
import sqlite3
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import _GridProgress, app
from bench.errors import ConfigError
from bench.store import open_store

runner = CliRunner()

TINY = """
    name: tiny
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 1}
    axes: {norm: [bn, gn]}
    profiles:
      quick: {base: {epochs: 1}}
"""


def refused(*args: str, expect: str = "") -> str:
    """Runs the command; asserts exit status 1, one error paragraph and no traceback."""
    result = runner.invoke(app, list(args))
    output = result.output
    assert result.exit_code == 1, output
    assert "Traceback" not in output and isinstance(result.exception, SystemExit), output
    assert "error:" in output
    assert expect in " ".join(output.split()), output
    return output


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """The test's store with four runs of study ``st`` (lr 0.1 and 0.01, batch 32 and 64)."""
    path = tmp_path / "store.sqlite"
    with open_store(path) as store:
        for i, (lr, batch) in enumerate([(0.1, 32), (0.1, 64), (0.01, 32), (0.01, 64)]):
            store.upsert_run(f"r{i}", {"status": "completed", "config": {"lr": lr, "batch_size": batch},
                                       "summary": {"final_val_acc": 0.5}}, study="st")
    return path


def count(*args: str) -> int:
    result = runner.invoke(app, ["results", "ls", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return result.output.count('"run_id"')


# -- answers silently wrong -------------------------------------------------------------


def test_where_numbers_are_numbers(store_path):
    assert count("--where", "lr<=1e-1") == count("--where", "lr<=0.1") == 4
    assert count("--where", "lr<1e-1") == 2


@pytest.mark.parametrize("condition", ["batch_size=>32", "batch_size<>32", "batch_size=<32"])
def test_where_backwards_operator(store_path, condition):
    refused("results", "ls", "--where", condition, expect="Cannot read the condition")


@pytest.mark.parametrize("condition, expect", [
    ("final_val_acc>=abc", "final_val_acc holds a number, so 'abc' can never match"),
    ("status=compleded", "status holds one of pending"),
    ("batch_size<=big", "batch_size holds a number"),
])
def test_where_value_of_the_wrong_kind(store_path, condition, expect):
    refused("results", "ls", "--where", condition, expect=expect)


def test_unknown_status_and_study(store_path):
    refused("results", "ls", "--status", "compleded", expect="Unknown run status 'compleded'. Valid statuses: pending")
    refused("results", "ls", "--study", "nope", expect="Unknown study 'nope'")
    refused("store", "export", str(store_path.parent / "x.jsonl"), "--study", "nope", expect="Unknown study 'nope'")
    assert not (store_path.parent / "x.jsonl").exists()
    output = refused("store", "reset", "--study", "nope", "--status", "failed", expect="Unknown study 'nope'")
    assert "Studies there: st" in output
    assert count("--study", "st") == 4


# -- tracebacks where a clear error belongs --------------------------------------------------


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    return path


@pytest.mark.parametrize("flag, value", [("--stale-after", "nan"), ("--stale-after", "inf"),
                                         ("--cpus-per-trial", "nan"), ("--gpus-per-trial", "inf")])
def test_grid_flags_must_be_finite(spec, flag, value):
    refused("grid", str(spec), flag, value, expect="finite")


def test_store_status_stale_after_must_be_finite(store_path):
    refused("store", "status", "--stale-after", "nan", expect="finite number of seconds")


def test_deeply_nested_filter(store_path):
    deep = '{"a":' * 1000 + "1" + "}" * 1000
    refused("results", "query", deep, expect="nested too deeply")
    nested = '{"$and":[' * 100 + "{}" + "]}" * 100
    refused("results", "query", nested, expect="nested more than 32 levels")


def test_argument_not_utf8(store_path):
    refused("results", "show", "\udcff", expect="is not valid UTF-8 text")
    refused("results", "ls", "--where", "norm=\udcff", expect="is not valid UTF-8 text")


@pytest.mark.parametrize("content, expect", [
    ("name: x\nbase: [1, 2]\n", "base must be a mapping of names to values"),
    ("name: x\naxes: norm\n", "axes must be a mapping of names to values"),
    ("name: x\nzip: [1]\n", "zip must be a mapping"),
    ("name: x\nvariants: gn\n", "variants must be a mapping"),
    ("name: x\nreport: pivot\n", "report must be a mapping"),
    ("name: [a, b]\naxes: {norm: [bn]}\n", "name must be one non-empty string"),
    ("", "is empty: a study spec needs"),
    ("# only a comment\n", "is empty"),
])
def test_spec_shapes(tmp_path, content, expect):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    refused("grid", str(path), "--dry-run", expect=expect)


def test_profiles_as_a_list(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\naxes: {norm: [bn]}\nprofiles: [quick]\n")
    refused("grid", str(path), "--dry-run", "--quick", expect="profiles must be a mapping")
    path.write_text("name: x\naxes: {norm: [bn]}\nprofiles: {quick: [1]}\n")
    refused("grid", str(path), "--dry-run", "--quick", expect="profile 'quick' must be a mapping")


@pytest.mark.parametrize("data, expect", [
    ("name: x\n".encode("utf-16"), "is not UTF-8 text (it is UTF-16"),
    (b"name: caf\xe9\n", "is not UTF-8 text: byte 9"),
])
def test_spec_not_utf8(tmp_path, data, expect):
    path = tmp_path / "enc.yaml"
    path.write_bytes(data)
    refused("grid", str(path), "--dry-run", expect=expect)


def test_seed_override_not_a_number(spec):
    refused("grid", str(spec), "--dry-run", "--set", "seed=abc", expect="seed must be an integer")


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
def test_seed_out_of_range(seed):
    refused("train", "--no-save", "--set", "dataset=synthetic", "--set", f"seed={seed}",
            expect="seed must be an integer ≥ 0 and ≤ 4294967295")


def test_mlp_batchnorm_batch_of_one():
    refused("train", "--no-save", "--set", "dataset=synthetic", "--set", "arch=mlp", "--set", "norm=bn",
            "--set", "batch_size=1", expect="arch=mlp with norm=bn needs batch_size ≥ 2")


# -- hangs --------------------------------------------------------------------------------


BIG = """
    name: big
    base: {dataset: synthetic, epochs: 1}
    axes: {lr: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1], batch_size: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
           weight_decay: [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]}
    repeats: 1000
"""


def test_huge_grid_refused_quickly(tmp_path, monkeypatch):
    from bench.spec import load_spec
    from bench.spec.study import trial_count

    path = tmp_path / "big.yaml"
    path.write_text(textwrap.dedent(BIG))
    started = time.monotonic()
    refused("grid", str(path), "--dry-run", expect="has 1,000,000 trials")
    assert time.monotonic() - started < 60
    monkeypatch.setenv("BENCH_MAX_TRIALS", "2000000")
    assert trial_count(load_spec(str(path).replace("big", "big"), overrides={"seed": 0})) == 1000
    monkeypatch.setenv("BENCH_MAX_TRIALS", "many")
    with pytest.raises(ConfigError, match="BENCH_MAX_TRIALS must be a positive whole number"):
        load_spec(path)


def test_trial_count_matches_expansion(tmp_path):
    from bench.spec import load_spec
    from bench.spec.study import trial_count

    path = tmp_path / "v.yaml"
    path.write_text("name: v\nbase: {dataset: synthetic}\naxes: {norm: [bn, gn]}\nrepeats: 2\n"
                    "variants: {a: {lr: [0.1, 0.2]}, b: {optimizer: adam}}\nzip: {width: [8, 16], depth: [2, 3]}\n")
    spec = load_spec(path)
    assert trial_count(spec) == len(spec._expand()) == (2 + 1) * 2 * 2 * 2


# -- smaller ------------------------------------------------------------------------------


def test_read_commands_create_no_store(tmp_path):
    missing = tmp_path / "nodir" / "results.sqlite"
    for args in (["results", "ls"], ["store", "info"], ["store", "status"], ["results", "show", "x"],
                 ["store", "export", str(tmp_path / "out.jsonl")]):
        refused("--store", str(missing), *args, expect=f"No store at {missing}; run a grid first or pass --store")
    assert not missing.parent.exists() and not (tmp_path / "out.jsonl").exists()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    refused("--store", str(empty), "store", "info", expect="is empty: it is not a bench result store")
    assert empty.stat().st_size == 0 and not Path(f"{empty}-wal").exists()


def test_dev_null_is_not_a_store():
    existed = Path("/dev/null-journal").exists()
    refused("--store", "/dev/null", "results", "ls", expect="/dev/null is not a regular file")
    assert Path("/dev/null-journal").exists() == existed


def test_read_only_store_reads_but_never_writes(store_path):
    before = store_path.read_bytes()
    with open_store(store_path, read_only=True) as store:
        assert store.count_runs() == 4
        with pytest.raises(Exception, match="read-only|readonly"):
            store.upsert_run("new", {"status": "pending"})
    with sqlite3.connect(store_path) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 4
    assert len(before) > 0


def test_corrupt_file_is_not_blamed_on_the_disk(tmp_path):
    path = tmp_path / "corrupt.sqlite"
    path.write_bytes(b"this is not a database" * 200)
    output = refused("--store", str(path), "store", "info", expect="is not a valid bench result store")
    assert "disk is not full" not in output and "mv " in output
    assert path.read_bytes() == b"this is not a database" * 200


def test_disk_full_hint(store_path):
    from bench.store.embedded import EmbeddedStore

    store = EmbeddedStore(store_path)
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert "The disk holding the result store" in str(store._error("save run 'x'", exc))
    store.close()


def test_sync_with_server_down_says_what_is_journaled(tmp_path, monkeypatch):
    from bench.store.journal import Journal, journal_path

    uri = "mongodb://127.0.0.1:1/bench?serverSelectionTimeoutMS=200&connectTimeoutMS=200"
    journal = Journal(journal_path("mongodb://127.0.0.1:1", "bench"))
    journal.append("upsert_run", {"run_id": "r", "set": {"status": "pending"}, "add_study": None})
    output = refused("--store", uri, "store", "sync", expect="1 journaled writes wait in")
    assert str(journal.path) in " ".join(output.split()).replace(" ", "") or journal.path.name in output
    assert journal.pending() == 1


def test_report_footer_masks_passwords():
    from bench.report.markdown import _provenance_lines

    prov = {"date": "today", "store": "mongodb://u:***@h/db",
            "grid": {"command": "bench --mongo-uri mongodb://u:s3cret@h:27017/db?authSource=admin grid st"},
            "report_command": "bench --store 'mongodb://u:s3cret@h/db' report st"}
    lines = _provenance_lines(prov, {}, SimpleNamespace(ci="t", alpha=0.05, correction="none"), pd.DataFrame())
    text = "\n".join(lines)
    assert "s3cret" not in text and "mongodb://u:***@h:27017/db" in text


def test_progress_without_terminal_prints_lines(capsys, monkeypatch):
    monkeypatch.setattr(_GridProgress, "summary_every", 0.05)
    with _GridProgress(3, live=False) as progress:
        progress.update({"running": 1, "completed": 0, "diverged": 0, "failed": 0, "done": 0})
        time.sleep(0.2)
        progress.update({"running": 1, "completed": 1, "diverged": 0, "failed": 1, "done": 2})
    out = capsys.readouterr().out
    assert "trial 1/3 finished" in out and "trial 2/3 finished" in out
    assert "grid: 0/3 done" in out
    assert math.isfinite(0.0)


def test_dry_run_of_a_large_grid_builds_each_distinct_model_once(tmp_path, monkeypatch):
    import bench.trial
    from bench.grid.planning import validate
    from bench.spec import load_spec

    path = tmp_path / "big.yaml"
    path.write_text("name: big\nbase: {dataset: synthetic, arch: cnn, width: 8, epochs: 1}\n"
                    "axes: {norm: [bn, gn], batch_size: [16, 32], lr: [0.1, 0.2]}\nrepeats: 50\n")
    trials = load_spec(path).expand()
    built = []
    monkeypatch.setattr(bench.trial, "preflight", built.append)
    validate(trials)
    assert len(trials) == 400 and len(built) == 4  # seeds and lr change no built object
    started = time.monotonic()
    result = runner.invoke(app, ["grid", str(path), "--dry-run", "--executor", "local"])
    assert result.exit_code == 0 and "400 trials" in result.output, result.output
    assert time.monotonic() - started < 60
