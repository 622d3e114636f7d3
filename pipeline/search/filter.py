"""``where=``: a small predicate language over an index's metadata columns (docs/search.md#filters).

A predicate is tokenized and parsed here, by this module's own recursive-descent parser, into a small
AST; the AST is checked against the index's column schema (every column known, every literal of the
column's type); only then is it evaluated, column by column, with pyarrow.compute. Nothing else can be
expressed: there are no statements, no functions but ``starts_with``, no access to files or the network,
and the size of a predicate is bounded (characters, terms, IN values, nesting).

Grammar (keywords are case-insensitive)::

    expr      := and_expr (OR and_expr)*
    and_expr  := not_expr (AND not_expr)*
    not_expr  := NOT not_expr | primary
    primary   := "(" expr ")" | starts_with(column, 'prefix') | column [test]
    test      := (= | == | != | <> | < | <= | > | >=) literal
               | [NOT] IN (literal, ...) | [NOT] BETWEEN literal AND literal
               | [NOT] LIKE 'pattern' | IS [NOT] NULL
    column    := name | name.name... | "any name"   (a boolean column alone is a test: ``flag``)
    literal   := number | 'string' ('' escapes ') | TRUE | FALSE | TIMESTAMP '2024-01-31T12:00:00'
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import LatentError

MAX_CHARS = 1_000_000  # a predicate's text (room for an IN list of MAX_IN_VALUES ids)
MAX_TERMS = 256  # tests (comparisons, IN, BETWEEN, LIKE, IS NULL) in one predicate
MAX_IN_VALUES = 10_000  # values of one IN list
MAX_DEPTH = 32  # nesting of parentheses and NOT


class FilterError(LatentError):
    """A ``where`` predicate that is malformed, too large, or does not fit the index's columns."""


# --- tokens --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")+")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<op><=|>=|<>|!=|==|=|<|>)
    | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "between", "like", "is", "null", "true", "false", "timestamp", "date"}
FUNCTIONS = ("starts_with",)


@dataclass(frozen=True)
class Token:
    kind: str  # number | string | name | keyword | op | punct | end
    text: str
    at: int


def tokenize(text: str) -> list[Token]:
    if not isinstance(text, str):
        raise FilterError(f"where: expected a string, got {type(text).__name__}")
    if len(text) > MAX_CHARS:
        raise FilterError(f"where: {len(text)} characters; at most {MAX_CHARS}")
    tokens, at = [], 0
    while at < len(text):
        if text[at:].strip() == "":
            break
        match = _TOKEN.match(text, at)
        if match is None or match.end() == at:
            bad = text[at:].lstrip()[:20]
            raise FilterError(f"where: unexpected {bad!r} at character {len(text) - len(text[at:].lstrip())}")
        kind = group = match.lastgroup
        value = match.group(group)
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        elif kind == "quoted":
            kind, value = "name", value[1:-1].replace('""', '"')
        tokens.append(Token(kind, value, match.start(group)))
        at = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


# --- the AST -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Literal:
    value: Any  # int | float | str | bool | datetime.datetime
    kind: str  # number | string | bool | timestamp


@dataclass(frozen=True)
class Compare:
    column: str
    op: str  # = != < <= > >=
    value: Literal


@dataclass(frozen=True)
class In:
    column: str
    values: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True)
class Between:
    column: str
    low: Literal
    high: Literal
    negated: bool = False


@dataclass(frozen=True)
class Like:
    column: str
    pattern: str
    prefix: bool = False  # starts_with(column, pattern): the pattern is literal text
    negated: bool = False


@dataclass(frozen=True)
class IsNull:
    column: str
    negated: bool = False


@dataclass(frozen=True)
class Truth:
    column: str  # a boolean column used alone as a test


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    operands: tuple[Node, ...]


