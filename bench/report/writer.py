"""Builds a study's report from the store alone and writes it to disk."""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt

from bench.provenance import utcnow
from bench.report.frame import runs_frame
from bench.report.markdown import build_report
from bench.spec import StudySpec

if TYPE_CHECKING:
    from bench.store import ResultStore


def report_path(spec: StudySpec, reports_dir: str | Path = "reports") -> Path:
    """``reports/<study>.md`` for the default profile; other profiles get their own
    file (``reports/<study>-<profile>.md``) so a quick demo never overwrites a full run."""
    name = spec.name if spec.profile == "default" else f"{spec.name}-{spec.profile}"
    return Path(reports_dir) / f"{name}.md"


def _summarize(values: list[str]) -> str:
    counts = Counter(v for v in values if v)
    return "; ".join(f"{v} ({n} runs)" if len(counts) > 1 else v for v, n in counts.most_common())


def write_report(
    spec: StudySpec, store: ResultStore, reports_dir: str | Path = "reports", grid_command: str | None = None
) -> Path:
    """Reads the study's trials from the store (by the ids its spec expands to), writes
    ``<reports_dir>/<study>.md`` and its figures beside it."""
    ids = [t.trial_id for t in spec.expand()]
    runs = []
    for i in range(0, len(ids), 500):
        runs += store.find_runs({"_id": {"$in": ids[i : i + 500]}})
    found = {r["_id"] for r in runs}
    # Trials never started still count: they show as "not run" in their cell.
    runs += [{"_id": t.trial_id, "status": "pending", "config": t.to_dict()} for t in spec.expand() if t.trial_id not in found]
    frame = runs_frame(runs)
    if spec.variants:
        frame["variant"] = frame["run_id"].map(spec.variant_of())
    envs = [r.get("env") or {} for r in runs]
    stored = store.get_study(spec.key) or {}
    versions = _summarize(
        [f"bench {e.get('bench')}, torch {e.get('torch')}, torchvision {e.get('torchvision')}, ray {e.get('ray')}, python {e.get('python')}" for e in envs if e]
    )
    flags = " ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in spec.overrides.items())
    profile = "" if spec.profile == "default" else f" --profile {spec.profile}"
    provenance: dict[str, Any] = {
        "date": utcnow(),
        "store": f"{store.kind} {store.location}",
        "grid_command": grid_command or stored.get("command") or f"bench grid {spec.name}{profile} {flags}".strip(),
        "report_command": f"bench report {spec.name}{profile} {flags}".strip(),
        "spec_hash": spec.spec_hash,
        "devices": _summarize([e.get("device", "") for e in envs]),
        "versions": versions,
        "hosts": _summarize([e.get("host", "") for e in envs]),
    }
    report = build_report(spec.to_dict(), frame, provenance)
    path = report_path(spec, reports_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, figure in report.figures.items():
        target = path.parent / name
        target.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(target)
        plt.close(figure)
    path.write_text(report.text)
    return path
