"""The MongoDB filter subset both result stores accept, and its translation to SQLite.

Filters arrive from users (``--where`` options, report specifications), so they are
validated before any backend sees them: only field comparisons and ``$and``/``$or``
are accepted, server-side JavaScript and write stages are refused outright, and field
paths are restricted to letters, digits and underscores. The embedded store then runs
the same filter as SQL over its JSON documents with MongoDB's matching rules:

* a list-valued field matches when the list itself or any element matches
  (``{"study": "norm-vs-batch"}`` finds runs whose ``study`` list contains it);
* a path through a list of sub-documents (``"a.b"`` over ``{"a": [{"b": 1}]}``)
  looks into every element, and a numeric segment also indexes a list;
* comparisons only match values of the same type bracket: numbers (integers and
  floats together) with numbers, strings with strings, booleans with booleans;
* ``null`` equality matches a missing field, and ``$ne``/``$nin`` match documents
  that lack the field.

Values are always bound as SQL parameters; only validated path names appear in the
SQL text, which keeps queries injection-free and lets SQLite use expression indexes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import QueryError

SUPPORTED_OPERATORS: tuple[str, ...] = (
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$and",
    "$or",
)

#: Operators refused wherever they appear, with the reason.
REFUSED_OPERATORS: dict[str, str] = {
    "$where": "runs server-side JavaScript",
    "$function": "runs server-side JavaScript",
    "$accumulator": "runs server-side JavaScript",
    "$out": "writes to a collection",
    "$merge": "writes to a collection",
}

SUPPORTED_TEXT = (
    "Supported filters: equality on a field, e.g. {'config.batch_size': 128}; the "
    "operators $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin and $exists on a field, e.g. "
    "{'summary.final_val_acc': {'$gte': 0.9}}; and $and/$or over a non-empty list of "
    "filters. Fields are dotted paths of letters, digits and underscores; a list-valued "
    "field such as 'study' matches when any element matches. Values must be strings, "
    "numbers, booleans or null."
)

_SEGMENT = re.compile(r"[A-Za-z0-9_]+")
_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SEGMENTS = 16
_MAX_NESTING = 32
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_NUMBER_TYPES = "('integer', 'real')"

Scalar = None | bool | int | float | str


@dataclass(frozen=True)
class _Cond:
    path: tuple[str, ...]
    op: str
    value: Any


@dataclass(frozen=True)
class _Junction:
    op: str  # "$and" or "$or"
    parts: tuple[_Node, ...]


_Node = _Cond | _Junction


# --------------------------------------------------------------------------- validation


def validate_filter(filter: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check ``filter`` against the supported subset and return a normalized copy.

    The copy holds plain Python values (numpy scalars become numbers) and is safe to
    send to MongoDB. Anything outside the subset raises :class:`QueryError`.
    """
    return _parse(filter)[1]


def _parse(filter: Mapping[str, Any] | None) -> tuple[_Node, dict[str, Any]]:
    _refuse_unsafe(filter, 0)
    if filter is None:
        return _Junction("$and", ()), {}
    return _parse_filter(filter, 0)


def filter_paths(filter: Mapping[str, Any] | None) -> set[tuple[str, ...]]:
    """The field paths a (valid) filter tests, as tuples of segments."""
    paths: set[tuple[str, ...]] = set()
    stack: list[_Node] = [_parse(filter)[0]]
    while stack:
        node = stack.pop()
        if isinstance(node, _Junction):
            stack.extend(node.parts)
        else:
            paths.add(node.path)
    return paths


