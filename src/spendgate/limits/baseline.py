"""The ledger as the limit backends' baseline: what a scope spent before counting began."""

from datetime import date, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.spend import spent_before
from spendgate.limits.backend import Baseline


def ledger_baseline(engine: AsyncEngine, started: datetime) -> Baseline:
    """A baseline reading events before `started` (the backend counts everything after)."""

    async def baseline(scope: str, since: date | None) -> int:
        kind, _, ident = scope.partition(":")
        if kind == "user":
            return await spent_before(engine, user=ident, since=since, before=started)
        if kind == "key":
            return await spent_before(engine, key_id=int(ident), since=since, before=started)
        raise ValueError(f"unknown scope {scope!r}")

    return baseline
