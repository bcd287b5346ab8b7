"""The ledger as the limit backends' baseline: what a scope spent before counting began."""

from collections.abc import Awaitable, Callable
from datetime import date, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.spend import spent_before
from spendgate.limits.backend import Baseline

# (scope, first day or None for all time, before) -> picodollars the ledger holds
SpendHistory = Callable[[str, date | None, datetime], Awaitable[int]]


def ledger_history(engine: AsyncEngine) -> SpendHistory:
    """Spend of a scope (`user:NAME`, `key:ID@NAME`) from day `since` up to `before`."""

    async def history(scope: str, since: date | None, before: datetime) -> int:
        kind, _, ident = scope.partition(":")
        if kind == "user":
            return await spent_before(engine, user=ident, since=since, before=before)
        if kind == "key":
            key_id = int(ident.partition("@")[0])
            return await spent_before(engine, key_id=key_id, since=since, before=before)
        raise ValueError(f"unknown scope {scope!r}")

    return history


def ledger_baseline(engine: AsyncEngine, started: datetime) -> Baseline:
    """A baseline reading events before `started` (the backend counts everything after)."""
    history = ledger_history(engine)

    async def baseline(scope: str, since: date | None) -> int:
        return await history(scope, since, started)

    return baseline
