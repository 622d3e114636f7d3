"""The where= language on its own: what it accepts, what it computes (SQL's null logic), what it refuses."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from pipeline.errors import LatentError
from pipeline.search.filter import MAX_DEPTH, MAX_IN_VALUES, MAX_TERMS, FilterError, parse
from pipeline.search.where import column_kinds, compile_where

TABLE = pa.table(
    {
        "cat": ["a", "b", None, "ab", "it's"],
        "num": [1, 5, None, 10, -2],
        "x": [0.5, 1.5, 2.5, None, -1.0],
        "flag": [True, False, None, True, False],
        "ts": pa.array(
            [
                dt.datetime(2024, 1, 1),
                dt.datetime(2023, 5, 1),
                None,
                dt.datetime(2025, 1, 1),
                dt.datetime(2024, 6, 1, 12),
            ],
            pa.timestamp("us"),
        ),  # fmt: skip
        "day": pa.array([dt.date(2024, 1, 1)] * 5, pa.date32()),
        "tags": pa.array([[1], [2], None, [3], []]),
        "metadata.license": ["cc-by", "cc0", "cc-by", None, "cc0"],
    }
)
KINDS = column_kinds(TABLE.schema)


def matches(where: str) -> list[int]:
    mask = compile_where(where, KINDS).evaluate(TABLE.column, TABLE.num_rows)
    return [i for i, m in enumerate(mask) if m]


@pytest.mark.parametrize(
    "where, rows",
    [
        ("cat = 'a'", [0]),
        ("cat == 'a' OR cat <> 'b'", [0, 3, 4]),
        ("cat = 'it''s'", [4]),
        ("num > 1 AND num <= 10", [1, 3]),
        ("num >= -2 and x < 1", [0, 4]),
        ("NOT num > 3", [0, 4]),  # null stays unknown under NOT
        ("num IN (1, 10)", [0, 3]),
        ("num NOT IN (1, 10)", [1, 4]),
        ("x IN (0.5, 2.5)", [0, 2]),
        ("num BETWEEN 0 AND 5", [0, 1]),
        ("num NOT BETWEEN 0 AND 5", [3, 4]),
        ("cat IS NULL", [2]),
        ("cat IS NOT NULL AND tags IS NOT NULL", [0, 1, 3, 4]),
        ("cat LIKE 'a%'", [0, 3]),
        ("cat NOT LIKE '_'", [3, 4]),
        ("starts_with(cat, 'a')", [0, 3]),
        ("flag", [0, 3]),
        ("NOT flag", [1, 4]),
        ("flag = false", [1, 4]),
        ("ts >= TIMESTAMP '2024-01-01' AND ts < '2025-01-01'", [0, 4]),
        ("ts > TIMESTAMP '2024-06-01T11:00:00+00:00'", [3, 4]),
        ("day = DATE '2024-01-01'", [0, 1, 2, 3, 4]),
        ("\"metadata.license\" = 'cc-by' AND metadata.license LIKE 'cc%'", [0, 2]),
        ("(cat = 'a' OR (num = 5)) AND NOT (flag AND cat = 'b')", [0, 1]),
    ],
)
def test_language_matches_sql(where, rows):
    assert matches(where) == rows


@pytest.mark.parametrize(
    "where, message",
    [
        ("1=1; DROP TABLE items", "unexpected"),
        ("cat = 'a'; DROP TABLE items", "unexpected ';"),
        ("read_csv('/etc/passwd') IS NOT NULL", "unknown function 'read_csv'"),
        ("cat = read_file('x')", "expected a value"),
        ("nope = 1", "unknown column 'nope'"),
        ("num = 'a'", "holds number values; 'a' is a string"),
        ("cat > 3", "holds string values"),
        ("ts > 3", "timestamp"),
        ("ts > 'yesterday'", "not an ISO 8601 timestamp"),
        ("flag < true", "only takes = and !="),
        ("num LIKE 'a%'", "LIKE and starts_with apply to string columns"),
        ("cat", "is not boolean"),
        ("tags = 1", "cannot be compared"),
        ("num = 99999999999999999999999", "does not fit"),
        ("cat = 'a' AND", "expected a column name"),
        ("cat = 'a' cat = 'b'", "expected AND, OR"),
        ("", "empty predicate"),
        ("cat = 'a", "unexpected"),
        ('cat = "a"', "expected a value"),
        ("UNION SELECT * FROM items", "expected"),
        ("num NOT 3", "expected IN, BETWEEN or LIKE"),
    ],
)
def test_refused_before_anything_runs(where, message):
    with pytest.raises(FilterError, match="where: ") as err:
        compile_where(where, KINDS)
    assert message in str(err.value)
    assert isinstance(err.value, LatentError)  # exit 2 on the CLI, 400 over HTTP


def test_size_limits():
    with pytest.raises(FilterError, match=f"more than {MAX_TERMS} tests"):
        parse(" OR ".join("n=1" for _ in range(10_000)))  # 10,000 terms in 60k characters
    with pytest.raises(FilterError, match="characters"):
        parse("cat = '" + "x" * 1_000_000 + "'")
    with pytest.raises(FilterError, match=f"nested more than {MAX_DEPTH}"):
        parse("(" * 10_000 + "num = 1" + ")" * 10_000)
    with pytest.raises(FilterError, match=f"nested more than {MAX_DEPTH}"):
        parse("NOT " * 1000 + "flag")
    with pytest.raises(FilterError, match="IN list of more than"):
        parse("num IN (" + ",".join(str(i) for i in range(MAX_IN_VALUES + 1)) + ")")
    # at the limits, it still works
    assert matches("num IN (" + ",".join(str(i) for i in range(MAX_IN_VALUES)) + ")") == [0, 1, 3]
    assert matches("(" * (MAX_DEPTH - 1) + "num = 1" + ")" * (MAX_DEPTH - 1)) == [0]
    with pytest.raises(FilterError, match="expected a string"):
        parse(42)  # type: ignore[arg-type]
