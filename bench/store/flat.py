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
  ``j`` any other JSON value, ``r`` the row's run id) and, for a config field at its
  default, that value: ``[key, kind, value]`` (:func:`run_constants`). Shapes are
  interned in a table of shapes: the runs of a study share a handful;
* ``nums``: the ``i``, ``f`` and ``b`` values packed as 8-byte numbers, and each text
  (``s``) as the 8-byte id of its entry in a table of texts (configs repeat a few names),
  in order;
* ``text``: a JSON list of the ``t`` and ``j`` values, in order (NULL when there are none).

:func:`frame_from_packed` turns such rows into the DataFrame pandas would build from
the row dicts (same columns in first-seen order, same dtypes, same values): numbers
come out of one ``numpy.frombuffer`` per shape, columns of one numeric kind become
numpy arrays directly, and only the other columns go through pandas' inference.

A run's metrics rows are kept together, as one :class:`Block` (one row of the embedded
store's ``metrics_flat``): their epochs and shapes as arrays of 8-byte integers, their
``nums`` one after the other, their texts as one JSON list. The per-epoch frame of 10,000
runs × 50 epochs then reads 10,000 rows instead of 500,000 (0.2 s instead of 0.7 s of
SQLite), and a trial's next epoch is appended to its block without decoding it.

A run row holds a value for every config field, most of them at their defaults (the
options of techniques the run does not use: 100 of 135 fields). Those are kept once, in
the shape, not in every row: a row of the benchmark's study is 300 bytes instead of 1.2
kB, and SQLite reads 100,000 of them in about half the time.

Change :func:`run_row` or the encoding and bump :data:`FLAT_VERSION`: stores rebuild
their flat rows from the documents when they open.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import pandas as pd

FLAT_VERSION = 4
"""Version of :func:`run_row`, of the encoding and of the flat tables' layout; a store
whose flat rows were written by another version rebuilds them. 3: a row per metrics
document; 4: a :class:`Block` per run, config defaults in the shapes, environments as
interned texts."""

RUN_COLUMNS = ("run_id", "status", "study", "attempts", "started_at", "finished_at")

#: Top-level run fields copied into the flat table's small ``keys`` document, so filters on
#: them (a study's runs) are answered without parsing whole run documents.
KEY_FIELDS = ("_id", "study", "status")

_NUMERIC = NUMERIC_KINDS = frozenset("ifbs")  # packed in nums (a text by its id)
_TEXTUAL = frozenset("tj")  # in the JSON text
_CONSTANT = frozenset("ifbst")  # kinds a shape may hold as a value


def width(spec: Sequence[Sequence[Any]]) -> int:
    """The 8-byte words of a row of this shape (its ``[key, kind]`` entries that are packed)."""
    return sum(1 for entry in spec if entry[1] in _NUMERIC and len(entry) == 2)


_RUN_CONSTANTS: dict[int, dict[str, Any]] = {}  # by the number of config fields (plugins add some)


def run_constants() -> Mapping[str, Any]:
    """Config field → its default, as a run row holds it (a list as a tuple), with the
    default's text: the values a run row's shape holds instead of the row (defaults never
    change, see ``bench/spec``)."""
    from bench.spec import CONFIG_FIELDS

    fields = len(CONFIG_FIELDS)
    if fields not in _RUN_CONSTANTS:
        defaults = {name: _cell(option.default) for name, option in CONFIG_FIELDS.items()}
        _RUN_CONSTANTS.clear()
        _RUN_CONSTANTS[fields] = {
            name: (value, repr(value)) for name, value in defaults.items() if _kind(value, None, name) in _CONSTANT
        }
    return _RUN_CONSTANTS[fields]


def _fixed(keys: tuple[str, ...], kinds: tuple[str, ...], values: list[Any], constants: Mapping[str, Any]) -> tuple[bool, ...]:
    """Which values are exactly their constant: same type and value, and for a float or a
    tuple the same text (1 is not 1.0 nor True, (1, 2) is not (1.0, 2), -0.0 is not 0.0)."""
    fixed = []
    for key, kind, value in zip(keys, kinds, values):
        constant = constants.get(key)
        fixed.append(
            constant is not None and type(value) is type(constant[0]) and value == constant[0]
            and (kind == "s" or kind == "i" or kind == "b" or repr(value) == constant[1])
        )
    return tuple(fixed) if any(fixed) else ()


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


