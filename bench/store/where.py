"""``--where`` conditions of the command line → MongoDB filters.

``norm=gn`` · ``norm=gn,bn`` (any of) · ``norm!=bn`` · ``batch_size<=8`` · ``final_val_acc>0.9``
· ``status=completed`` · ``loss_spikes>0`` · ``summary.steps>=100`` (any dotted path). Config
keys are looked up under ``config.``, the run metrics of :mod:`bench.metrics` under
``summary.`` (``effective_lr``, known before a trial runs, under ``derived.``); values are
read as YAML scalars.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from bench.errors import QueryError
from bench.metrics import RUN_METRICS, SUMMARY_FIELDS
from bench.spec import CONFIG_FIELDS

RUN_KEYS = {"status": "status", "study": "study", "run_id": "_id", "_id": "_id", "attempts": "attempts"}
OPERATORS = {"<=": "$lte", ">=": "$gte", "!=": "$ne", "==": "$eq", "=": "$eq", "<": "$lt", ">": "$gt"}
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def resolve_key(key: str) -> str:
    """The document path of a ``--where`` key: a run field, ``config.KEY``, a run metric's
    path (``summary.KEY``), ``summary.KEY`` for the other summary fields, or a dotted path as given."""
    if key in RUN_KEYS:
        return RUN_KEYS[key]
    if key in CONFIG_FIELDS:
        return f"config.{key}"
    if key in RUN_METRICS:
        return RUN_METRICS[key].path
    if key in SUMMARY_FIELDS:
        return f"summary.{key}"
    if "." in key:
        return key
    raise QueryError(
        f"Unknown key {key!r} in --where. Valid keys: run fields {', '.join(sorted(RUN_KEYS))}; "
        f"config fields {', '.join(sorted(CONFIG_FIELDS))}; run metrics {', '.join(sorted(RUN_METRICS))}; "
        f"summary fields {', '.join(sorted(SUMMARY_FIELDS))}; or a dotted path such as summary.steps."
    )


def _value(text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) else value


def parse_where(text: str) -> dict[str, Any]:
    match = _PATTERN.match(text)
    if not match:
        raise QueryError(
            f"Cannot read the condition {text!r}. Write KEY OP VALUE with OP one of = != < <= > >=, "
            "e.g. --where norm=gn --where 'batch_size<=8' --where norm=gn,bn."
        )
    key, op, raw = match.groups()
    path = resolve_key(key)
    if "," in raw and op in ("=", "==", "!="):
        values = [_value(v.strip()) for v in raw.split(",")]
        return {path: {"$in" if op != "!=" else "$nin": values}}
    value = _value(raw)
    return {path: value} if OPERATORS[op] == "$eq" else {path: {OPERATORS[op]: value}}
