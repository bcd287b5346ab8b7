"""Credits, account defaults and spend baselines in the ledger, on every backend."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.errors import Conflict
from spendgate.ledger.spend import spent_before
from spendgate.ledger.store import AccountDefaults, Store
from spendgate.ledger.writer import write_events
from spendgate.money import usd_to_pico
from tests.ledger.conftest import EventFactory


async def test_credits_keep_a_running_sum_and_a_history(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("ann")
    assert (await store.get_user("ann")).credit_usd is None  # type: ignore[union-attr]
    await store.add_credit("ann", Decimal("20"), note="top-up", actor="admin-api")
    user = await store.add_credit(
        "ann", Decimal("-0.000000000001"), note="correction", actor="cli:bo"
    )
    assert user is not None
    assert user.credit_usd == Decimal("19.999999999999")
    history = await store.list_credits("ann")
    assert [(c.amount_usd, c.note, c.actor) for c in history] == [
        (Decimal(20), "top-up", "admin-api"),
        (Decimal("-0.000000000001"), "correction", "cli:bo"),
    ]
    assert history[0].created_at.tzinfo is not None
    assert await store.add_credit("nobody", Decimal(1), note=None, actor="x") is None


async def test_a_credit_moves_the_principal_generation(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("ann")
    before = await store.read_generation()
    await store.add_credit("ann", Decimal(1), note=None, actor="x")
    assert await store.read_generation() == before + 1


async def test_credits_cannot_leave_the_64_bit_range(backend: str, engine: AsyncEngine) -> None:
    store = Store(engine)
    await store.create_user("ann")
    await store.add_credit("ann", Decimal(9_000_000), note=None, actor="x")
    with pytest.raises(Conflict):
        await store.add_credit("ann", Decimal(9_000_000), note=None, actor="x")
    assert (await store.get_user("ann")).credit_usd == 9_000_000  # type: ignore[union-attr]


async def test_defaults_apply_to_new_users_and_keys_without_their_own(
    backend: str, engine: AsyncEngine
) -> None:
    store = Store(
        engine,
        AccountDefaults(
            user_budget_usd=Decimal(5), user_budget_period="weekly",
            user_limits={"requests_per_minute": 60},
            key_budget_usd=Decimal(1), key_limits={"tokens_per_day": 1000},
        ),
    )  # fmt: skip
    plain = await store.create_user("plain")
    own = await store.create_user("own", budget_usd=Decimal(9), limits={"requests_per_day": 1})
    key = await store.create_key("via-key", "h" * 64, "sg-x")
    via_key = await store.get_user("via-key")
    assert (plain.budget_usd, plain.budget_period, plain.limits) == (
        5, "weekly", {"requests_per_minute": 60}
    )  # fmt: skip
    assert (own.budget_usd, own.limits) == (9, {"requests_per_day": 1})
    assert (key.budget_usd, key.budget_period, key.limits) == (
        1, "monthly", {"tokens_per_day": 1000}
    )  # fmt: skip
    assert via_key is not None
    assert via_key.budget_usd == 5
    assert via_key.limits == {"requests_per_minute": 60}


async def test_spent_before_is_exact_across_rollups_and_the_cut_day(
    backend: str, engine: AsyncEngine, make_event: EventFactory
) -> None:
    cost = Decimal("0.000004500001")
    events = [
        make_event(user="ann", key_id=1, timestamp=datetime(2025, 3, 1, 9, tzinfo=UTC)),
        make_event(user="ann", key_id=1, timestamp=datetime(2025, 3, 13, 23, 59, tzinfo=UTC)),
        make_event(user="ann", key_id=2, timestamp=datetime(2025, 3, 14, 8, tzinfo=UTC)),
        make_event(user="ann", key_id=1, timestamp=datetime(2025, 3, 14, 12, tzinfo=UTC)),
        make_event(user="bob", key_id=3, timestamp=datetime(2025, 3, 14, 8, tzinfo=UTC)),
        make_event(user="ann", key_id=1, timestamp=datetime(2025, 2, 28, 9, tzinfo=UTC)),
        make_event(user="ann", key_id=1, cost_usd=None,
                   timestamp=datetime(2025, 3, 2, tzinfo=UTC)),  # unpriced: costs nothing
    ]  # fmt: skip
    await write_events(engine, events)
    cut = datetime(2025, 3, 14, 10, tzinfo=UTC)
    march = date(2025, 3, 1)

    async def spent(**kwargs: object) -> int:
        return await spent_before(engine, **kwargs)  # type: ignore[arg-type]

    assert await spent(user="ann", since=march, before=cut) == 3 * usd_to_pico(cost)
    assert await spent(key_id=1, since=march, before=cut) == 2 * usd_to_pico(cost)
    assert await spent(user="ann", before=cut) == 4 * usd_to_pico(cost)
    assert await spent(user="ann") == 5 * usd_to_pico(cost)
    assert await spent(user="ann", since=date(2025, 3, 15), before=cut) == 0
    assert await spent(user="nobody") == 0
