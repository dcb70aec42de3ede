"""Query safety and credentials at the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mongomock
import pytest
from typer.testing import CliRunner

import bench.store
from bench.cli import app
from bench.store import EmbeddedStore, MongoStore

runner = CliRunner()
URI = "mongodb://alice:s3cret%21@db.example.org:27017/results?authSource=admin"


@pytest.mark.parametrize(
    ("filter_json", "operator"),
    [
        ('{"$where": "this.status == \'completed\'"}', "$where"),
        ('{"config.lr": {"$function": {"body": "function() {return true}", "args": [], "lang": "js"}}}', "$function"),
        ('{"$or": [{"status": "failed"}, {"summary": {"$accumulator": {"init": "function() {}"}}}]}', "$accumulator"),
        ('{"$out": "stolen"}', "$out"),
        ('{"$and": [{"status": "completed"}, {"$merge": {"into": "runs"}}]}', "$merge"),
    ],
)
def test_results_query_refuses_javascript_and_write_stages(tmp_path: Path, filter_json: str, operator: str) -> None:
    path = tmp_path / "s.sqlite"
    with EmbeddedStore(path) as store:
        store.upsert_run("r", {"status": "completed"})
    result = runner.invoke(app, ["--store", str(path), "results", "query", filter_json])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"The operator '{operator}' is refused for safety" in text
    assert "server-side JavaScript" in text and "Traceback" not in result.output
    with EmbeddedStore(path) as store:
        assert store.find_runs() == [{"_id": "r", "status": "completed", "schema_version": store.get_run("r")["schema_version"]}]


def test_results_query_still_answers_safe_filters(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with EmbeddedStore(path) as store:
        store.upsert_run("r", {"status": "completed", "config": {"norm": "gn"}})
    result = runner.invoke(app, ["--store", str(path), "results", "query", '{"config.norm": {"$in": ["gn"]}}', "--format", "csv"])
    assert result.exit_code == 0 and "gn" in result.output


def test_credentials_are_never_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = mongomock.MongoClient()
    journal = tmp_path / "journal.jsonl"

    def open_store(uri: Any = None, **_options: Any) -> MongoStore:
        return MongoStore(URI, client=client, journal=journal)

    monkeypatch.setattr(bench.store, "open_store", open_store)
    seeded = open_store()
    seeded.upsert_run("r", {"status": "running", "heartbeat_at": "2020-01-01T00:00:00+00:00", "error": f"failed on {URI}"}, study="s")
    outputs = []
    for args in (["store", "info"], ["store", "status"], ["store", "sync"], ["store", "export", str(tmp_path / "e.jsonl")],
                 ["results", "show", "r"], ["results", "ls", "--format", "json"]):
        result = runner.invoke(app, ["--mongo-uri", URI, *args])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    text = "".join(outputs) + (tmp_path / "e.jsonl").read_text() + str(journal)
    assert "s3cret" not in text and "alice:***@db.example.org" in text