def _refuse_unsafe(obj: Any, depth: int) -> None:
    if depth > 2 * _MAX_NESTING:
        raise QueryError(
            f"The filter is nested more than {_MAX_NESTING} levels deep. {SUPPORTED_TEXT}"
        )
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(key, str) and key in REFUSED_OPERATORS:
                raise QueryError(
                    f"The operator {key!r} is refused for safety: it {REFUSED_OPERATORS[key]}. "
                    "The result store never accepts server-side JavaScript ($where, "
                    "$function, $accumulator) or write stages ($out, $merge) anywhere in a "
                    f"filter. {SUPPORTED_TEXT}"
                )
            _refuse_unsafe(value, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _refuse_unsafe(value, depth + 1)


def _parse_filter(filter: Any, depth: int) -> tuple[_Node, dict[str, Any]]:
    if not isinstance(filter, Mapping):
        raise QueryError(
            f"A filter must be a mapping of field paths to conditions, got "
            f"{type(filter).__name__} {filter!r}. {SUPPORTED_TEXT}"
        )
    if depth > _MAX_NESTING:
        raise QueryError(f"The filter nests $and/$or more than {_MAX_NESTING} levels deep.")
    parts: list[_Node] = []
    normalized: dict[str, Any] = {}
    for key, value in filter.items():
        if not isinstance(key, str):
            raise QueryError(f"Filter keys must be strings, got {key!r}. {SUPPORTED_TEXT}")
        if key.startswith("$"):
            if key not in ("$and", "$or"):
                raise QueryError(f"Unsupported query operator {key!r}. {SUPPORTED_TEXT}")
            if not isinstance(value, (list, tuple)) or not value:
                raise QueryError(
                    f"{key} takes a non-empty list of filters, got {value!r}. {SUPPORTED_TEXT}"
                )
            subs = [_parse_filter(sub, depth + 1) for sub in value]
            parts.append(_Junction(key, tuple(node for node, _ in subs)))
            normalized[key] = [norm for _, norm in subs]
        else:
            path = _parse_path(key)
            node, norm = _parse_condition(path, key, value)
            parts.append(node)
            normalized[key] = norm
    node = parts[0] if len(parts) == 1 else _Junction("$and", tuple(parts))
    return node, normalized


def _parse_path(key: str) -> tuple[str, ...]:
    segments = tuple(key.split("."))
    if len(segments) > _MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
        raise QueryError(
            f"Invalid field path {key!r}: a path is 1 to {_MAX_SEGMENTS} dot-separated names "
            "made of letters, digits and underscores, such as 'config.batch_size' or "
            f"'summary.final_val_acc'. {SUPPORTED_TEXT}"
        )
    return segments


def _parse_condition(path: tuple[str, ...], key: str, value: Any) -> tuple[_Node, Any]:
    if isinstance(value, Mapping):
        ops = list(value)
        if not ops:
            raise QueryError(
                f"Field {key!r} is compared with an empty document {{}}, which is not "
                f"supported. {SUPPORTED_TEXT}"
            )
        dollar = [op for op in ops if isinstance(op, str) and op.startswith("$")]
        if not dollar:
            raise QueryError(
                f"Field {key!r} is compared with a whole sub-document, which is not "
                f"supported; compare its fields with dotted paths instead (e.g. "
                f"'{key}.name'). {SUPPORTED_TEXT}"
            )
        if len(dollar) != len(ops):
            raise QueryError(
                f"Field {key!r} mixes operators and plain keys in {value!r}; use only "
                f"operators there. {SUPPORTED_TEXT}"
            )
        conds: list[_Node] = []
        normalized: dict[str, Any] = {}
        for op, operand in value.items():
            conds.append(_Cond(path, op, _parse_operand(key, op, operand)))
            normalized[op] = conds[-1].value  # type: ignore[union-attr]
        node = conds[0] if len(conds) == 1 else _Junction("$and", tuple(conds))
        return node, normalized
    if isinstance(value, (list, tuple, set, frozenset)):
        raise QueryError(
            f"Field {key!r} is compared with a whole list {value!r}, which is not "
            "supported; to match any of several values use {'$in': [...]}, and to test "
            f"membership in a list-valued field compare with one value. {SUPPORTED_TEXT}"
        )
    scalar = _scalar(key, "equality", value)
    return _Cond(path, "$eq", scalar), scalar


def _parse_operand(key: str, op: str, operand: Any) -> Any:
    if op in ("$eq", "$ne"):
        return _scalar(key, op, operand)
    if op in _COMPARISONS:
        value = _scalar(key, op, operand)
        if value is None:
            raise QueryError(
                f"Field {key!r}: {op} needs a string, number or boolean, not null; to "
                f"find missing or null values use {{'{key}': None}} or $exists. {SUPPORTED_TEXT}"
            )
        return value
    if op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple, set, frozenset)):
            raise QueryError(
                f"Field {key!r}: {op} takes a list of values, got {operand!r}. {SUPPORTED_TEXT}"
            )
        return [_scalar(key, op, v) for v in operand]
    if op == "$exists":
        if not isinstance(operand, bool):
            raise QueryError(
                f"Field {key!r}: $exists takes true or false, got {operand!r}. {SUPPORTED_TEXT}"
            )
        return operand
    if op in ("$and", "$or"):
        raise QueryError(
            f"{op} is only allowed at the top of a filter or inside another $and/$or, not "
            f"under the field {key!r}. {SUPPORTED_TEXT}"
        )
    raise QueryError(f"Unsupported query operator {op!r} on field {key!r}. {SUPPORTED_TEXT}")


