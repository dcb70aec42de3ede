"""``--where`` conditions of the command line → MongoDB filters.

``norm=gn`` · ``norm=gn,bn`` (any of) · ``norm!=bn`` · ``batch_size<=8`` · ``final_val_acc>0.9``
· ``status=completed`` · ``summary.steps>=100`` (any dotted path). Config keys are looked up
under ``config.``, result metrics under ``summary.``; values are read as YAML scalars.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from bench.errors import QueryError
from bench.spec import CONFIG_FIELDS

RUN_KEYS = {"status": "status", "study": "study", "run_id": "_id", "_id": "_id", "attempts": "attempts"}
SUMMARY_KEYS = (
    "final_val_acc", "best_val_acc", "final_val_loss", "final_train_loss", "final_train_acc", "epochs_done", "steps",
    "train_seconds", "wall_seconds", "samples_per_s", "peak_mem_mb", "diverged_step",
)
DERIVED_KEYS = ("effective_lr",)
OPERATORS = {"<=": "$lte", ">=": "$gte", "!=": "$ne", "==": "$eq", "=": "$eq", "<": "$lt", ">": "$gt"}
_PATTERN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|!=|==|=|<|>)\s*(.*?)\s*$")


def resolve_key(key: str) -> str:
    if key in RUN_KEYS:
        return RUN_KEYS[key]
    if key in CONFIG_FIELDS:
        return f"config.{key}"
    if key in SUMMARY_KEYS:
        return f"summary.{key}"
    if key in DERIVED_KEYS:
        return f"derived.{key}"
    if "." in key:
        return key
    valid = sorted([*RUN_KEYS, *CONFIG_FIELDS, *SUMMARY_KEYS, *DERIVED_KEYS])
    raise QueryError(f"Unknown key {key!r} in --where. Valid keys: {', '.join(valid)}; or a dotted path such as summary.steps.")


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