Node = Compare | In | Between | Like | IsNull | Truth | Not | BoolOp
_OPS = {"==": "=", "<>": "!="}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.at = 0
        self.terms = 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.at + offset, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.at += 1
        return token

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        token = self.peek()
        if token.kind == kind and (text is None or token.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str | None = None, what: str = "") -> Token:
        token = self.accept(kind, text)
        if token is None:
            raise self.error(f"expected {what or text or kind}")
        return token

    def error(self, message: str) -> FilterError:
        token = self.peek()
        found = "the end" if token.kind == "end" else repr(token.text)
        return FilterError(f"where: {message} at character {token.at}, found {found}")

    def term(self) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"where: more than {MAX_TERMS} tests in one predicate (use IN for lists of values)")

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise FilterError("where: an empty predicate")
        node = self.expr(0)
        if self.peek().kind != "end":
            raise self.error("expected AND, OR or the end of the predicate")
        return node

    def expr(self, depth: int) -> Node:
        return self._chain("or", self.and_expr, depth)

    def and_expr(self, depth: int) -> Node:
        return self._chain("and", self.not_expr, depth)

    def _chain(self, op: str, operand: Callable[[int], Node], depth: int) -> Node:
        parts = [operand(depth)]
        while self.accept("keyword", op):
            parts.append(operand(depth))
        return parts[0] if len(parts) == 1 else BoolOp(op, tuple(parts))

    def not_expr(self, depth: int) -> Node:
        if self.accept("keyword", "not"):
            return Not(self.not_expr(self._deeper(depth)))
        return self.primary(depth)

    def _deeper(self, depth: int) -> int:
        if depth + 1 > MAX_DEPTH:
            raise FilterError(f"where: nested more than {MAX_DEPTH} levels deep")
        return depth + 1

    def primary(self, depth: int) -> Node:
        if self.accept("punct", "("):
            node = self.expr(self._deeper(depth))
            self.expect("punct", ")", "')'")
            return node
        token = self.peek()
        if token.kind == "name" and self.peek(1).kind == "punct" and self.peek(1).text == "(":
            return self.function()
        if token.kind != "name":
            raise self.error("expected a column name")
        column = self.take().text
        self.term()
        return self.test(column)

    def function(self) -> Node:
        name = self.take()
        if name.text.lower() not in FUNCTIONS:
            raise FilterError(
                f"where: unknown function {name.text!r} at character {name.at} (functions: {', '.join(FUNCTIONS)})"
            )
        self.expect("punct", "(", "'('")
        column = self.expect("name", what="a column name").text
        self.expect("punct", ",", "','")
        prefix = self.expect("string", what="a 'prefix' string")
        self.expect("punct", ")", "')'")
        self.term()
        return Like(column, _unquote(prefix.text), prefix=True)

    def test(self, column: str) -> Node:
        op = self.accept("op")
        if op is not None:
            return Compare(column, _OPS.get(op.text, op.text), self.literal())
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not") is not None
            self.expect("keyword", "null", "NULL")
            return IsNull(column, negated)
        negated = self.accept("keyword", "not") is not None
        if self.accept("keyword", "in"):
            self.expect("punct", "(", "'('")
            values = [self.literal()]
            while self.accept("punct", ","):
                values.append(self.literal())
                if len(values) > MAX_IN_VALUES:
                    raise FilterError(f"where: an IN list of more than {MAX_IN_VALUES} values")
            self.expect("punct", ")", "')'")
            return In(column, tuple(values), negated)
        if self.accept("keyword", "between"):
            low = self.literal()
            self.expect("keyword", "and", "AND")
            return Between(column, low, self.literal(), negated)
        if self.accept("keyword", "like"):
            return Like(column, _unquote(self.expect("string", what="a 'pattern' string").text), negated=negated)
        if negated:
            raise self.error("expected IN, BETWEEN or LIKE after NOT")
        return Truth(column)

    def literal(self) -> Literal:
        token = self.take()
        if token.kind == "number":
            text = token.text
            is_int = re.fullmatch(r"-?\d+", text) is not None
            return Literal(int(text) if is_int else float(text), "number")
        if token.kind == "string":
            return Literal(_unquote(token.text), "string")
        if token.kind == "keyword" and token.text in ("true", "false"):
            return Literal(token.text == "true", "bool")
        if token.kind == "keyword" and token.text in ("timestamp", "date"):
            text = _unquote(self.expect("string", what="a quoted timestamp").text)
            return Literal(parse_timestamp(text), "timestamp")
        self.at -= 1
        raise self.error("expected a value (a number, a 'string', TRUE, FALSE or TIMESTAMP '…')")


def _unquote(text: str) -> str:
    return text[1:-1].replace("''", "'")


def parse_timestamp(text: str) -> dt.datetime:
    """An ISO 8601 date or date-time; naive values are UTC."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise FilterError(
            f"where: {text!r} is not an ISO 8601 timestamp (e.g. 2024-01-31 or 2024-01-31T12:00:00)"
        ) from err
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def parse(text: str) -> Node:
    """The AST of a predicate (syntax only; ``check`` validates it against columns)."""
    return _Parser(text).parse()