def _scalar(key: str, op: str, value: Any, converted: bool = False) -> Scalar:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise QueryError(
                f"Field {key!r}: the {op} value {value!r} is not valid UTF-8 text."
            ) from None
        return str.__str__(value)
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise QueryError(
                f"Field {key!r}: the {op} value {value} is outside the 64-bit integer range."
            )
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise QueryError(
                f"Field {key!r}: the {op} value is NaN; stored documents never hold NaN "
                f"(it is saved as null), so compare with None instead. {SUPPORTED_TEXT}"
            )
        return float(value)
    item = getattr(value, "item", None)
    if not converted and callable(item) and not isinstance(value, (Mapping, list, tuple)):
        try:
            plain = item()
        except Exception:
            plain = value
        if plain is not value:
            return _scalar(key, op, plain, converted=True)
    raise QueryError(
        f"Field {key!r}: the {op} value {value!r} ({type(value).__name__}) is not "
        f"supported. {SUPPORTED_TEXT}"
    )


# --------------------------------------------------------------------------- SQL


def json_path(path: str | tuple[str, ...]) -> str:
    """SQLite JSON path for a validated dotted field path (``config.lr`` → ``$.config.lr``)."""
    segments = _parse_path(path) if isinstance(path, str) else path
    return "$." + ".".join(segments)


def compile_filter(
    filter: Mapping[str, Any] | None, column: str = "doc", id_column: str | None = "id"
) -> tuple[str, list]:
    """Translate ``filter`` into a SQLite ``WHERE`` expression over the JSON ``column``.

    Returns ``(sql, params)``: every value is a ``?`` parameter; only validated path
    names are part of the SQL text. ``id_column`` names the text primary-key column that
    mirrors ``_id``: equality and ``$in`` on ``_id`` use it (and its index) directly.
    """
    for name in (column, id_column or "id"):
        if not _COLUMN.fullmatch(name):
            raise QueryError(f"Invalid column name {name!r}.")
    node, _ = _parse(filter)
    params: list[Any] = []
    sql = _compile(node, column, params, id_column)
    return sql, params


_Pred = Callable[[str, str], tuple[str, list]]


@dataclass(frozen=True)
class _Predicate:
    """A test on one candidate value: ``sql(value_expr, type_expr)``.

    ``type_expr`` is the JSON type (``integer``, ``text``, ``array``…) or SQL NULL for a
    missing value; ``matches_missing`` says whether a missing value can satisfy it.
    """

    sql: _Pred
    matches_missing: bool


def _compile(node: _Node, column: str, params: list, id_column: str | None = None) -> str:
    if isinstance(node, _Junction):
        if not node.parts:
            return "1"
        joiner = " AND " if node.op == "$and" else " OR "
        return "(" + joiner.join(_compile(part, column, params, id_column) for part in node.parts) + ")"
    op, value = node.op, node.value
    if id_column and node.path == ("_id",) and op in ("$eq", "$in"):
        # Stored ids are always text: only text values can match.
        ids = [v for v in ([value] if op == "$eq" else value) if isinstance(v, str)]
        if not ids:
            return "0"
        params.extend(ids)
        return f"{id_column} = ?" if len(ids) == 1 else f"{id_column} IN ({', '.join('?' * len(ids))})"
    if op in ("$eq", "$ne", "$in", "$nin"):
        values = [value] if op in ("$eq", "$ne") else value
        if not values:
            return "0" if op == "$in" else "1"
        sql = _positive(node.path, _equality(values), column, params)
        return sql if op in ("$eq", "$in") else f"(NOT coalesce({sql}, 0))"
    if op in _COMPARISONS:
        return _positive(node.path, _comparison(_COMPARISONS[op], value), column, params)
    if op == "$exists":
        exists = _positive(node.path, _EXISTS, column, params, expand_elements=False)
        return exists if value else f"(NOT coalesce({exists}, 0))"
    raise QueryError(f"Unsupported query operator {op!r}. {SUPPORTED_TEXT}")  # unreachable