#: (keys, kinds, which are constants) → (shape, struct format of nums): rows of a study share a few.
_LAYOUTS: dict[tuple[tuple[str, ...], tuple[str, ...], tuple[bool, ...]], tuple[str, struct.Struct]] = {}


def _layout(keys: tuple[str, ...], kinds: tuple[str, ...], fixed: tuple[bool, ...], values: list[Any]) -> tuple[str, struct.Struct]:
    found = _LAYOUTS.get((keys, kinds, fixed))
    if found is None:
        entries = [[k, kind, _json(v)] if c else [k, kind] for k, kind, c, v in zip(keys, kinds, fixed or (False,) * len(keys), values)]
        spec = json.dumps(entries, ensure_ascii=False, separators=(",", ":"))
        fmt = "<" + "".join("d" if entry[1] == "f" else "q" for entry in entries if entry[1] in _NUMERIC and len(entry) == 2)
        if len(_LAYOUTS) > 4096:
            _LAYOUTS.clear()
        found = _LAYOUTS[(keys, kinds, fixed)] = (spec, struct.Struct(fmt))
    return found


def _json(value: Any) -> Any:
    return list(value) if type(value) is tuple else value


def encode(
    row: Mapping[str, Any], text_id: Callable[[str], int], run_id: str | None = None, constants: Mapping[str, Any] | None = None
) -> tuple[str, bytes, str | None]:
    """``(shape, nums, text)`` of a flat row (see the module docstring); ``text_id``: a
    text's id in the store's table of texts; ``run_id``: the id a ``run_id`` value is read
    back from (``r``), instead of being stored; ``constants``: key → (value, its text), the
    value the shape holds when the row's value is exactly it (:func:`run_constants`)."""
    keys = tuple(row)
    values = list(row.values())
    kinds = tuple([_kind(v, run_id, k) for k, v in zip(keys, values)])
    fixed: tuple[bool, ...] = ()
    if constants:
        fixed = _fixed(keys, kinds, values, constants)
    spec, packer = _layout(keys, kinds, fixed, values)
    numbers: list[Any] = []
    text: list[Any] = []
    for kind, value, constant in zip(kinds, values, fixed or (False,) * len(kinds)):
        if constant:
            continue
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


class Block(NamedTuple):
    """A run's metrics rows packed together, ascending by epoch: ``epochs`` and ``shapes``
    (shape ids) as 8-byte little-endian integers, one per row; ``nums``: each row's nums in
    that order; ``texts``: JSON ``[[epoch, text], ...]`` of the rows that have a text (None
    when none has)."""

    epochs: bytes
    shapes: bytes
    nums: bytes
    texts: str | None


#: One metrics row as a block holds it: (epoch, shape id, nums, text).
EpochRow = tuple[int, int, bytes, "str | None"]


def pack_block(rows: Sequence[EpochRow]) -> Block:
    """The block of ``rows`` (ascending by epoch, one per epoch)."""
    epochs, shapes, nums, texts = zip(*rows)
    layout = f"<{len(rows)}q"
    notes = [[epoch, text] for epoch, text in zip(epochs, texts) if text is not None] if texts.count(None) < len(texts) else None
    return Block(struct.pack(layout, *epochs), struct.pack(layout, *shapes), b"".join(nums),
                 json.dumps(notes, ensure_ascii=False, separators=(",", ":")) if notes else None)


