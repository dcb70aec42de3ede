"""Results tied to the code and the data that made them: what a run records in its
``env``, the grid re-running trials whose code or data changed (or keeping them with
``--keep-old-results``), the git lookup of the package's own source tree, and the report
footer's code revisions."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bench import provenance
from bench.cli import app
from bench.grid import GridOptions, plan, run_study
from bench.grid.run import provenance_notes
from bench.provenance import code_fingerprint, source_revision
from bench.report.writer import write_report
from bench.spec import TrialConfig, load_spec
from bench.store import EmbeddedStore
from bench.trial import run_trial
from bench.zoo.datasets import dataset_fingerprint, load_dataset
from bench.zoo.registry import REGISTRIES

runner = CliRunner()
LOCAL = GridOptions(executor="local")

SPEC = """
    name: prov
    base: {dataset: synthetic, arch: cnn, width: 4, epochs: 1, batch_size: 64}
    axes:
      norm: [bn, frn]
    seeds: [0, 1]
"""


def _spec(tmp_path: Path, text: str = SPEC, name: str = "prov.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- (a) what a run records ------------------------------------------------------------------


def test_a_run_records_versions_revision_code_and_data_fingerprints() -> None:
    config = TrialConfig(dataset="synthetic", arch="cnn", width=4, norm="gn", norm_groups=2, epochs=1, batch_size=64)
    env = run_trial(config).env
    assert env["bench"] and env["torch"] and env["timm"] and "torchvision" in env and "ray" in env
    assert "git_commit" in env and "git_dirty" in env
    chosen = {f"{r.kind}:{getattr(config, field)}" for field, r in REGISTRIES.items()
              if getattr(config, field) is not None}  # activation null: the architecture's own
    assert set(env["code"]) == chosen | {"trial"}
    assert {"norm:gn", "arch:cnn", "optimizer:sgd", "dataset:synthetic", "trial"} <= set(env["code"])
    assert env["code"] == code_fingerprint(config)
    assert env["data"] == load_dataset("synthetic").fingerprint == dataset_fingerprint("synthetic")
    assert env["data"] != load_dataset("synthetic", train_subset=100).fingerprint


def test_a_trial_level_technique_enters_the_code_fingerprint_when_switched_on(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    plain = code_fingerprint(TrialConfig())
    assert not any(key.startswith("option:") for key in plain)
    on = code_fingerprint(TrialConfig(lawn=True, svb=True, agc_clip=0.01))
    assert {"option:lawn", "option:svb", "option:agc_clip"} <= set(on)
    assert {k: v for k, v in on.items() if not k.startswith("option:")} == plain
    # an edit to SVB's module changes the fingerprint of the trials that use it, and only theirs
    copy = tmp_path / "svb_copy.py"
    shutil.copy(provenance.module_path("bench.zoo.optimizers.svb"), copy)
    real = provenance.module_files
    monkeypatch.setattr(provenance, "module_files",
                        lambda module: (copy,) if module == "bench.zoo.optimizers.svb" else real(module))
    before = code_fingerprint(TrialConfig(svb=True))
    copy.write_text(copy.read_text() + "\n# edited\n")
    after = code_fingerprint(TrialConfig(svb=True))
    assert before["option:svb"] != after["option:svb"]
    assert {k: v for k, v in before.items() if k != "option:svb"} == {k: v for k, v in after.items() if k != "option:svb"}


# -- (b) code that changed --------------------------------------------------------------------


@pytest.fixture
def frn_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The frn norm's code fingerprint read from a copy of its module that a test edits."""
    copy = tmp_path / "frn_copy.py"
    shutil.copy(provenance.module_path("bench.zoo.norms.frn"), copy)
    real = provenance.module_files
    monkeypatch.setattr(provenance, "module_files", lambda module: (copy,) if module == "bench.zoo.norms.frn" else real(module))
    return copy