def _equality(values: list[Scalar]) -> _Predicate:
    nulls = any(v is None for v in values)
    bools = {v for v in values if isinstance(v, bool)}
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    strings = [v for v in values if isinstance(v, str)]

    def sql(vx: str, tx: str) -> tuple[str, list]:
        terms: list[str] = []
        params: list[Any] = []
        for group, types in ((strings, "= 'text'"), (numbers, f"IN {_NUMBER_TYPES}")):
            # "+" keeps SQLite from answering the value test with the (unselective) index
            # on the value's type: the index on the value itself must be used.
            if len(group) == 1:
                terms.append(f"({vx} = ? AND +{tx} {types})")
            elif group:
                terms.append(f"({vx} IN ({', '.join('?' * len(group))}) AND +{tx} {types})")
            params.extend(group)
        for flag in sorted(bools):
            terms.append(f"{tx} = '{'true' if flag else 'false'}'")
        if nulls:
            terms.append(f"({tx} IS NULL OR {tx} = 'null')")
        return ("(" + " OR ".join(terms) + ")" if len(terms) > 1 else terms[0]), params

    return _Predicate(sql, nulls)


def _comparison(sql_op: str, value: Scalar) -> _Predicate:
    bound: Scalar
    if isinstance(value, bool):
        types, bound = "IN ('true', 'false')", int(value)
    elif isinstance(value, str):
        types, bound = "= 'text'", value
    else:
        types, bound = f"IN {_NUMBER_TYPES}", value

    def sql(vx: str, tx: str) -> tuple[str, list]:
        return f"({vx} {sql_op} ? AND +{tx} {types})", [bound]

    return _Predicate(sql, False)


_EXISTS = _Predicate(lambda vx, tx: (f"{tx} IS NOT NULL", []), False)


def _positive(
    path: tuple[str, ...],
    pred: _Predicate,
    column: str,
    params: list,
    *,
    expand_elements: bool = True,
) -> str:
    """SQL that is true when some value the path resolves to satisfies ``pred``.

    The fast form reads the value at the path directly (plus the elements when it is a
    list); it is exact unless a proper prefix of the path is a list, in which case the
    recursive walk in :func:`_walk` resolves the path the way MongoDB does.
    """
    p = json_path(path)
    vx, tx = f"json_extract({column}, '{p}')", f"json_type({column}, '{p}')"
    direct, direct_params = pred.sql(vx, tx)
    fast, fast_params = direct, list(direct_params)
    if expand_elements:
        elem, elem_params = pred.sql("je.value", "je.type")
        fast = (
            f"({direct} OR ({tx} = 'array' AND EXISTS (SELECT 1 FROM json_each({column}, '{p}')"
            f" AS je WHERE {elem})))"
        )
        fast_params += elem_params
    if len(path) == 1:
        params.extend(fast_params)
        return fast
    prefix = " OR ".join(
        f"json_type({column}, '{json_path(path[:i])}') = 'array'" for i in range(1, len(path))
    )
    slow, slow_params = _walk(path, pred, column, expand_elements)
    if pred.matches_missing:
        params.extend(slow_params + fast_params)
        return f"(CASE WHEN ({prefix}) THEN {slow} ELSE {fast} END)"
    # A value found by the fast form implies no prefix is a list, so the walk only
    # needs to run for documents where one is.
    params.extend(fast_params + slow_params)
    return f"({fast} OR (({prefix}) AND {slow}))"


