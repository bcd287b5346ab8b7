"""The ledger's compiled INSERT: hand-written driver conversions equal SQLAlchemy's."""

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.dialects.mysql import aiomysql
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.dialects.sqlite import aiosqlite

from spendgate.ledger.schema import UsageEventRow
from spendgate.ledger.writer import driver_conversions

TABLE = UsageEventRow.__table__
MOMENTS = [
    datetime(2026, 11, 22, 13, 45, 1, 123, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 0, 0, 0, tzinfo=UTC),  # no microseconds: still written out
    datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, 0, 500000, tzinfo=UTC) + timedelta(microseconds=1),
]


@pytest.mark.parametrize(
    "dialect", [aiosqlite.dialect(), asyncpg.dialect(), aiomysql.dialect()], ids=lambda d: d.name
)
def test_driver_conversions_give_what_sqlalchemy_would(dialect) -> None:
    conversions = driver_conversions(dialect)
    samples = {"ts": MOMENTS, "day": [m.date() for m in MOMENTS] + [date(2026, 3, 1)]}
    samples |= {"stream": [True, False], "estimated": [True, False]}
    for column, values in samples.items():
        if column not in conversions:
            continue
        ours = conversions[column]
        theirs = TABLE.c[column].type.dialect_impl(dialect).bind_processor(dialect)
        for value in values:
            expected = theirs(value) if theirs else value
            got = ours(value) if ours else value
            assert got == expected and type(got) in (type(expected), bool), (column, value)
