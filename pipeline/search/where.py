"""A ``where`` predicate checked against an index's columns, then evaluated on Arrow (pyarrow.compute).

``compile_where(text, kinds)`` parses the text (pipeline.search.filter) and checks every column and
literal against ``kinds`` (column name -> kind, from ``column_kinds``) before anything is evaluated;
``Where.evaluate(column)`` then computes a boolean row mask, one column at a time. SQL's three-valued
logic holds: a comparison with a null value is unknown, and a row whose predicate is unknown does not
match (``NOT (x > 1)`` does not match a row where ``x`` is null).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.index.metadata import kind_of
from pipeline.search.filter import (
    Between,
    BoolOp,
    Compare,
    FilterError,
    In,
    IsNull,
    Like,
    Literal,
    Node,
    Not,
    Truth,
    parse,
)


def column_kinds(schema: pa.Schema) -> dict[str, str]:
    return {field.name: kind_of(field.type) for field in schema}


@dataclass(frozen=True)
class Where:
    """A checked predicate: its text, its AST and the columns it reads."""

    text: str
    node: Node
    columns: tuple[str, ...]

    def evaluate(self, column: Callable[[str], pa.ChunkedArray | pa.Array], rows: int) -> np.ndarray:
        """The boolean mask of the rows that match (``rows`` long); ``column(name)`` gives a column's values."""
        cache: dict[str, pa.ChunkedArray | pa.Array] = {}

        def get(name: str) -> pa.ChunkedArray | pa.Array:
            if name not in cache:
                cache[name] = column(name)
            return cache[name]

        result = _evaluate(self.node, get)
        mask = pc.fill_null(result, False)
        if isinstance(mask, pa.ChunkedArray):
            mask = mask.combine_chunks()
        out = mask.to_numpy(zero_copy_only=False).astype(bool, copy=False)
        if len(out) != rows:
            raise FilterError(f"where: evaluated {len(out)} rows, the index has {rows}")
        return out


def compile_where(text: str, kinds: dict[str, str]) -> Where:
    """Parse ``text`` and check it against ``kinds``: unknown columns and type mismatches are FilterErrors."""
    node = parse(text)
    used: list[str] = []
    _check(node, kinds, used)
    return Where(text, node, tuple(dict.fromkeys(used)))


# --- checking ------------------------------------------------------------------------------------


def _kind(column: str, kinds: dict[str, str], used: list[str]) -> str:
    if column not in kinds:
        known = ", ".join(sorted(kinds)[:30])
        raise FilterError(f"where: unknown column {column!r} (columns: {known})")
    used.append(column)
    return kinds[column]


def _check_literal(column: str, kind: str, literal: Literal) -> None:
    if kind == "other":
        raise FilterError(f"where: column {column!r} holds values that cannot be compared (only IS NULL applies)")
    fits = literal.kind == kind or (kind == "timestamp" and literal.kind == "string")
    if not fits:
        raise FilterError(
            f"where: column {column!r} holds {kind} values; {_show(literal)} is a {literal.kind}"
            + (" (quote timestamps: TIMESTAMP '2024-01-31')" if kind == "timestamp" else "")
        )
    if literal.kind == "number" and not (-(2**63) <= literal.value < 2**63 and math.isfinite(literal.value)):
        raise FilterError(f"where: {literal.value!r} does not fit a 64-bit number (column {column!r})")
    if kind == "timestamp" and literal.kind == "string":
        from pipeline.search.filter import parse_timestamp

        parse_timestamp(literal.value)  # a clear error now, not at evaluation


def _show(literal: Literal) -> str:
    return repr(literal.value) if literal.kind != "timestamp" else f"TIMESTAMP '{literal.value.isoformat()}'"


