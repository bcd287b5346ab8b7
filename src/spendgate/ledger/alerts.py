"""Alerts in the ledger: recorded once per crossing, then claimed attempt by attempt.

Both steps are safe with several gateway instances on one database. Recording is an
insert that the unique key (subject, threshold, period) lets only one instance win.
Sending is claimed per attempt with a compare-and-set on `attempts`: the instance whose
update moves the counter sends that attempt, and the claim pushes `next_attempt_at` past
the send's timeout so no other instance retries an alert still in flight.
"""

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import RowMapping, Table, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.schema import AlertRow

_ERROR_LEN = 500
_ALERTS = cast(Table, AlertRow.__table__)


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold a user or key has crossed in one period (what an alert records).

    `period_key` names the period: a budget's `monthly:2026-11-01`, or for a balance the
    credit total it fell under (`credits:<pico>`), so a top-up starts a new one.
    """

    subject_kind: str  # "user" | "key"
    subject_id: int
    user_name: str
    key_display: str | None
    threshold: str  # budget_80 | budget_100 | balance_low | balance_zero
    period: str | None
    period_start: date | None
    period_key: str
    budget_pico: int | None = None
    spend_pico: int | None = None
    balance_pico: int | None = None

    @property
    def identity(self) -> tuple[str, int, str, str]:
        """The unique key of the crossing: one alert per subject, threshold and period."""
        return (self.subject_kind, self.subject_id, self.threshold, self.period_key)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as stored, with its delivery state."""

    id: int
    crossing: Crossing
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    attempts: int
    last_error: str | None


class AlertStore:
    """Reads and writes the alerts table."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def record(self, crossing: Crossing, now: datetime, *, send_at: datetime | None) -> bool:
        """Insert the alert unless it exists; True if this call inserted it.

        `send_at` None records an alert that is never sent (no webhook configured).
        """
        values = _crossing_values(crossing)
        insert = _ALERTS.insert().values(
            **values, created_at=now, next_attempt_at=send_at, attempts=0
        )
        try:
            async with self._engine.begin() as conn:
                await conn.execute(insert)
        except IntegrityError:
            return False  # recorded already, by this or another instance
        return True

    async def claim_due(
        self, now: datetime, *, max_attempts: int, lease_until: datetime, limit: int = 50
    ) -> list[AlertRecord]:
        """Claim the next attempt of every undelivered alert that is due; the claimed ones.

        A claim counts the attempt and holds the alert until `lease_until`.
        """
        due = (
            select(_ALERTS)
            .where(
                AlertRow.delivered_at.is_(None),
                AlertRow.next_attempt_at.is_not(None),
                AlertRow.next_attempt_at <= now,
                AlertRow.attempts < max_attempts,
            )
            .order_by(AlertRow.id)
            .limit(limit)
        )
        claimed = []
        async with self._engine.begin() as conn:
            rows = (await conn.execute(due)).mappings().all()
        for row in rows:
            claim = (
                update(AlertRow)
                .where(
                    AlertRow.id == row["id"],
                    AlertRow.attempts == row["attempts"],
                    AlertRow.delivered_at.is_(None),
                )
                .values(attempts=row["attempts"] + 1, next_attempt_at=lease_until)
            )
            async with self._engine.begin() as conn:
                won = (await conn.execute(claim)).rowcount == 1
            if won:
                claimed.append(_record({**row, "attempts": row["attempts"] + 1}))
        return claimed

    async def delivered(self, alert_id: int, now: datetime) -> None:
        """Mark an alert delivered."""
        done = update(AlertRow).where(AlertRow.id == alert_id)
        async with self._engine.begin() as conn:
            await conn.execute(done.values(delivered_at=now, next_attempt_at=None))

    async def failed(self, alert_id: int, error: str, retry_at: datetime | None) -> None:
        """Record a failed attempt and when to try again (None: never)."""
        stmt = update(AlertRow).where(AlertRow.id == alert_id, AlertRow.delivered_at.is_(None))
        async with self._engine.begin() as conn:
            await conn.execute(stmt.values(last_error=error[:_ERROR_LEN], next_attempt_at=retry_at))

    async def recent(self, limit: int = 50) -> list[AlertRecord]:
        """The latest alerts, newest first."""
        latest = select(_ALERTS).order_by(AlertRow.created_at.desc(), AlertRow.id.desc())
        async with self._engine.connect() as conn:
            rows = (await conn.execute(latest.limit(limit))).mappings().all()
        return [_record(row) for row in rows]


_CROSSING_FIELDS = tuple(Crossing.__dataclass_fields__)


def _crossing_values(crossing: Crossing) -> dict[str, Any]:
    return {name: getattr(crossing, name) for name in _CROSSING_FIELDS}


def _record(row: RowMapping | dict[str, Any]) -> AlertRecord:
    return AlertRecord(
        id=int(row["id"]),
        crossing=Crossing(**{name: row[name] for name in _CROSSING_FIELDS}),
        created_at=row["created_at"],
        delivered_at=row["delivered_at"],
        next_attempt_at=row["next_attempt_at"],
        attempts=int(row["attempts"]),
        last_error=row["last_error"],
    )