def test_trials_made_by_other_code_run_again_unless_kept(tmp_path: Path, frn_copy: Path) -> None:
    spec = load_spec(str(_spec(tmp_path)))
    frn = sorted(t.trial_id for t in spec.expand() if t.norm == "frn")
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        assert run_study(spec, store, LOCAL).counts["completed"] == 4
        assert plan(spec, store).todo == [] and plan(spec, store).changed == []

        frn_copy.write_text(frn_copy.read_text() + "\n# a change of the norm's source\n")
        again = plan(spec, store)
        assert sorted(c.config.trial_id for c in again.changed) == frn
        assert {c.keys for c in again.changed} == {("norm:frn",)}
        assert sorted(t.trial_id for t in again.todo) == frn and len(again.cached) == 2
        assert provenance_notes(again) == ["2 trials were made by other code (norm:frn changed): run again"]

        kept = plan(spec, store, keep_old=True)
        assert kept.todo == [] and len(kept.cached) == 4 and len(kept.changed) == 2
        assert provenance_notes(kept) == ["2 trials were made by other code (norm:frn changed): kept (--keep-old-results)"]

        before = {r["_id"]: r["finished_at"] for r in store.find_runs()}
        outcome = run_study(spec, store, LOCAL)
        assert outcome.counts["completed"] == 2 and outcome.planned == 2
        runs = {r["_id"]: r for r in store.find_runs()}
        assert all(runs[i]["attempts"] == 2 and runs[i]["status"] == "completed" for i in frn)
        assert all(runs[i]["env"]["code"]["norm:frn"] == code_fingerprint(spec.expand()[0].replace(norm="frn"))["norm:frn"]
                   for i in frn)
        assert all(runs[i]["finished_at"] == before[i] and runs[i]["attempts"] == 1 for i in runs if i not in frn)
        assert plan(spec, store).todo == []


def test_the_grid_command_says_which_trials_changed_and_the_flag_keeps_them(tmp_path: Path, frn_copy: Path) -> None:
    path = _spec(tmp_path)
    args = ["grid", str(path), "--executor", "local", "--no-report"]
    assert runner.invoke(app, args).exit_code == 0
    frn_copy.write_text(frn_copy.read_text() + "\n# changed\n")
    kept = runner.invoke(app, [*args, "--keep-old-results"])
    assert kept.exit_code == 0, kept.output
    assert "2 trials were made by other code (norm:frn changed): kept (--keep-old-results)" in kept.output
    assert "4 already finished (answered from the store), 0 to run" in kept.output
    rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert "2 trials were made by other code (norm:frn changed): run again" in rerun.output
    assert "done: 2 completed" in rerun.output


def test_runs_without_fingerprints_are_answered_from_the_store_with_a_note(tmp_path: Path) -> None:
    spec = load_spec(str(_spec(tmp_path)))
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        for config in spec.expand():
            store.upsert_run(config.trial_id, {"status": "completed", "config": config.to_dict(),
                                               "env": {"host": "h", "git_commit": None}})
        grid_plan = plan(spec, store)
        assert grid_plan.todo == [] and len(grid_plan.cached) == 4 and grid_plan.changed == []
        assert len(grid_plan.provenance.unknown) == 4
        assert provenance_notes(grid_plan) == [
            "4 trials answered from the store recorded no code fingerprint (made before runs recorded one): "
            "their code is unknown"
        ]


