"""INSERTs compiled once per dialect and executed with plain tuples.

SQLAlchemy's `conn.execute(insert(table), [dict, ...])` builds and processes a parameter
dict per row, which cost the ledger writer ~25 µs per event on the event loop. Here the
statement is compiled once, the few bind processors that matter (datetimes and dates on
SQLite, say) are looked up once, and each row goes to the driver's `executemany` as a tuple.
The SQL and the stored values are exactly those SQLAlchemy would have produced; a caller may
give faster conversions for some columns (tested to agree with SQLAlchemy's).

On SQLite the rows go `_SQLITE_ROWS` at a time in one statement instead of one by one. The
driver runs in a worker thread and lets go of the GIL around every statement step: an
`executemany` of single rows takes it back once per row, and while the event loop keeps the
GIL busy each take waits up to the interpreter's switch interval (5 ms). Measured with a busy
main thread: 1,000 rows took 1.5 s one by one and 15 ms in multi-row statements; under load
the ledger writer fell behind the requests and its queue held ~40,000 events.

The statement always has `_SQLITE_ROWS` rows, the last chunk padded with all-NULL rows that
its `WHERE` drops (`INSERT ... SELECT * FROM (VALUES ...) WHERE column1 IS NOT NULL`, the
first column being a NOT NULL one): SQLite keeps each distinct statement text prepared, at
~5 KB per row, and one text per chunk length would hold a hundred megabytes of them.
"""

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import Any

from sqlalchemy import Dialect, Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection

Processor = Callable[[Any], Any]

# Rows per SQLite statement: few enough that binding them holds the GIL (so stalls the event
# loop) for well under a millisecond, and that the parameters stay within the 999 SQLite
# took before 3.32 (SQLITE_MAX_VARIABLE_NUMBER).
_SQLITE_MAX_PARAMETERS = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_SQLITE_ROWS = 100


class CompiledInsert:
    """`INSERT INTO table (columns...)` for one dialect, with its per-column processors."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        overrides: Mapping[str, Processor | None] | None = None,
    ) -> None:
        """`overrides` replaces SQLAlchemy's processor of a column (None: pass as is)."""
        overrides = overrides or {}
        compiled = insert(table).compile(dialect=dialect, column_keys=list(columns))
        order = compiled.positiontup
        if order is None or sorted(order) != sorted(columns):
            raise ValueError(f"dialect '{dialect.name}' does not use positional parameters")
        self.sql = compiled.string
        position = {name: index for index, name in enumerate(columns)}
        # The statement's parameter order may differ from `columns`: map once.
        self._order = tuple(position[name] for name in order)
        self._identity = self._order == tuple(range(len(columns)))
        processors: list[tuple[int, Processor]] = []
        for slot, name in enumerate(order):
            if name in overrides:
                processor = overrides[name]
            else:
                processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors.append((slot, processor))
        self._processors = tuple(processors)
        self._width = len(order)
        # SQLite: the padded multi-row statement and its rows (see the module docstring);
        # 1 row elsewhere, for the driver's own `executemany`.
        self._per_statement = 1
        if dialect.name == "sqlite":
            self._per_statement = max(1, min(_SQLITE_ROWS, _SQLITE_MAX_PARAMETERS // len(order)))
            self.sql = _padded_insert(self.sql, table, order, self._per_statement)

    def parameters(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Driver-ready parameter tuples for rows given in `columns` order."""
        order, processors = self._order, self._processors
        out: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(row) if self._identity else [row[index] for index in order]
            for slot, processor in processors:
                value = values[slot]
                if value is not None:
                    values[slot] = processor(value)
            out.append(tuple(values))
        return out

    async def execute(self, conn: AsyncConnection, rows: Sequence[Sequence[Any]]) -> None:
        """Insert `rows` (in `columns` order) with one executemany."""
        if rows:
            await conn.exec_driver_sql(self.sql, self.statement_parameters(rows))

    def statement_parameters(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """The executemany parameters: a tuple per row, or per padded chunk of rows (SQLite)."""
        parameters = self.parameters(rows)
        per = self._per_statement
        if per == 1:
            return parameters
        padding = (None,) * self._width
        chunks = []
        for start in range(0, len(parameters), per):
            chunk = parameters[start : start + per]
            chunk += [padding] * (per - len(chunk))
            chunks.append(tuple(chain.from_iterable(chunk)))
        return chunks


def _padded_insert(sql: str, table: Table, order: Sequence[str], rows: int) -> str:
    """`INSERT INTO t (cols) SELECT * FROM (VALUES (...) x rows) WHERE column1 IS NOT NULL`."""
    head, keyword, row = sql.rpartition(" VALUES ")
    if not keyword or not (row.startswith("(") and row.endswith(")")):
        raise ValueError(f"cannot make a multi-row INSERT from: {sql}")
    if table.c[order[0]].nullable:  # the padding rows are told apart by a NULL there
        raise ValueError(f"the first column of {sql!r} must be NOT NULL")
    values = ", ".join([row] * rows)  # placeholders only: no value is in the text
    return f"{head} SELECT * FROM (VALUES {values}) WHERE column1 IS NOT NULL"  # noqa: S608


class InsertCache:
    """One `CompiledInsert` per dialect name, compiled on first use."""

    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        overrides: Callable[[Dialect], Mapping[str, Processor | None]] | None = None,
    ) -> None:
        self._table = table
        self._columns = tuple(columns)
        self._overrides = overrides
        self._compiled: dict[str, CompiledInsert] = {}

    def for_dialect(self, dialect: Dialect) -> CompiledInsert:
        """The insert compiled for `dialect`."""
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            overrides = self._overrides(dialect) if self._overrides else None
            compiled = self._compiled[dialect.name] = CompiledInsert(
                self._table, self._columns, dialect, overrides
            )
        return compiled
