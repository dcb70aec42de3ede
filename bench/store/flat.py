"""Flat rows: what the analysis frames read, kept beside the JSON documents.

A study's DataFrame has one row per run (``run_id``, ``status``, …, every config,
derived and summary field, ``error``) and its per-epoch frame one row per metrics
document. Building them from JSON costs a ``json.loads`` and a Python dict per row and
then pandas' inference over millions of boxed values: 11 s for 100,000 runs. The
embedded store therefore keeps, for every run and metrics document, its *flat row*
encoded for a columnar read, written in the same transaction as the document (the
documents stay the source of truth; a flat row is always derived from one):

* ``shape``: the row's keys, in order, each with the kind of its value (``i`` integer,
  ``f`` float, ``b`` boolean, ``n`` null, ``s`` text, ``t`` a list shown as a tuple,
  ``j`` any other JSON value, ``r`` the row's run id), interned in a table of shapes:
  the runs of a study share a handful;
* ``nums``: the ``i``, ``f`` and ``b`` values packed as 8-byte numbers, and each text
  (``s``) as the 8-byte id of its entry in a table of texts (configs repeat a few names),
  in order;
* ``text``: a JSON list of the ``t`` and ``j`` values, in order (NULL when there are none).

:func:`frame_from_packed` turns such rows into the DataFrame pandas would build from
the row dicts (same columns in first-seen order, same dtypes, same values): numbers
come out of one ``numpy.frombuffer`` per shape, columns of one numeric kind become
numpy arrays directly, and only the other columns go through pandas' inference.

Change :func:`run_row` or the encoding and bump :data:`FLAT_VERSION`: stores rebuild
their flat rows from the documents when they open.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd

FLAT_VERSION = 3
"""Version of :func:`run_row`, of the encoding and of the flat tables' layout; a store
whose flat rows were written by another version rebuilds them."""

RUN_COLUMNS = ("run_id", "status", "study", "attempts", "started_at", "finished_at")

#: Top-level run fields copied into the flat table's small ``keys`` document, so filters on
#: them (a study's runs) are answered without parsing whole run documents.
KEY_FIELDS = ("_id", "study", "status")

_NUMERIC = NUMERIC_KINDS = frozenset("ifbs")  # packed in nums (a text by its id)
_TEXTUAL = frozenset("tj")  # in the JSON text


def run_row(run: Mapping[str, Any]) -> dict[str, Any]:
    """One run document as a flat dict: a row of the runs DataFrame."""
    row: dict[str, Any] = {
        "run_id": run.get("_id"),
        "status": run.get("status"),
        "study": ",".join(run.get("study") or []),
        "attempts": run.get("attempts"),
        "started_at": run.get("started_at"),
        "finished_at": run.get("finished_at"),
    }
    row.update({k: _cell(v) for k, v in (run.get("config") or {}).items()})
    row.update({k: v for k, v in (run.get("derived") or {}).items()})
    row.update({k: v for k, v in (run.get("summary") or {}).items() if k not in row})
    error = run.get("error")
    row["error"] = error.strip().splitlines()[-1] if isinstance(error, str) and error.strip() else None
    return row


def _cell(value: Any) -> Any:
    """Lists (e.g. lr_milestones) become tuples so the column stays hashable for groupby."""
    return tuple(value) if isinstance(value, list) else value


def metric_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """One metrics document as a row of the per-epoch DataFrame."""
    return {k: v for k, v in doc.items() if k != "_id"}


def _kind(value: Any, run_id: str | None, key: str) -> str:
    kind = type(value)
    if kind is float:
        return "f"
    if kind is int:
        return "i" if -(2**63) <= value < 2**63 else "j"
    if kind is str:
        return "r" if key == "run_id" and value == run_id else "s"
    if value is None:
        return "n"
    if kind is bool:
        return "b"
    if kind is tuple:
        return "t"
    return "j"


#: (keys, kinds) → (shape, struct format of nums): rows of a study share a few.
_LAYOUTS: dict[tuple[tuple[str, ...], tuple[str, ...]], tuple[str, struct.Struct]] = {}


def _layout(keys: tuple[str, ...], kinds: tuple[str, ...]) -> tuple[str, struct.Struct]:
    found = _LAYOUTS.get((keys, kinds))
    if found is None:
        spec = json.dumps([[k, kind] for k, kind in zip(keys, kinds)], ensure_ascii=False, separators=(",", ":"))
        fmt = "<" + "".join("d" if kind == "f" else "q" for kind in kinds if kind in _NUMERIC)
        if len(_LAYOUTS) > 4096:
            _LAYOUTS.clear()
        found = _LAYOUTS[(keys, kinds)] = (spec, struct.Struct(fmt))
    return found


def encode(row: Mapping[str, Any], text_id: Callable[[str], int], run_id: str | None = None) -> tuple[str, bytes, str | None]:
    """``(shape, nums, text)`` of a flat row (see the module docstring); ``text_id``: a
    text's id in the store's table of texts; ``run_id``: the id a ``run_id`` value is read
    back from (``r``), instead of being stored."""
    keys = tuple(row)
    values = list(row.values())
    kinds = tuple([_kind(v, run_id, k) for k, v in zip(keys, values)])
    spec, packer = _layout(keys, kinds)
    numbers: list[Any] = []
    text: list[Any] = []
    for kind, value in zip(kinds, values):
        if kind == "f" or kind == "i" or kind == "b":
            numbers.append(value)
        elif kind == "s":
            numbers.append(text_id(value))
        elif kind == "t":
            text.append(list(value))
        elif kind == "j":
            text.append(value)
    return spec, packer.pack(*numbers), json.dumps(text, ensure_ascii=False, separators=(",", ":")) if text else None


def runs_frame_from_docs(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The runs DataFrame built from whole documents (stores without flat rows)."""
    import pandas as pd

    frame = pd.DataFrame([run_row(run) for run in runs])
    if frame.empty:
        return pd.DataFrame(columns=run_frame_columns())
    return frame