# -- (c) data that changed --------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format): float32 images or uint8 labels."""
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def _write_mnist(root: Path, nan: bool) -> None:
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 32), ("t10k", 16)):
        images = rng.random((n, 28, 28), dtype=np.float32)
        if nan and prefix == "train":
            images[3, 10, 10] = np.nan
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def test_a_diverged_trial_on_data_that_changed_runs_again(tmp_path: Path) -> None:
    data = tmp_path / "idx"
    _write_mnist(data, nan=True)
    spec = load_spec(str(_spec(tmp_path, """
        name: nan-pixel
        base: {dataset: mnist, arch: cnn, width: 4, epochs: 1, batch_size: 8}
    """, "nan.yaml")))
    options = GridOptions(executor="local", data_dir=str(data))
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        assert run_study(spec, store, options).counts["diverged"] == 1
        (run,) = store.find_runs()
        assert run["summary"]["diverged_step"] == 0
        assert run["env"]["data"] == dataset_fingerprint("mnist", data_dir=data)
        assert plan(spec, store, data_dir=str(data)).todo == []

        _write_mnist(data, nan=False)  # the file is fixed
        assert dataset_fingerprint("mnist", data_dir=data) != run["env"]["data"]
        fixed = plan(spec, store, data_dir=str(data))
        assert [c.keys for c in fixed.changed] == [("data:mnist",)] and len(fixed.todo) == 1
        assert provenance_notes(fixed) == ["1 trial was trained on other data (data:mnist changed): run again"]
        assert plan(spec, store, data_dir=str(data), keep_old=True).todo == []

        elsewhere = tmp_path / "empty"  # data not here: compared with nothing, never downloaded
        unchecked = plan(spec, store, data_dir=str(elsewhere))
        assert unchecked.todo == [] and len(unchecked.provenance.unchecked) == 1 and not elsewhere.exists()
        assert "could not be checked here (mnist: its files are not in the data directory)" in provenance_notes(unchecked)[0]

        assert run_study(spec, store, options).counts["completed"] == 1
        (run,) = store.find_runs()
        assert run["status"] == "completed" and run["env"]["data"] == dataset_fingerprint("mnist", data_dir=data)


# -- (d) the git lookup -----------------------------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_available() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")


def test_a_checkout_records_its_commit_and_whether_the_package_is_dirty(tmp_path: Path, git_available: None) -> None:
    package = tmp_path / "checkout" / "bench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    _git(package.parent, "init", "-q")
    _git(package.parent, "add", ".")
    _git(package.parent, "commit", "-qm", "first")
    commit = _git(package.parent, "rev-parse", "--short=12", "HEAD")
    source_revision.cache_clear()
    assert source_revision(package) == (commit, False)
    (package.parent / "notes.md").write_text("outside the package: not dirty")
    source_revision.cache_clear()
    assert source_revision(package) == (commit, False)
    (package / "__init__.py").write_text("x = 1\n")
    source_revision.cache_clear()
    assert source_revision(package) == (commit, True)
    source_revision.cache_clear()


@pytest.mark.parametrize("ignored", [True, False])
def test_a_package_installed_inside_another_repository_records_no_commit(
    tmp_path: Path, git_available: None, ignored: bool
) -> None:
    outer = tmp_path / "project"
    outer.mkdir()
    (outer / "README.md").write_text("someone else's project")
    if ignored:
        (outer / ".gitignore").write_text(".venv/\n")
    _git(outer, "init", "-q")
    _git(outer, "add", ".")
    _git(outer, "commit", "-qm", "theirs")
    package = outer / ".venv" / "lib" / "python3" / "site-packages" / "bench"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source_revision.cache_clear()
    assert source_revision(package) == (None, None)
    source_revision.cache_clear()
    assert source_revision(tmp_path / "nowhere") == (None, None)
    source_revision.cache_clear()


# -- (e) the report footer --------------------------------------------------------------------


REPORT_SPEC = """
    name: footer
    base: {dataset: synthetic, arch: cnn, width: 8, epochs: 2}
    axes:
      norm: [bn, gn]
    seeds: [0, 1]
    report:
      sections:
        - {kind: pivot, rows: norm, columns: seed}
"""


