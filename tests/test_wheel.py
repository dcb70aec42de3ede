"""The package as users install it: from a wheel, outside the checkout. The registries
read the zoo's declarations from its source files, so the wheel must carry them and a
trial must build from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

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
def installed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    if build.returncode:
        pytest.skip(f"cannot build a wheel here (no build backend reachable): {build.stderr[-300:]}")
    wheel = next(out.glob("bench-*.whl"))
    site = out / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return site


def test_a_trial_builds_from_the_installed_wheel(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    proc = subprocess.run([sys.executable, "-c", CHECK.format(site=str(installed))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trial_id, model = proc.stdout.split()
    from bench.spec import TrialConfig

    assert trial_id == TrialConfig(norm="gn", norm_groups=4, optimizer="adamw").trial_id
    assert model == "Sequential"
