"""Alerts in the ledger: one row per crossing, one claim per attempt, the 0005 migration."""

import asyncio
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.ledger.alerts import AlertStore, Crossing
from spendgate.ledger.engine import SCHEMA_HEAD, alembic_config, create_engine, upgrade

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def crossing(threshold: str = "budget_80", period_key: str = "monthly:2026-11-01") -> Crossing:
    return Crossing(
        subject_kind="key",
        subject_id=7,
        user_name="alice",
        key_display="sg-abcd…wxyz",
        threshold=threshold,
        period="monthly",
        period_start=date(2026, 11, 1),
        period_key=period_key,
        budget_pico=10**12,
        spend_pico=8 * 10**11,
    )


async def test_a_crossing_is_recorded_once_per_period(backend: str, engine: AsyncEngine) -> None:
    alerts = AlertStore(engine)
    racing = [alerts.record(crossing(), NOW, send_at=NOW) for _ in range(5)]
    assert sorted(await asyncio.gather(*racing)) == [False, False, False, False, True]
    assert await alerts.record(crossing(), NOW, send_at=NOW) is False
    assert await alerts.record(crossing("budget_100"), NOW, send_at=NOW) is True
    assert await alerts.record(crossing(period_key="monthly:2026-12-01"), NOW, send_at=None)
    recorded = await alerts.recent()
    assert len(recorded) == 3
    assert recorded[0].crossing.key_display == "sg-abcd…wxyz"
    assert {a.crossing.threshold for a in recorded} == {"budget_80", "budget_100"}
    assert all(a.created_at == NOW and a.attempts == 0 for a in recorded)


async def test_each_attempt_is_claimed_by_one_caller(backend: str, engine: AsyncEngine) -> None:
    alerts = AlertStore(engine)
    await alerts.record(crossing(), NOW, send_at=NOW)
    await alerts.record(crossing("budget_100"), NOW, send_at=None)  # never sent
    lease = NOW + timedelta(seconds=30)
    claims = await asyncio.gather(
        *(alerts.claim_due(NOW, max_attempts=3, lease_until=lease) for _ in range(4))
    )
    claimed = [alert for claim in claims for alert in claim]
    assert [(a.crossing.threshold, a.attempts) for a in claimed] == [("budget_80", 1)]
    assert await alerts.claim_due(NOW, max_attempts=3, lease_until=lease) == []  # leased

    await alerts.failed(claimed[0].id, "HTTP 500", NOW)
    again = await alerts.claim_due(NOW, max_attempts=3, lease_until=lease)
    assert [a.attempts for a in again] == [2]
    await alerts.delivered(again[0].id, NOW)
    assert await alerts.claim_due(lease, max_attempts=3, lease_until=lease) == []
    stored = {a.crossing.threshold: a for a in await alerts.recent()}
    assert stored["budget_80"].delivered_at == NOW
    assert stored["budget_80"].last_error == "HTTP 500"
    assert stored["budget_100"].attempts == 0 and stored["budget_100"].delivered_at is None


def _upgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def _downgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)


def _has_alerts(connection: Connection) -> bool:
    return inspect(connection).has_table("alerts")


async def test_the_migration_from_0004_adds_alerts_and_reverts(
    backend: str, database_url: str
) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0004")
            assert not await conn.run_sync(_has_alerts)
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT version_num FROM alembic_version")) == SCHEMA_HEAD
        assert await AlertStore(engine).record(crossing(), NOW, send_at=None)

        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to, "0004")
            assert not await conn.run_sync(_has_alerts)
        await upgrade(engine)
        assert await AlertStore(engine).recent() == []
    finally:
        await engine.dispose()