def _walk(
    path: tuple[str, ...], pred: _Predicate, column: str, expand_elements: bool
) -> tuple[str, list]:
    """Resolve ``path`` with MongoDB's traversal rules in a recursive CTE.

    Rows ``(d, v, t)`` are the values reached after ``d`` segments (``t`` NULL when
    missing). An object steps into its field; a list steps into the field of each
    element that is an object and, for a numeric segment, into that position; a list
    that yields nothing, or a scalar, yields one missing value.
    """
    n = len(path)
    key = "CASE w.d " + " ".join(f"WHEN {i} THEN '$.{s}'" for i, s in enumerate(path)) + " END"
    indexes = [(i, s) for i, s in enumerate(path) if s.isdigit() and len(s) <= 9]
    as_array = "CASE WHEN w.t = 'array' THEN w.v ELSE '[]' END"
    steps = [
        f"SELECT 0, {column}, 'object'",
        f"SELECT w.d + 1, json_extract(w.v, {key}), json_type(w.v, {key}) FROM w "
        f"WHERE w.d < {n} AND w.t = 'object'",
        f"SELECT w.d + 1, json_extract(x.value, {key}), json_type(x.value, {key}) "
        f"FROM w, json_each({as_array}) AS x WHERE w.d < {n} AND w.t = 'array' "
        "AND x.type = 'object'",
    ]
    no_position = ""
    if indexes:
        index = "CASE w.d " + " ".join(f"WHEN {i} THEN '$[{int(s)}]'" for i, s in indexes) + " END"
        steps.append(
            f"SELECT w.d + 1, json_extract(w.v, {index}), json_type(w.v, {index}) FROM w "
            f"WHERE w.d < {n} AND w.t = 'array' AND json_type(w.v, {index}) IS NOT NULL"
        )
        no_position = f" AND json_type({as_array}, {index}) IS NULL"
    steps.append(
        f"SELECT w.d + 1, NULL, NULL FROM w WHERE w.d < {n} AND (w.t IS NULL "
        "OR w.t NOT IN ('object', 'array') OR (w.t = 'array' AND NOT EXISTS "
        f"(SELECT 1 FROM json_each({as_array}) AS y WHERE y.type = 'object'){no_position}))"
    )
    leaf, params = pred.sql("w.v", "w.t")
    if expand_elements:
        elem, elem_params = pred.sql("z.value", "z.type")
        leaf = (
            f"{leaf} OR (w.t = 'array' AND EXISTS (SELECT 1 FROM json_each({as_array}) AS z "
            f"WHERE {elem}))"
        )
        params = params + elem_params
    cte = "\n  UNION ALL ".join(steps)
    sql = (
        f"EXISTS (WITH RECURSIVE w(d, v, t) AS (\n  {cte}\n) "
        f"SELECT 1 FROM w WHERE w.d = {n} AND ({leaf}))"
    )
    return sql, params


# --------------------------------------------------------------------------- sorting


def validate_sort(sort: Any) -> list[tuple[str, int]]:
    """Check a sort specification: ``[(path, 1 | -1), ...]`` (or a mapping in order)."""
    if sort is None:
        return []
    items = list(sort.items()) if isinstance(sort, Mapping) else sort
    if isinstance(items, (str, bytes)) or not isinstance(items, (list, tuple)):
        raise QueryError(
            f"A sort must be a list of (field path, 1 or -1) pairs, got {sort!r}; e.g. "
            "[('summary.final_val_acc', -1)]."
        )
    result: list[tuple[str, int]] = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise QueryError(
                f"Each sort entry must be a (field path, 1 or -1) pair, got {item!r}; e.g. "
                "[('summary.final_val_acc', -1)]."
            )
        key, direction = item
        if not isinstance(key, str):
            raise QueryError(f"A sort field must be a dotted path string, got {key!r}.")
        _parse_path(key)
        if isinstance(direction, bool) or direction not in (1, -1):
            raise QueryError(
                f"Sort direction for {key!r} must be 1 (ascending) or -1 (descending), "
                f"got {direction!r}."
            )
        result.append((key, int(direction)))
    return result


def _bracket(type_expr: str) -> str:
    # MongoDB's cross-type order: null/missing < numbers < strings < objects < lists < booleans.
    return (
        f"CASE {type_expr} WHEN 'integer' THEN 2 WHEN 'real' THEN 2 WHEN 'text' THEN 3 "
        "WHEN 'object' THEN 4 WHEN 'array' THEN 5 WHEN 'false' THEN 6 WHEN 'true' THEN 6 "
        "ELSE 1 END"
    )


def compile_sort(sort: Any, column: str = "doc") -> list[str]:
    """``ORDER BY`` terms for a validated sort, ordering values like MongoDB does.

    Values sort by type bracket first, then by value; a list sorts by its smallest
    element ascending and its largest descending, an empty list before null.
    Sub-documents sort by their JSON text (MongoDB compares them field by field).
    """
    if not _COLUMN.fullmatch(column):
        raise QueryError(f"Invalid column name {column!r}.")
    terms: list[str] = []
    for key, direction in validate_sort(sort):
        p = json_path(key)
        d = "ASC" if direction == 1 else "DESC"
        t = f"json_type({column}, '{p}')"
        elements = (
            f"FROM json_each({column}, '{p}') AS se "
            f"ORDER BY {_bracket('se.type')} {d}, se.value {d} LIMIT 1"
        )
        terms.append(
            f"CASE WHEN {t} = 'array' THEN coalesce((SELECT {_bracket('se.type')} {elements}), 0) "
            f"ELSE {_bracket(t)} END {d}"
        )
        terms.append(
            f"CASE WHEN {t} = 'array' THEN (SELECT se.value {elements}) "
            f"ELSE json_extract({column}, '{p}') END {d}"
        )
    return terms