def run_frame_columns() -> list[str]:
    """The columns of a runs DataFrame without rows."""
    from bench.spec import CONFIG_FIELDS

    return [*RUN_COLUMNS, *CONFIG_FIELDS]


METRIC_COLUMNS = ("run_id", "epoch")  # of a per-epoch DataFrame without rows


def metrics_frame_from_docs(docs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The per-epoch DataFrame built from whole metrics documents, sorted by run and epoch."""
    import pandas as pd

    frame = pd.DataFrame([metric_row(d) for d in docs])
    if frame.empty:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    return frame.sort_values(list(METRIC_COLUMNS)).reset_index(drop=True)


class Words(NamedTuple):
    """The ``nums`` of many rows as one array of 8-byte words, and each row's first word."""

    words: Any
    starts: Any


def frame_from_packed(
    shape_keys: Sequence[Any],
    blobs: Sequence[bytes] | Words,
    texts: Sequence[str | None],
    run_ids: Any,
    shapes: Mapping[Any, Sequence[tuple[str, str]]],
    texts_of: Callable[[list[int]], Mapping[int, str]],
    empty_columns: Sequence[str],
) -> pd.DataFrame:
    """The DataFrame pandas builds from the flat rows' dicts, given each row's shape,
    ``nums`` (or all of them as one array of 8-byte words and each row's first word),
    ``text`` (None: no JSON values) and run id (a numpy object array or a list);
    ``shapes``: shape → its ``[(key, kind), ...]``; ``texts_of``: text ids → their texts;
    ``empty_columns``: the columns when there is no row."""
    import numpy as np
    import pandas as pd

    n = len(shape_keys)
    if n == 0:
        return pd.DataFrame(columns=list(empty_columns))
    run_ids = np.asarray(run_ids, dtype=object) if not isinstance(run_ids, np.ndarray) else run_ids
    codes: dict[Any, int] = dict.fromkeys(shape_keys)  # in order of first appearance
    for code, key in enumerate(codes):
        codes[key] = code
    if len(codes) == 1:
        groups = [np.arange(n)]
    else:
        ids = np.fromiter(map(codes.__getitem__, shape_keys), dtype=np.int64, count=n)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        groups = np.split(order, np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1)
        groups.sort(key=lambda g: g[0])  # shapes in order of first appearance: pandas' column order
    if isinstance(blobs, Words):
        words, starts = blobs
    else:
        words = np.frombuffer(b"".join(blobs), dtype="<i8")
        starts = None if len(groups) == 1 else np.cumsum(np.fromiter(map(len, blobs), dtype=np.int64, count=n)) // 8
        if starts is not None:
            starts = np.r_[0, starts[:-1]]
    columns: dict[str, list[tuple[Any, str, Any]]] = {}
    for idx in groups:
        spec = shapes[shape_keys[idx[0]]]
        whole = len(idx) == n
        picked = None if whole else idx.tolist()
        numeric = sum(1 for _, kind in spec if kind in _NUMERIC)
        if whole:
            nums = words.reshape(n, numeric)
        else:
            nums = words[starts[idx][:, None] + np.arange(numeric)]
        values: list[Any] = []
        if any(kind in _TEXTUAL for _, kind in spec):
            chosen = texts if whole else [texts[i] for i in picked]
            values = list(zip(*json.loads("[" + ",".join(chosen) + "]")))
        at_num = at_text = 0
        for key, kind in spec:
            if kind in _NUMERIC:
                part: Any = nums[:, at_num]
                at_num += 1
            elif kind in _TEXTUAL:
                part = values[at_text]
                at_text += 1
            elif kind == "r":
                part = run_ids if whole else run_ids[idx]
            else:
                part = None
            columns.setdefault(key, []).append((idx, kind, part))
    strings = _Strings([part for parts in columns.values() for _, kind, part in parts if kind == "s"], texts_of)
    data: dict[str, Any] = {}
    generic: dict[str, Any] = {}
    for key, parts in columns.items():
        kinds = {kind for _, kind, _ in parts}
        covered = sum(len(idx) for idx, _, _ in parts)
        if kinds == {"i"} and covered == n:
            data[key] = _gather(n, np.int64, parts, lambda part: part)
        elif kinds <= {"i", "f", "n"} and kinds & {"i", "f"}:
            out = np.full(n, np.nan)
            for idx, kind, part in parts:
                if kind == "i":
                    out[idx] = part.astype(np.float64)
                elif kind == "f":
                    out[idx] = part.view("<f8")
            data[key] = out
        elif kinds == {"b"} and covered == n:
            data[key] = _gather(n, bool, parts, lambda part: part != 0)
        elif kinds <= {"s", "r", "n"} and kinds & {"s", "r"}:
            data[key] = pd.array(_objects(n, parts, strings), dtype=_text_dtype())
        else:
            data[key] = None
            generic[key] = _objects(n, parts, strings)
    if generic:
        inferred = pd.DataFrame(list(zip(*generic.values())), columns=list(generic))
        for key in generic:
            data[key] = inferred[key]
    return pd.DataFrame(data, copy=False)


_TEXT_DTYPE: list[Any] = []


def _text_dtype() -> Any:
    """The dtype pandas gives a column of texts, some missing (``str`` or ``object``)."""
    if not _TEXT_DTYPE:
        import pandas as pd

        _TEXT_DTYPE.append(pd.DataFrame([{"a": "x"}, {"a": None}, {}]).dtypes.iloc[0])
    return _TEXT_DTYPE[0]


def _gather(n: int, dtype: Any, parts: list[tuple[Any, str, Any]], convert: Callable[[Any], Any]) -> Any:
    import numpy as np

    if len(parts) == 1:  # a copy: the words are a read-only buffer
        return np.array(convert(parts[0][2]), dtype=dtype)
    out = np.empty(n, dtype=dtype)
    for idx, _, part in parts:
        out[idx] = convert(part)
    return out


class _Strings:
    """The texts behind the text ids of some columns, looked up once."""

    def __init__(self, parts: list[Any], texts_of: Callable[[list[int]], Mapping[int, str]]):
        import numpy as np

        self.ids = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
        found = texts_of(self.ids.tolist())
        self.values = np.fromiter((found[i] for i in self.ids.tolist()), dtype=object, count=len(self.ids))

    def __call__(self, part: Any) -> Any:
        import numpy as np

        return self.values[np.searchsorted(self.ids, part)]


def _objects(n: int, parts: Iterable[tuple[Any, str, Any]], strings: _Strings) -> Any:
    """A column of boxed values as pandas gets them from row dicts (NaN where a row lacks the key)."""
    import numpy as np

    out = np.full(n, np.nan, dtype=object)
    for idx, kind, part in parts:
        if kind == "i":
            values: Any = part.tolist()
        elif kind == "f":
            values = part.view("<f8").tolist()
        elif kind == "b":
            values = (part != 0).tolist()
        elif kind == "n":
            values = [None] * len(idx)
        elif kind == "t":
            values = [tuple(v) for v in part]
        elif kind == "s":
            out[idx] = strings(part)
            continue
        elif kind == "r":
            out[idx] = part
            continue
        else:
            values = part
        out[idx] = np.fromiter(values, dtype=object, count=len(idx))
    return out
