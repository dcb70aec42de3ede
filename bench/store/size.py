"""How large a stored document may be, and how an oversized one is cut to fit.

MongoDB refuses documents over 16 MiB, and a trial must never fail because its
traceback, summary or a per-step record grew too large. Every write is therefore
measured in BSON (the server's own encoding, so the embedded store applies exactly
the same rule) and, when it exceeds its limit, cut in a predictable way:

* the fields that identify a document (``_id``, ``run_id``, ``epoch``, ``status``…)
  are never touched;
* the other fields share the space left: small fields stay whole, the largest are cut
  first, each to an equal share of what remains (nested documents recursively);
* text keeps its beginning and its end around a note saying how much was cut;
* a list keeps its first items and ends with a note saying how many were cut;
* types never change (a cut summary is still a document, a cut error still a string),
  so the ``runs`` validator accepts the result.

Long runs do not grow any document: each epoch is its own metrics document and steps
go to buckets of at most :data:`~bench.store.steps.STEPS_PER_BUCKET` steps, each step
capped at :data:`MAX_STEP_BYTES`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import bson

from bench.errors import StoreError

MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
"""BSON bytes one write may carry (a run's fields, a metrics document, a study): a run
document is the sum of a handful of such writes, far below MongoDB's 16 MiB."""

MAX_STEP_BYTES = 4 * 1024
"""BSON bytes of one step's record inside a step bucket."""

#: Fields never cut: they identify the document or are checked by the validator.
IDENTITY_FIELDS: tuple[str, ...] = (
    "_id",
    "run_id",
    "epoch",
    "step",
    "bucket",
    "status",
    "attempts",
    "schema_version",
)

_MIN_SHARE = 64  # bytes: below this a value becomes its note alone


def bson_size(doc: Mapping[str, Any]) -> int:
    """Size of ``doc`` (a sanitized document) in BSON, as MongoDB would store it."""
    return len(bson.encode(doc))


def _size(value: Any) -> int:
    # A value wrapped in a one-field document: 4 (length) + 1 (type) + 2 ("v\0") + 1 (end).
    return len(bson.encode({"v": value})) - 8


def fit(doc: dict[str, Any], limit: int, keep: Collection[str] = IDENTITY_FIELDS) -> dict[str, Any]:
    """``doc`` itself if its BSON encoding is at most ``limit`` bytes, else a cut copy.

    ``doc`` must already be sanitized. Raises :class:`StoreError` only when the fields in
    ``keep`` alone exceed the limit.
    """
    if bson_size(doc) <= limit:
        return doc
    budget = limit
    for _ in range(12):
        cut = _fit_mapping(doc, budget, keep)
        if bson_size(cut) <= limit:
            return cut
        budget = int(budget * 0.8)
    raise StoreError(
        f"A document of {bson_size(doc):,} bytes cannot be cut below {limit:,} bytes: the "
        f"fields that identify it ({', '.join(k for k in keep if k in doc)}) are too large "
        "on their own. Use shorter run ids and study names."
    )


def _fit_value(value: Any, budget: int) -> Any:
    if _size(value) <= budget:
        return value
    if isinstance(value, str):
        return _cut_text(value, budget)
    if isinstance(value, list):
        return _cut_list(value, budget)
    if isinstance(value, dict):
        return _fit_mapping(value, budget, ())
    return value  # numbers, booleans and null are a few bytes


def _fit_mapping(doc: Mapping[str, Any], budget: int, keep: Collection[str]) -> dict[str, Any]:
    overhead = {key: len(key.encode("utf-8")) + 2 for key in doc}
    sizes = {key: _size(value) + overhead[key] for key, value in doc.items()}
    remaining = budget - 5 - sum(sizes[key] for key in doc if key in keep)
    free = sorted((key for key in doc if key not in keep), key=lambda key: (sizes[key], key))
    out = dict(doc)
    for index, key in enumerate(free):
        share = max(remaining // (len(free) - index), 0)
        if sizes[key] <= share:
            remaining -= sizes[key]
            continue
        out[key] = _fit_value(doc[key], max(share - overhead[key], _MIN_SHARE))
        remaining -= _size(out[key]) + overhead[key]
    return out


def _cut_text(text: str, budget: int) -> str:
    data = text.encode("utf-8")
    note = f"\n[... {len(text):,} characters, cut to fit the document size limit ...]\n"
    room = budget - len(note.encode("utf-8")) - 5
    if room <= 0:
        return note.strip()
    head = data[: room // 2].decode("utf-8", "ignore")
    tail = data[len(data) - (room - room // 2) :].decode("utf-8", "ignore")
    return f"{head}{note}{tail}"


def _cut_list(items: list[Any], budget: int) -> list[Any]:
    note_room = 80
    room = budget - 5 - note_room
    kept: list[Any] = []
    used = 0
    for item in items:
        # Each element costs its value plus a type byte and its index as a key.
        cost = _size(item) + len(str(len(kept))) + 2
        if used + cost > room:
            if not kept and isinstance(item, (dict, list, str)):
                kept.append(_fit_value(item, max(room - 10, _MIN_SHARE)))
            break
        kept.append(item)
        used += cost
    cut = len(items) - len(kept)
    if cut:
        kept.append(f"[... {cut:,} more items cut to fit the document size limit ...]")
    return kept
