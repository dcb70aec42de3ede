"""The command line end to end, through Typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bench
from bench.cli import app
from bench.store import open_store
from bench.zoo.registry import ARCHS, OPTIMIZERS

runner = CliRunner()

TINY = """
    name: tiny
    description: A tiny study for tests.
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 2, lr: 0.05, lr_scaling: linear, lr_base_batch: 32}
    axes:
      norm: [bn, gn]
      batch_size: [16, 64]
    repeats: 1
    report: {kind: pivot, rows: norm, columns: batch_size, metric: final_val_acc}
    profiles:
      quick: {base: {epochs: 1}, axes: {batch_size: [32]}}
"""


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    return path


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store.sqlite"


def test_zoo_lists_every_registry():
    result = invoke("zoo")
    assert result.exit_code == 0, result.output
    for kind in ("norms", "convs", "activations", "optimizers", "schedules", "archs", "augments", "datasets"):
        assert kind in result.output
    result = invoke("zoo", "norms")
    assert "GroupNorm" in result.output and "Wu & He 2018" in result.output
    result = invoke("zoo", "widgets")
    assert result.exit_code == 1 and "Valid zoo kind names: activations, archs, augments, convs, datasets, norms, optimizers, schedules" in result.output


def test_zoo_shows_the_options_each_entry_reads():
    result = invoke("zoo", "norms")
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "norm_groups=8 (≥ 1): number of groups G" in text and "norm_momentum=0.1 (≥ 0 and ≤ 1)" in text


@pytest.mark.parametrize(
    "args", [("--help",), ("grid", "--list"), ("results", "ls"), ("store", "status"), ("zoo", "norms")], ids=" ".join
)
def test_listing_commands_import_neither_torch_nor_timm(tmp_path, args):
    code = (
        "import sys\nfrom bench.cli import main\nsys.argv = ['bench', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'timm', 'torchvision'}))"
    )
    open_store().close()  # read commands need an existing store (they never create one)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_grid_list_shows_the_shipped_studies():
    result = invoke("grid", "--list")
    assert result.exit_code == 0 and "norm-vs-batch" in result.output and "quick" in result.output


def test_dry_run_prints_trials_and_an_estimate_and_writes_nothing(spec, store_path, tmp_path):
    result = invoke("grid", str(spec), "--dry-run", "--reports-dir", str(tmp_path / "reports"))
    assert result.exit_code == 0, result.output
    assert "4 trials" in result.output and "optimizer steps" in result.output and "min wall-clock" in result.output
    assert not store_path.exists() and not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "norm=batchnorm"], "Unknown norm 'batchnorm'. Valid norm names: bcn, bn, "),
        (["--set", "batch_size=0"], "batch_size must be an integer ≥ 1; got batch_size=0"),
        (["--set", "norm=gn", "--set", "norm_groups=3"], "norm_groups=3 cannot split a layer of 8 channels"),
        (["--set", "lr=-0.1"], "lr must be a number ≥ 0; got lr=-0.1"),
        (["--set", "optimizer=lion"], f"Unknown optimizer 'lion'. Valid optimizer names: {', '.join(sorted(OPTIMIZERS.names()))}."),
        (["--set", "arch=densenet"], f"Unknown arch 'densenet'. Valid arch names: {', '.join(sorted(ARCHS.names()))}."),
        (["--set", "dataset=imagenet"], "Unknown dataset 'imagenet'."),
        (["--set", "schedule=cyclic"], "Unknown schedule 'cyclic'."),
        (["--set", "batchsize=8"], "Unknown --set key 'batchsize'."),
        (["--profile", "huge"], "no profile 'huge'"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    ],
)
def test_bad_input_is_one_paragraph_exit_1_and_nothing_stored(spec, store_path, tmp_path, args, message):
    # a store with a result in it first: a rejected command must leave it untouched
    assert invoke("train", "--set", "dataset=synthetic", "--set", "epochs=1", "--set", "width=8").exit_code == 0
    before = open_store(str(store_path)).info()
    result = invoke("grid", str(spec), *args, "--executor", "local", "--reports-dir", str(tmp_path / "r"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert message in output, output
    assert "Traceback" not in result.output
    after = open_store(str(store_path)).info()
    assert {k: before[k] for k in ("runs", "metrics", "studies")} == {k: after[k] for k in ("runs", "metrics", "studies")}
    assert not (tmp_path / "r").exists()


def test_unknown_study_lists_the_studies():
    result = invoke("grid", "no-such-study")
    assert result.exit_code == 1 and "Valid study names:" in result.output and "norm-vs-batch" in result.output


def test_local_grid_stores_reports_queries_and_resumes(spec, store_path, tmp_path):
    reports = tmp_path / "reports"
    result = invoke("grid", str(spec), "--executor", "local", "--reports-dir", str(reports))
    assert result.exit_code == 0, result.output
    assert "4 to run" in result.output and "done: 4 completed" in result.output

    store = open_store(str(store_path))
    runs = store.find_runs({"study": "tiny"})
    assert len(runs) == 4 and {r["status"] for r in runs} == {"completed"}
    assert all(len(store.get_metrics(r["_id"])) == 2 for r in runs)
    assert all(r["attempts"] == 1 and r["env"]["torch"] for r in runs)
    assert sorted(r["derived"]["effective_lr"] for r in runs) == pytest.approx([0.025, 0.025, 0.1, 0.1])

    text = (reports / "tiny.md").read_text()
    assert "| norm \\ batch_size | 16 | 64 |" in text and "(n=1)" in text
    assert (reports / "tiny" / "final_val_acc-vs-batch_size.png").stat().st_size > 1000
    assert "- Made by: " in text and "(recorded as it started)" in text and "torch" in text

    # the same command again runs nothing
    result = invoke("grid", str(spec), "--executor", "local", "--reports-dir", str(reports))
    assert result.exit_code == 0 and "4 already finished" in result.output and "0 to run" in result.output
    assert all(r["attempts"] == 1 for r in store.find_runs({"study": "tiny"}))

    # an interrupted trial is the only one re-run; the finished ones keep their results
    victim = runs[0]["_id"]
    store.upsert_run(victim, {"status": "interrupted"})
    result = invoke("grid", str(spec), "--executor", "local", "--reports-dir", str(reports))
    assert "3 already finished" in result.output and "1 to run" in result.output
    assert store.get_run(victim)["attempts"] == 2 and store.get_run(victim)["status"] == "completed"
    assert len(store.get_metrics(victim)) == 2  # replayed epochs replaced, not duplicated

    # a study that asks for a trial another study ran gets it from the store
    other = tmp_path / "other.yaml"
    other.write_text(textwrap.dedent(TINY).replace("name: tiny", "name: other").replace("[16, 64]", "[16]"))
    result = invoke("grid", str(other), "--executor", "local", "--no-report")
    assert "2 already finished" in result.output and "0 to run" in result.output
    assert set(store.get_run(runs[0]["_id"])["study"]) >= {"tiny"}
    assert len(store.find_runs({"study": "other"})) == 2

    # querying
    result = invoke("results", "ls", "--study", "tiny", "--where", "norm=gn", "--where", "batch_size<=16", "--format", "json")
    rows = json.loads(result.output)
    assert [(r["norm"], r["batch_size"]) for r in rows] == [("gn", 16)]
    result = invoke("results", "ls", "--where", "norm=gn,bn", "--where", "final_val_acc>=0", "--format", "csv")
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 1 + 4
    result = invoke("results", "ls", "--where", "colour=red")
    assert result.exit_code == 1 and "Unknown key 'colour'" in result.output
    result = invoke("results", "query", '{"config.norm": "bn", "config.batch_size": {"$gt": 16}}', "--format", "json")
    assert [(r["norm"], r["batch_size"]) for r in json.loads(result.output)] == [("bn", 64)]
    result = invoke("results", "query", '{"$where": "this.a == 1"}')
    assert result.exit_code == 1 and "$where" in result.output and "Traceback" not in result.output
    result = invoke("results", "query", "{not json")
    assert result.exit_code == 1 and "not valid JSON" in result.output
    result = invoke("results", "show", victim)
    assert result.exit_code == 0 and "val_acc" in result.output and "config" in result.output
    result = invoke("results", "show", "0000")
    assert result.exit_code == 1 and "No run with id '0000'" in result.output

    # the Python API
    frame = bench.load_results(study="tiny", store=str(store_path))
    assert len(frame) == 4 and {"norm", "batch_size", "final_val_acc", "status"} <= set(frame.columns)
    epochs = bench.load_results(study="tiny", store=str(store_path), metrics=True)
    assert len(epochs) == 8 and {"epoch", "val_acc", "norm"} <= set(epochs.columns)

    # the report rebuilds from the store alone
    (reports / "tiny.md").unlink()
    result = invoke("report", str(spec), "--reports-dir", str(reports))
    assert result.exit_code == 0 and (reports / "tiny.md").read_text().count("(n=1)") == 4

    result = invoke("store", "info")
    assert result.exit_code == 0 and "embedded" in result.output and str(store_path) in result.output


def test_quick_profile_has_its_own_report(spec, tmp_path):
    result = invoke("grid", str(spec), "--quick", "--executor", "local", "--reports-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tiny-quick.md").exists() and not (tmp_path / "tiny.md").exists()


def test_train_runs_one_trial_and_records_it(store_path):
    result = invoke("train", "--set", "dataset=synthetic", "--set", "norm=gn", "--set", "norm_groups=4", "--set", "batch_size=16",
                    "--set", "epochs=2", "--set", "width=8")
    assert result.exit_code == 0, result.output
    assert "epoch   2" in result.output and "completed" in result.output
    runs = open_store(str(store_path)).find_runs({"config.norm": "gn"})
    assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["summary"]["epochs_done"] == 2


def test_train_reports_divergence(store_path):
    result = invoke("train", "--set", "dataset=synthetic", "--set", "norm=none", "--set", "lr=10000", "--set", "width=8")
    assert result.exit_code == 0 and "diverged at step" in result.output


def test_train_refuses_an_option_the_trial_does_not_read(store_path):
    result = invoke("train", "--set", "dataset=synthetic", "--set", "adax_beta2=0.1")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "`adax_beta2` does nothing for optimizer=sgd: it is read only with optimizer=adax" in " ".join(result.output.split())
    assert not store_path.exists()  # refused before the store is opened


def test_train_does_not_run_a_trial_that_a_live_grid_runs(store_path):
    from bench.spec import TrialConfig

    config = TrialConfig(dataset="synthetic", width=8, epochs=1)
    store = open_store(str(store_path))
    store.claim_run(config.trial_id, {"heartbeat_at": "2999-01-01T00:00:00+00:00"}, driver="other", stale_before="2000-01-01")
    store.close()
    result = invoke("train", "--set", "dataset=synthetic", "--set", "width=8", "--set", "epochs=1")
    assert result.exit_code == 1 and "running in another live grid" in result.output and "epoch" not in result.output
    run = open_store(str(store_path)).get_run(config.trial_id)
    assert (run["status"], run["driver"], run["attempts"]) == ("running", "other", 1)


def test_unreachable_mongodb_fails_fast_with_the_password_masked():
    start = time.monotonic()
    result = invoke("--mongo-uri", "mongodb://alice:s3cret@127.0.0.1:1/bench?serverSelectionTimeoutMS=500", "store", "info")
    assert result.exit_code == 1
    assert time.monotonic() - start < 15
    assert "s3cret" not in result.output and "***" in result.output


@pytest.mark.ray
def test_ray_grid_runs_trials_side_by_side_and_resumes(spec, store_path, tmp_path):
    result = invoke("grid", str(spec), "--cpus-per-trial", "1", "--max-concurrent", "2", "--reports-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "done: 4 completed" in result.output
    store = open_store(str(store_path))
    runs = store.find_runs({"study": "tiny"})
    assert {r["status"] for r in runs} == {"completed"} and len(runs) == 4
    assert all(len(store.get_metrics(r["_id"])) == 2 for r in runs)
    assert (tmp_path / "tiny.md").exists()
    result = invoke("grid", str(spec), "--reports-dir", str(tmp_path))
    assert result.exit_code == 0 and "0 to run" in result.output


def test_zoo_plots_schedules(tmp_path):
    out = tmp_path / "lr.png"
    result = invoke("zoo", "schedules", "--plot", "sgdr", "--plot", "one-cycle", "--epochs", "7", "--steps-per-epoch", "10",
                    "--set", "lr=0.1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"
    bad = invoke("zoo", "schedules", "--plot", "sgdr", "--set", "sgdr_t_mult=0.5", "--out", str(out))
    assert bad.exit_code == 1 and "sgdr_t_mult must be a number ≥ 1" in bad.output and "Traceback" not in bad.output
    unknown = invoke("zoo", "schedules", "--plot", "triangle")
    assert unknown.exit_code == 1 and "Valid schedule names" in unknown.output
    wrong_kind = invoke("zoo", "norms", "--plot", "sgdr")
    assert wrong_kind.exit_code == 1 and "bench zoo schedules --plot" in wrong_kind.output


@pytest.mark.parametrize("before", [(), ("--store", "{store}"), ("--store={store}", "--plugin", "{plugin}")], ids=["plain", "store", "store+plugin"])
def test_the_grid_records_its_command_line_with_the_options_before_grid(before, spec, tmp_path, monkeypatch):
    from bench.zoo import plugins

    monkeypatch.setattr(plugins, "_LOADED", dict(plugins._LOADED))  # the plugin is forgotten after the test
    plugin = tmp_path / "noplugin.py"
    plugin.write_text("")  # a plugin that registers nothing
    store = tmp_path / "elsewhere.sqlite"
    args = [a.format(store=store, plugin=plugin) for a in before]
    args += ["grid", str(spec), "--profile", "quick", "--executor", "local", "--no-report"]
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    stored = open_store(str(store) if before else None)
    command = stored.get_study("tiny@quick")["grids"][-1]["command"]
    assert command == "bench " + " ".join(args)