def unpack_block(block: Block, widths: Mapping[int, int]) -> list[EpochRow]:
    """The rows of a block; ``widths``: shape id → its number of 8-byte words."""
    count = len(block.epochs) // 8
    layout = f"<{count}q"
    epochs, shapes = struct.unpack(layout, block.epochs), struct.unpack(layout, block.shapes)
    sizes = {shape: 8 * widths[shape] for shape in set(shapes)}
    if len(sizes) == 1:  # one shape: rows of one size
        size = next(iter(sizes.values()))
        ends = list(range(size, size * count + 1, size)) if size else [0] * count
    else:
        ends = list(itertools.accumulate(sizes[shape] for shape in shapes))
    nums = block.nums
    if not block.texts:
        return [(e, s, nums[a:b], None) for e, s, a, b in zip(epochs, shapes, [0, *ends], ends)]
    texts = dict(json.loads(block.texts))
    return [(e, s, nums[a:b], texts.get(e)) for e, s, a, b in zip(epochs, shapes, [0, *ends], ends)]


def merge_block(block: Block | None, rows: Sequence[EpochRow], widths_of: Callable[[set[int]], Mapping[int, int]]) -> Block:
    """``block`` with ``rows`` (ascending by epoch) written into it, a row replacing the
    row of its epoch. Rows that all follow the block's last epoch (a trial's next epoch)
    are appended to its bytes; others (a replay, an import) decode it and merge by epoch
    (``widths_of``: shape ids → their number of words)."""
    if block is None or not block.epochs:
        return pack_block(_by_epoch(rows))
    last = struct.unpack_from("<q", block.epochs, len(block.epochs) - 8)[0]
    epochs = [row[0] for row in rows]
    if epochs[0] > last and all(a < b for a, b in zip(epochs, epochs[1:])):
        added = pack_block(rows)
        texts = block.texts
        if added.texts is not None:
            texts = added.texts if texts is None else texts[:-1] + "," + added.texts[1:]
        return Block(block.epochs + added.epochs, block.shapes + added.shapes, block.nums + added.nums, texts)
    shapes = set(struct.unpack(f"<{len(block.shapes) // 8}q", block.shapes))
    return pack_block(_by_epoch([*unpack_block(block, widths_of(shapes)), *rows]))


def _by_epoch(rows: Iterable[EpochRow]) -> list[EpochRow]:
    """One row per epoch (the last given wins), ascending."""
    latest = {row[0]: row for row in rows}
    return [latest[epoch] for epoch in sorted(latest)]


