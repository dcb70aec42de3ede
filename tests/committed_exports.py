"""What a committed export (``reports/<report>/results.jsonl.gz``) holds, read without a store:
shared by the tests that rebuild committed reports and check their trial ids."""

from __future__ import annotations

from pathlib import Path

from bench.store.transfer import read_jsonl


def exported_study(export: Path) -> tuple[str, str]:
    """The name and profile of the study an export holds (its one ``studies`` record)."""
    docs = [doc for collection, doc in read_jsonl(export) if collection == "studies"]
    assert len(docs) == 1, f"{export} holds {len(docs)} studies"
    return docs[0]["name"], docs[0].get("profile") or "default"