def _check(node: Node, kinds: dict[str, str], used: list[str]) -> None:
    if isinstance(node, BoolOp):
        for operand in node.operands:
            _check(operand, kinds, used)
    elif isinstance(node, Not):
        _check(node.operand, kinds, used)
    elif isinstance(node, IsNull):
        _kind(node.column, kinds, used)
    elif isinstance(node, Truth):
        if _kind(node.column, kinds, used) != "bool":
            raise FilterError(f"where: column {node.column!r} is not boolean: compare it (e.g. {node.column} = …)")
    elif isinstance(node, Like):
        if _kind(node.column, kinds, used) != "string":
            raise FilterError(f"where: LIKE and starts_with apply to string columns; {node.column!r} is not one")
    elif isinstance(node, Compare):
        kind = _kind(node.column, kinds, used)
        _check_literal(node.column, kind, node.value)
        if kind == "bool" and node.op not in ("=", "!="):
            raise FilterError(f"where: boolean column {node.column!r} only takes = and !=")
    elif isinstance(node, In):
        kind = _kind(node.column, kinds, used)
        for literal in node.values:
            _check_literal(node.column, kind, literal)
    elif isinstance(node, Between):
        kind = _kind(node.column, kinds, used)
        _check_literal(node.column, kind, node.low)
        _check_literal(node.column, kind, node.high)


# --- evaluating ----------------------------------------------------------------------------------

_COMPARE = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}


def _scalar(literal: Literal, type_: pa.DataType) -> pa.Scalar:
    """The literal as a scalar comparable with a column of ``type_``."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    value = literal.value
    try:
        if pa.types.is_timestamp(type_) or pa.types.is_date(type_):
            from pipeline.search.filter import parse_timestamp

            moment = parse_timestamp(value) if isinstance(value, str) else value
            if pa.types.is_date(type_):
                return pa.scalar(moment.astimezone(dt.timezone.utc).date(), type=type_)
            if type_.tz is None:  # naive column: compare in UTC
                moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return pa.scalar(moment, type=type_)
        if literal.kind == "number":
            return pa.scalar(value, type=pa.int64() if isinstance(value, int) else pa.float64())
        return pa.scalar(value, type=type_ if literal.kind == "string" else pa.bool_())
    except (pa.ArrowInvalid, OverflowError, ValueError) as err:
        raise FilterError(f"where: {_show(literal)} does not fit a column of type {type_} ({err})") from err


def _plain(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(values.type):
        return values.cast(values.type.value_type)
    return values


def _evaluate(node: Node, get: Callable[[str], pa.ChunkedArray | pa.Array]):
    if isinstance(node, BoolOp):
        combine = pc.and_kleene if node.op == "and" else pc.or_kleene
        result = _evaluate(node.operands[0], get)
        for operand in node.operands[1:]:
            result = combine(result, _evaluate(operand, get))
        return result
    if isinstance(node, Not):
        return pc.invert(_evaluate(node.operand, get))
    values = _plain(get(node.column))
    if isinstance(node, IsNull):
        return pc.is_valid(values) if node.negated else pc.is_null(values)
    if isinstance(node, Truth):
        return values
    if isinstance(node, Like):
        if node.prefix:
            result = pc.starts_with(values, pattern=node.pattern)
        else:
            result = pc.match_like(values, pattern=node.pattern)
        return pc.invert(result) if node.negated else result
    if isinstance(node, Compare):
        return _COMPARE[node.op](values, _scalar(node.value, values.type))
    if isinstance(node, Between):
        low, high = _scalar(node.low, values.type), _scalar(node.high, values.type)
        result = pc.and_kleene(pc.greater_equal(values, low), pc.less_equal(values, high))
        return pc.invert(result) if node.negated else result
    if isinstance(node, In):
        scalars = [_scalar(v, values.type) for v in node.values]
        common = values.type if scalars and scalars[0].type != pa.int64() else pa.int64()
        if pa.types.is_floating(values.type) or any(pa.types.is_floating(s.type) for s in scalars):
            common = pa.float64()
        try:
            value_set = pa.array([s.as_py() for s in scalars], type=common)
            result = pc.is_in(values.cast(common) if values.type != common else values, value_set=value_set)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise FilterError(f"where: IN on column {node.column!r}: {err}") from err
        # is_in gives false, not null, for a null value: keep SQL's unknown for null rows
        result = pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), result)
        return pc.invert(result) if node.negated else result
    raise FilterError(f"where: cannot evaluate {type(node).__name__}")  # unreachable: the parser makes no other