def metrics_frame_from_blocks(
    run_ids: Sequence[str],
    blocks: Sequence[Block],
    shapes_of: Callable[[list[int]], Mapping[Any, Sequence[tuple[str, str]]]],
    texts_of: Callable[[list[int]], Mapping[int, str]],
) -> pd.DataFrame:
    """The per-epoch DataFrame of the runs ``run_ids`` (in that order), each with its
    block: what :func:`metrics_frame_from_docs` builds from their documents. ``blocks``: a
    :class:`Block` per run, or the four fields of them all (``Block(epochs, shapes, nums,
    texts)`` of tuples); ``shapes_of``: shape ids → their ``[(key, kind), ...]``;
    ``texts_of``: text ids → their texts."""
    import numpy as np

    if not run_ids:
        return frame_from_packed([], [], [], [], {}, texts_of, METRIC_COLUMNS)
    epochs, shape_ids, nums, notes = blocks if isinstance(blocks, Block) else zip(*blocks)
    counts = np.fromiter(map(len, epochs), dtype=np.int64, count=len(epochs)) // 8
    shapes = np.frombuffer(b"".join(shape_ids), dtype="<i8")
    words = np.frombuffer(b"".join(nums), dtype="<i8")
    distinct = np.unique(shapes).tolist()
    specs = shapes_of(distinct)
    widths = {shape: width(specs[shape]) for shape in distinct}
    if len(widths) == 1:
        starts = np.arange(len(shapes), dtype=np.int64) * widths[distinct[0]]
    else:
        sizes = np.zeros(len(shapes), dtype=np.int64)
        for shape, size in widths.items():
            sizes[shapes == shape] = size
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
    texts: list[str | None] = []
    if any(notes):
        texts = [None] * len(shapes)
        first = np.r_[0, np.cumsum(counts)[:-1]].tolist()
        for at, run_epochs, note in zip(first, epochs, notes):
            if note:
                ascending = np.frombuffer(run_epochs, dtype="<i8")
                for epoch, text in json.loads(note):
                    texts[at + int(np.searchsorted(ascending, epoch))] = text
    names = np.empty(len(run_ids), dtype=object)
    names[:] = list(run_ids)
    owners = Coded(np.repeat(np.arange(len(names)), counts), names)
    return frame_from_packed(shapes, Words(words, starts), texts, owners, specs, texts_of, METRIC_COLUMNS)


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
    """The DataFrame pandas builds from the flat rows' dicts, given each row's shape (a
    sequence, or a numpy array of shape ids), ``nums`` (or all of them as one array of
    8-byte words and each row's first word),
    ``text`` (None: no JSON values) and run id (a numpy object array, a list, or
    :class:`Coded`);
    ``shapes``: shape → its ``[(key, kind), ...]``; ``texts_of``: text ids → their texts;
    ``empty_columns``: the columns when there is no row."""
    import numpy as np
    import pandas as pd

    n = len(shape_keys)
    if n == 0:
        return pd.DataFrame(columns=list(empty_columns))
    if not isinstance(run_ids, (np.ndarray, Coded)):
        run_ids = np.asarray(run_ids, dtype=object)
    groups: list[Any] = []
    if isinstance(shape_keys, np.ndarray):  # shape ids of many rows: grouped without a loop over rows
        distinct = np.unique(shape_keys)
        single = len(distinct) == 1
        ids = None
        if len(distinct) <= 64:  # a few shapes: a pass each
            groups = [np.flatnonzero(shape_keys == shape) for shape in distinct.tolist()]
        else:
            ids = np.searchsorted(distinct, shape_keys)
    else:
        codes: dict[Any, int] = dict.fromkeys(shape_keys)  # in order of first appearance
        for code, key in enumerate(codes):
            codes[key] = code
        single = len(codes) == 1
        ids = None if single else np.fromiter(map(codes.__getitem__, shape_keys), dtype=np.int64, count=n)
    if single:
        groups = [np.arange(n)]
    elif not groups:
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
    literals: dict[str, int] = {}  # texts a shape holds (constants), by ids of their own
    for idx in groups:
        key = shape_keys[idx[0]]
        spec = shapes[key.item() if isinstance(key, np.generic) else key]
        whole = len(idx) == n
        # every row of one shape: a view of the words; else each column gathered from its rows
        nums = words.reshape(n, width(spec)) if whole else None
        first = None if whole else starts[idx]
        values: list[Any] = []
        if any(entry[1] in _TEXTUAL and len(entry) == 2 for entry in spec):
            chosen = texts if whole else [texts[i] for i in idx.tolist()]
            values = list(zip(*json.loads("[" + ",".join(chosen) + "]")))
        at_num = at_text = 0
        for entry in spec:
            key, kind = entry[0], entry[1]
            if len(entry) > 2:
                part = _constant(kind, entry[2], len(idx), literals)
            elif kind in _NUMERIC:
                part: Any = nums[:, at_num] if nums is not None else words[first + at_num]
                at_num += 1
            elif kind in _TEXTUAL:
                part = values[at_text]
                at_text += 1
            elif kind == "r":
                part = run_ids if whole else Coded(run_ids.codes[idx], run_ids.names) if isinstance(run_ids, Coded) else run_ids[idx]
            else:
                part = None
            columns.setdefault(key, []).append((idx, kind, part))
    if literals:
        texts_of = _with_literals(texts_of, {i: text for text, i in literals.items()})
    strings = _Strings([part for parts in columns.values() for _, kind, part in parts if kind == "s"], texts_of)
    # Numeric and object columns are written straight into one 2-D block per dtype (the
    # frame pandas builds from rows is consolidated too: a frame of a column per block
    # warns "highly fragmented" on every column added once it has 100 of them).
    how: dict[str, str] = {}
    for key, parts in columns.items():
        kinds = {kind for _, kind, _ in parts}
        covered = sum(len(idx) for idx, _, _ in parts)
        if kinds == {"i"} and covered == n:
            how[key] = "int64"
        elif kinds <= {"i", "f", "n"} and kinds & {"i", "f"}:
            how[key] = "float64"
        elif kinds == {"b"} and covered == n:
            how[key] = "bool"
        elif kinds <= {"s", "r", "n"} and kinds & {"s", "r"}:
            how[key] = "text"
        elif kinds <= {"n", "t"} and covered == n:  # nulls and tuples in every row: pandas keeps them as objects
            how[key] = "object"
        else:
            how[key] = "generic"
    blocks = _Blocks(n, how)
    generic: dict[str, Any] = {}
    for key, parts in columns.items():
        kind = how[key]
        if kind == "int64" or kind == "bool":
            out = blocks.row(key)
            for idx, _, part in parts:
                out[slice(None) if len(idx) == n else idx] = part if kind == "int64" else part != 0
        elif kind == "float64":
            out = blocks.row(key)
            if len(parts) != 1 or len(parts[0][0]) != n:
                out[:] = np.nan
            for idx, part_kind, part in parts:
                if part_kind == "i" or part_kind == "f":
                    out[slice(None) if len(idx) == n else idx] = part if part_kind == "i" else part.view("<f8")
        elif kind == "object":
            blocks.row(key)[:] = _objects(n, parts, strings)
        elif kind == "text":
            blocks.add(key, _text_column(n, parts, strings))
        else:
            generic[key] = _objects(n, parts, strings)
    if generic:
        inferred = pd.DataFrame(list(zip(*generic.values())), columns=list(generic))
        for key in generic:
            blocks.add(key, inferred[key].array)
    return blocks.frame(list(columns))


