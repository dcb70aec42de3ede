"""Trial ids are a contract with every stored result: they must not change.

``tests/golden/trial-ids.json`` holds the ids of every trial of every shipped study and
profile, computed when the ids were first pinned; the committed exports beside the
reports hold runs whose stored id must be the id their config gives today, and a study
rebuilt from an export must find each of its trials in it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from committed_exports import exported_study  # beside this file

from bench.spec import from_mapping, list_specs, load_spec
from bench.store import EmbeddedStore
from bench.store.transfer import import_jsonl

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((Path(__file__).parent / "golden" / "trial-ids.json").read_text())
EXPORTS = sorted((ROOT / "reports").glob("*/results.jsonl.gz"))


def _study_keys() -> list[tuple[Path, str]]:
    out = []
    for path in list_specs(ROOT / "ablations"):
        doc = yaml.safe_load(path.read_text())
        out += [(path, profile) for profile in ["default", *(doc.get("profiles") or {})]]
    return out


@pytest.mark.parametrize(("path", "profile"), _study_keys(), ids=[f"{p.stem}@{q}" for p, q in _study_keys()])
def test_every_shipped_study_keeps_its_trial_ids(path, profile):
    spec = load_spec(path, profile=profile)
    assert [c.trial_id for c in spec.expand()] == GOLDEN[spec.key]


def test_every_shipped_study_is_pinned():
    assert {load_spec(p, profile=q).key for p, q in _study_keys()} == set(GOLDEN)


@pytest.mark.parametrize("export", EXPORTS, ids=[p.parent.name for p in EXPORTS])
def test_committed_runs_keep_their_ids_and_answer_their_study(export, tmp_path):
    with gzip.open(export, "rt") as f:
        lines = [json.loads(line) for line in f]
    runs = [line["doc"] for line in lines[1:] if line.get("collection") == "runs"]
    assert runs
    for run in runs:
        assert from_mapping(run["config"]).trial_id == run["_id"], run["_id"]
    store = EmbeddedStore(tmp_path / "results.sqlite")
    try:
        import_jsonl(store, export)
        name, profile = exported_study(export)
        spec = load_spec(ROOT / "ablations" / f"{name}.yaml", profile=profile)
        for config in spec.expand():
            run = store.get_run(config.trial_id)
            assert run is not None and run["status"] in ("completed", "diverged"), config.trial_id
    finally:
        store.close()
