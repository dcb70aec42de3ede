"""``--where`` conditions of the command line → MongoDB filters.

``norm=gn`` · ``norm=gn,bn`` (any of) · ``norm!=bn`` · ``batch_size<=8`` · ``final_val_acc>0.9``
· ``status=completed`` · ``loss_spikes>0`` · ``summary.steps>=100`` (any dotted path). Config
keys are looked up under ``config.``, the run metrics of :mod:`bench.metrics` under
``summary.`` (``effective_lr``, known before a trial runs, under ``derived.``); values are
read as YAML scalars, numbers as numbers (``1e-1`` too). A value that cannot be compared with
the field (text for a number, an unknown status) and an operator written backwards (``=>``,
``<>``) are refused: a condition that can match nothing is a mistake, not an empty answer.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from bench.errors import QueryError
from bench.store.base import RUN_STATUSES
from bench.metrics import RUN_METRICS, SUMMARY_FIELDS
from bench.spec import CONFIG_FIELDS, OPTIONS

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
    """A YAML scalar; text that reads as a number is a number (YAML 1.1 leaves 1e-1 a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list)):
        return text
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity") else value
        except ValueError:
            return value
    return value


def _kind(key: str) -> str:
    """What a key's values are: number, bool, text, status, or any (a dotted path)."""
    if key == "status":
        return "status"
    if key in CONFIG_FIELDS:
        kind = OPTIONS[key].type
        return {int: "number", float: "number", bool: "bool", str: "text"}.get(kind, "any")
    if key in RUN_METRICS or key == "attempts":
        return "number"
    return "text" if key in RUN_KEYS or key in SUMMARY_FIELDS else "any"


def _check_value(text: str, key: str, op: str, raw: str) -> Any:
    """The value ``raw`` as the field ``key`` holds it; one it can never equal or be compared with is refused."""
    value, kind = _value(raw), _kind(key)
    nullable = key in CONFIG_FIELDS and OPTIONS[key].nullable
    if kind == "any" or (value is None and op in ("=", "==", "!=") and kind != "status"):
        return value
    if kind == "text" and not isinstance(value, str):
        return raw  # a name that reads as a number or a boolean
    ok = {
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool) and op in ("=", "==", "!="),
        "text": isinstance(value, str),
        "status": value in RUN_STATUSES and op in ("=", "==", "!="),
    }[kind]
    if ok:
        return value
    what = {
        "number": "a number" + (" (or null)" if nullable else ""),
        "bool": "true or false, with = or !=",
        "text": "text",
        "status": f"one of {', '.join(RUN_STATUSES)}, with = or !=",
    }[kind]
    raise QueryError(
        f"In --where {text!r}: {key} holds {what}, so {value!r} can never match. "
        "Give a value of that kind, e.g. --where 'batch_size<=8' --where 'lr<=1e-1' --where status=completed."
    )


def parse_where(text: str) -> dict[str, Any]:
    """One ``--where`` condition as a MongoDB filter (see the module docstring)."""
    match = _PATTERN.match(text)
    if not match or match.group(3)[:1] in ("<", ">", "=", "!"):
        raise QueryError(
            f"Cannot read the condition {text!r}. Write KEY OP VALUE with OP one of = != < <= > >= "
            "(not => =< <> ==>), e.g. --where norm=gn --where 'batch_size<=8' --where norm=gn,bn."
        )
    key, op, raw = match.groups()
    path = resolve_key(key)
    if "," in raw and op in ("=", "==", "!="):
        values = [_check_value(text, key, op, v.strip()) for v in raw.split(",")]
        return {path: {"$in" if op != "!=" else "$nin": values}}
    value = _check_value(text, key, op, raw)
    return {path: value} if OPERATORS[op] == "$eq" else {path: {OPERATORS[op]: value}}