_LITERAL_IDS = -(2**62)  # text ids of the texts shapes hold, below those of any table


def _constant(kind: str, value: Any, count: int, literals: dict[str, int]) -> Any:
    """The part of a column a shape holds as one value, as the rows would give it."""
    import numpy as np

    if kind == "f":
        return np.full(count, value, dtype=np.float64)  # read as words viewed as floats: a no-op view
    if kind == "i" or kind == "b":
        return np.full(count, int(value), dtype=np.int64)
    if kind == "s":
        return np.full(count, literals.setdefault(value, _LITERAL_IDS - len(literals)), dtype=np.int64)
    return [value] * count  # "t": a JSON list per row, made a tuple per row


def _with_literals(texts_of: Callable[[list[int]], Mapping[int, str]], literals: Mapping[int, str]) -> Callable[[list[int]], Mapping[int, str]]:
    def lookup(ids: list[int]) -> Mapping[int, str]:
        found = dict(texts_of([i for i in ids if i not in literals]))
        found.update((i, literals[i]) for i in ids if i in literals)
        return found

    return lookup


class Coded(NamedTuple):
    """Values given as ``names[codes]`` (each row's run id: a run's rows share one)."""

    codes: Any
    names: Any


_TEXT_DTYPE: list[Any] = []
_ARROW_TEXT: list[Any] = []


def _text_dtype() -> Any:
    """The dtype pandas gives a column of texts, some missing (``str`` or ``object``)."""
    if not _TEXT_DTYPE:
        import pandas as pd

        _TEXT_DTYPE.append(pd.DataFrame([{"a": "x"}, {"a": None}, {}]).dtypes.iloc[0])
    return _TEXT_DTYPE[0]


def _arrow_text() -> Any:
    """The Arrow type behind pandas' text dtype when it is Arrow-backed (pandas 3), else None."""
    if not _ARROW_TEXT:
        import pandas as pd

        sample = pd.array(["x"], dtype=_text_dtype())
        _ARROW_TEXT.append(sample._pa_array.type if hasattr(sample, "_pa_array") else None)
    return _ARROW_TEXT[0]


