"""The package as users install it: from a wheel, outside the checkout.

The registries read the zoo's declarations from their source files, and the studies ship
as package data (the repository's ``ablations/`` becomes ``bench/studies/``), so the wheel
must carry both: a trial builds from it, and the ``bench`` command of a fresh virtual
environment lists and runs the shipped studies and rebuilds a committed report from an
empty directory. The heavy dependencies (torch, Ray) are not downloaded again: the fresh
environment sees this interpreter's site-packages through a ``.pth`` path line.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "ablation-bench"
# What the wheel is built from; the copy keeps the checkout's build/ (which may hold
# files of earlier builds that would leak into the wheel) out of it.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "bench", "ablations")

CHECK = """
import bench, bench.zoo.registry as registry
from bench.spec import TrialConfig
from bench.trial import build_model
from bench.zoo.datasets import dataset_source
assert bench.__file__.startswith({site!r}), bench.__file__
assert len(registry.NORMS) >= 11 and "frn" in registry.NORMS
config = TrialConfig(norm="gn", norm_groups=4, optimizer="adamw")
model = build_model(config, dataset_source("synthetic"))
print(config.trial_id, type(model).__name__)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a clean copy of its sources."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        elif path.exists():
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    if build.returncode:
        pytest.skip(f"cannot build a wheel here (no build backend reachable): {build.stderr[-300:]}")
    return next(out.glob(f"{DISTRIBUTION.replace('-', '_')}-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked into a plain directory (used through PYTHONPATH)."""
    site_dir = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site_dir), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return site_dir


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (no dependencies): this
    interpreter's site-packages are appended by a ``.pth`` path line, which does not run
    the ``.pth`` files there, so an editable install of the checkout stays invisible."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, capture_output=True, timeout=120)
    python = _bin(root, "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    (Path(purelib) / "zz_host_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def _bench(venv: Path, cwd: Path, *args: str, timeout: int = 300) -> str:
    """Runs the environment's ``bench`` command in ``cwd``; its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "PYTHON")) and k != "VIRTUAL_ENV"}
    env.update(PATH=f"{_bin(venv, '')}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([str(_bin(venv, "bench")), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"bench {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_a_trial_builds_from_the_installed_wheel(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.run([sys.executable, "-c", CHECK.format(site=str(installed))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trial_id, model = proc.stdout.split()
    from bench.spec import TrialConfig

    assert trial_id == TrialConfig(norm="gn", norm_groups=4, optimizer="adamw").trial_id
    assert model == "Sequential"


def test_the_wheel_ships_every_study(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if n.startswith("bench/studies/"))
    assert shipped == sorted(p.name for p in (ROOT / "ablations").glob("*.yaml"))
    assert not [n for n in names if n.startswith(("ablations/", "tests/"))], "only the bench package is installed"


def test_the_installed_command_runs_the_shipped_studies(venv, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    where = subprocess.run([str(_bin(venv, "python")), "-c", "import bench; print(bench.__file__)"], cwd=work,
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), f"bench imported from {where}, not from the fresh environment"

    assert _bench(venv, work, "--version").strip() == f"{DISTRIBUTION} 0.1.0"
    listing = _bench(venv, work, "grid", "--list")
    for path in (ROOT / "ablations").glob("*.yaml"):
        assert f" {path.stem} " in listing, listing
    plan = _bench(venv, work, "grid", "norm-vs-batch", "--dry-run", "--quick")
    assert "norm-vs-batch@quick: 10 trials" in plan and "Nothing was run" in plan, plan
    trial = _bench(venv, work, "train", "--set", "dataset=synthetic", "--set", "epochs=1", "--no-save")
    assert "completed" in trial, trial


def test_the_installed_command_rebuilds_a_committed_report(venv, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    _bench(venv, work, "store", "import", str(ROOT / "reports" / "large-batch" / "results.jsonl.gz"))
    _bench(venv, work, "report", "large-batch", "--reports-dir", str(tmp_path / "out"))
    rebuilt = (tmp_path / "out" / "large-batch.md").read_text().splitlines()
    committed = (ROOT / "reports" / "large-batch.md").read_text().splitlines()
    rows = [line for line in committed if line.startswith("| ")]
    assert any(line.startswith("| sgd-momentum |") for line in rows), "the committed report has no pivot table?"
    missing = [line for line in rows if line not in rebuilt]
    assert not missing, "table rows differ from reports/large-batch.md:\n" + "\n".join(missing)


def test_version_outside_an_installed_distribution(monkeypatch):
    """A source tree that is not installed reports the package's own version, marked."""
    from importlib import metadata

    from typer.testing import CliRunner

    import bench
    from bench.cli import app

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{DISTRIBUTION} {bench.__version__} (source tree, not installed")


def test_study_lookup_order(tmp_path, monkeypatch):
    """An explicit path, then ./ablations of the current directory, then the shipped studies."""
    from bench.errors import UnknownNameError
    from bench.spec import list_specs, resolve_spec_path

    monkeypatch.chdir(tmp_path)
    shipped = resolve_spec_path("norm-vs-batch")
    assert shipped.resolve() == (ROOT / "ablations" / "norm-vs-batch.yaml").resolve()

    (tmp_path / "ablations").mkdir()
    text = shipped.read_text()
    (tmp_path / "ablations" / "norm-vs-batch.yaml").write_text(text)
    (tmp_path / "ablations" / "mine.yaml").write_text(text.replace("name: norm-vs-batch", "name: mine"))
    assert resolve_spec_path("norm-vs-batch") == Path("ablations/norm-vs-batch.yaml")
    assert resolve_spec_path("gn-groups").resolve() == (ROOT / "ablations" / "gn-groups.yaml").resolve()
    names = [p.stem for p in list_specs()]
    assert names == sorted(names) and len(names) == len(set(names)) and "mine" in names and "large-batch" in names
    assert dict((p.stem, p) for p in list_specs())["norm-vs-batch"] == Path("ablations/norm-vs-batch.yaml")
    assert resolve_spec_path(str(tmp_path / "ablations" / "mine.yaml")) == tmp_path / "ablations" / "mine.yaml"

    with pytest.raises(UnknownNameError, match=r"looked in ablations/ and .*ablations/"):
        resolve_spec_path("nope")


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_the_example_plugin_runs_from_the_installed_wheel(venv, tmp_path, executor):
    """examples/: a ~30-line plugin (RMSNorm with one option) and a study comparing it with
    bn and gn, run outside the checkout; its report shows it beside them."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work)
    _bench(venv, work, "grid", "rmsnorm-vs-batch.yaml", "--quick", "--executor", executor, "--reports-dir", "out",
           timeout=600)
    report = (work / "out" / "rmsnorm-vs-batch-quick.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| rmsnorm ", "| bn ", "| gn "))]
    assert [r.split("|")[1].strip() for r in rows[:3]] == ["rmsnorm", "bn", "gn"], report
    listed = _bench(venv, work, "results", "ls", "--where", "norm=rmsnorm")
    assert "2 runs" in listed and "completed" in listed