def _fill(store: EmbeddedStore, spec_path: Path, gn_code: list[str], dirty: list[bool]) -> None:
    configs = load_spec(spec_path).expand()
    gn = iter(zip(gn_code, dirty))
    for config in configs:
        code, is_dirty = next(gn) if config.norm == "gn" else ("b1", False)
        store.upsert_run(config.trial_id, {
            "config": config.to_dict(), "status": "completed", "summary": {"final_val_acc": 0.5, "epochs_done": 2},
            "env": {"torch": "2", "device": "cpu: test", "host": "test", "git_commit": "abc123", "git_dirty": is_dirty,
                    "code": {f"norm:{config.norm}": code, "trial": "t1"}},
        }, study="footer")


def test_the_footer_lists_the_revisions_and_flags_a_mix_of_code_versions(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, REPORT_SPEC, "footer.yaml")
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        _fill(store, spec_path, ["g1", "g2"], [False, True])
        text = write_report(load_spec(spec_path), store, tmp_path / "reports").read_text()
    assert "- Code revisions: `abc123` (3 runs), `abc123` with uncommitted changes (1 run)" in text
    mixed = "Runs made by 2 code versions: `norm:gn` `g1` (1 run), `g2` (1 run)"
    assert f"- **{mixed}**" in text
    assert f"_{mixed} (see Provenance)._" in text  # under the table


def test_runs_of_one_code_version_are_not_flagged(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, REPORT_SPEC, "footer.yaml")
    with EmbeddedStore(tmp_path / "s.sqlite") as store:
        _fill(store, spec_path, ["g1", "g1"], [False, False])
        text = write_report(load_spec(spec_path), store, tmp_path / "reports").read_text()
    assert "- Code revisions: `abc123` (4 runs)" in text and "code versions" not in text


TINY_GRID = """\
name: tiny-grid
description: Two trials.
base: {dataset: synthetic, arch: mlp, width: 8, epochs: 1, batch_size: 32}
axes: {lr: [0.01, 0.1]}
report: {kind: pivot, rows: lr, columns: batch_size}
"""


def test_each_grid_is_recorded_as_it_starts_and_the_report_prints_the_one_that_made_its_runs(tmp_path: Path, monkeypatch) -> None:
    """The command, overrides, spec hash and revision are written before any trial runs;
    a report names the grid of its own profile and overrides, never a later grid's
    command, and a spec given as a path is rebuilt by that path."""
    from bench.grid.options import GridOptions
    from bench.grid.run import run_study
    from bench.provenance import source_revision
    from bench.report.writer import write_report
    from bench.spec import load_spec
    from bench.store import open_store

    monkeypatch.chdir(tmp_path)
    spec_path = tmp_path / "elsewhere" / "tiny-grid.yaml"
    spec_path.parent.mkdir()
    spec_path.write_text(TINY_GRID)
    with open_store(str(tmp_path / "s.sqlite")) as store:
        seen: list[dict] = []

        def progress(plan, phase):  # called after the grid is recorded, before any trial runs
            seen.append(store.get_study(plan.spec.key)["grids"][-1])
            from contextlib import nullcontext

            return nullcontext()

        first = load_spec(str(spec_path))
        run_study(first, store, GridOptions(executor="local"), command="bench grid elsewhere/tiny-grid.yaml",
                  progress_factory=progress)
        second = load_spec(str(spec_path), overrides={"epochs": 2})
        run_study(second, store, GridOptions(executor="local"), command="bench grid elsewhere/tiny-grid.yaml --set epochs=2")
        grids = store.get_study("tiny-grid")["grids"]
        assert [g["command"] for g in grids] == ["bench grid elsewhere/tiny-grid.yaml", "bench grid elsewhere/tiny-grid.yaml --set epochs=2"]
        assert seen == [grids[0]]
        assert grids[0]["overrides"] == {} and grids[1]["overrides"] == {"epochs": 2}
        assert grids[0]["spec_hash"] == first.spec_hash and grids[0]["git_commit"] == source_revision()[0]
        text = write_report(first, store, tmp_path / "reports").read_text()
    assert "- Made by: `bench grid elsewhere/tiny-grid.yaml`, started " in text and "--set epochs=2`" not in text
    assert f"- Rebuild this report: `bench report {spec_path}`" in text