def _text_column(n: int, parts: list[tuple[Any, str, Any]], strings: _Strings) -> Any:
    """A column of texts (``s``: by text id, ``r``: run ids; missing elsewhere) in pandas'
    text dtype. Arrow-backed, it is built from codes into the column's few distinct texts
    (a dictionary array cast to text, in Arrow) rather than converting a Python string per
    row: 50 ms for the run id column of 500,000 epochs, 2 ms this way."""
    import numpy as np
    import pandas as pd

    arrow = _arrow_text()
    if arrow is None:
        return pd.array(_objects(n, parts, strings), dtype=_text_dtype())
    import pyarrow as pa

    codes = np.full(n, -1, dtype=np.int64)
    dictionary = [strings.values]
    size = len(strings.values)
    for idx, kind, part in parts:
        if kind == "s":
            codes[idx] = np.searchsorted(strings.ids, part)
        elif kind == "r":
            names = part.names if isinstance(part, Coded) else np.asarray(part, dtype=object)
            codes[idx] = size + (part.codes if isinstance(part, Coded) else np.arange(len(names)))
            dictionary.append(names)
            size += len(names)
    values = pa.array(np.concatenate(dictionary) if len(dictionary) > 1 else dictionary[0], type=arrow)
    column = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), values).cast(arrow)
    return pd.array(column, dtype=_text_dtype())


class _Blocks:
    """A frame's columns as pandas keeps them: one 2-D array per numpy dtype (a row per
    column, filled in place), and each other array on its own."""

    def __init__(self, n: int, how: Mapping[str, str]):
        import numpy as np

        self.rows: dict[str, tuple[str, int]] = {}
        counts = dict.fromkeys(_BLOCK_DTYPES, 0)
        for key, dtype in how.items():
            if dtype in counts:
                self.rows[key] = (dtype, counts[dtype])
                counts[dtype] += 1
        self.arrays = {dtype: np.empty((count, n), dtype=dtype) for dtype, count in counts.items() if count}
        self.others: dict[str, Any] = {}

    def row(self, key: str) -> Any:
        dtype, at = self.rows[key]
        return self.arrays[dtype][at]

    def add(self, key: str, values: Any) -> None:
        self.others[key] = values

    def frame(self, names: list[str]) -> pd.DataFrame:
        return blocks_frame(names, self.arrays, {key: (dtype, at) for key, (dtype, at) in self.rows.items()}, self.others)


_BLOCK_DTYPES = ("int64", "float64", "bool", "object")


def blocks_frame(names: Sequence[str], arrays: Mapping[Any, Any], rows: Mapping[str, tuple[Any, int]], others: Mapping[str, Any]) -> pd.DataFrame:
    """The DataFrame of columns ``names``: those in ``rows`` are row ``at`` of the 2-D array
    ``arrays[dtype]``, the ``others`` (an array each) as they are. Built from these blocks
    as they are with ``pandas.api.internals.create_dataframe_from_blocks`` (pandas ≥ 3, the
    call pyarrow's ``to_pandas`` makes): the public constructor would copy every column
    once more to consolidate them. With an older pandas, a column at a time (a fragmented
    frame, as before)."""
    import numpy as np
    import pandas as pd

    n = next(iter(arrays.values())).shape[1] if arrays else len(next(iter(others.values())))
    position = {name: at for at, name in enumerate(names)}
    try:
        from pandas.api.internals import create_dataframe_from_blocks
    except ImportError:  # pragma: no cover - pandas < 3
        data = {name: arrays[rows[name][0]][rows[name][1]] if name in rows else others[name] for name in names}
        return pd.DataFrame(data, copy=False)
    placed: dict[Any, list[int]] = {dtype: [0] * len(array) for dtype, array in arrays.items()}
    for name, (dtype, at) in rows.items():
        placed[dtype][at] = position[name]
    blocks = [(array, np.array(placed[dtype], dtype=np.intp)) for dtype, array in arrays.items()]
    for name, values in others.items():
        if isinstance(values, pd.arrays.NumpyExtensionArray):
            values = values.to_numpy()
        blocks.append((values.reshape(1, -1) if isinstance(values, np.ndarray) else values, np.array([position[name]], dtype=np.intp)))
    return create_dataframe_from_blocks(blocks, index=pd.RangeIndex(n), columns=pd.Index(list(names)))


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
            out[idx] = part.names[part.codes] if isinstance(part, Coded) else part
            continue
        else:
            values = part
        out[idx] = np.fromiter(values, dtype=object, count=len(idx))
    return out
