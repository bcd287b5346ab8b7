"""GCRA window arithmetic: burst, refill, exact retry and reset times, debt, and peek."""

from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.limits.gcra import Rate, charge, check, peek, take

SECOND = 10**9
MINUTE = 60 * SECOND

PROPERTY = settings(max_examples=300, deadline=None)

periods = st.one_of(
    st.sampled_from([1, 3, 7, 1_000, SECOND, MINUTE, 3_600 * SECOND, 86_400 * SECOND]),
    st.integers(1, 10**12),
)
positive_rates = st.builds(Rate, limit=st.integers(1, 30), period_ns=periods)
any_rates = st.builds(Rate, limit=st.integers(0, 30), period_ns=periods)
instants = st.integers(0, 4 * 10**18)  # epoch nanoseconds, well past today


@st.composite
def moments(
    draw: st.DrawFn, rates: st.SearchStrategy[Rate] = positive_rates
) -> tuple[Rate, int, int]:
    """A rate, a state anywhere from long-full to deep in debt, and the time now."""
    rate = draw(rates)
    now_ns = draw(instants)
    used = draw(
        st.integers(-2 * rate.capacity - rate.period_ns, 3 * rate.capacity + rate.period_ns)
    )
    return rate, max(0, now_ns * rate.limit + used), now_ns


Check = tuple[Rate, int, int, int]  # rate, tat, now_ns, cost


@st.composite
def fitting_checks(draw: st.DrawFn) -> Check:
    """A check of 1..limit units against a bucket with room for them."""
    rate = draw(positive_rates)
    now_ns = draw(instants)
    cost = draw(st.integers(1, rate.limit))
    used = draw(
        st.integers(-2 * rate.capacity - rate.period_ns, (rate.limit - cost) * rate.period_ns)
    )
    return rate, max(0, now_ns * rate.limit + used), now_ns, cost


@st.composite
def overflowing_checks(draw: st.DrawFn) -> Check:
    """A check of 0..limit units against a bucket without room for them (maybe in debt)."""
    rate = draw(positive_rates)
    now_ns = draw(instants)
    cost = draw(st.integers(0, rate.limit))
    too_much = draw(st.integers(1, 3 * rate.capacity + rate.period_ns))
    used = (rate.limit - cost) * rate.period_ns + too_much
    return rate, now_ns * rate.limit + used, now_ns, cost


@st.composite
def never_fitting_checks(draw: st.DrawFn) -> Check:
    """A check over the limit, or against a zero limit, at any state."""
    rate, tat, now_ns = draw(moments(any_rates))
    if rate.limit == 0:
        cost = draw(st.integers(0, 40))
    else:
        cost = draw(st.integers(rate.limit + 1, 3 * rate.limit + 1))
    return rate, tat, now_ns, cost


@st.composite
def timelines(draw: st.DrawFn) -> tuple[Rate, list[tuple[int, int]]]:
    """A rate and checks (time, cost) at non-decreasing times, a few per refill interval."""
    rate = draw(positive_rates)
    steps = st.integers(0, 3 * rate.period_ns // rate.limit + 1)
    costs = st.integers(0, rate.limit + 1)
    checks = draw(st.lists(st.tuples(steps, costs), max_size=60))
    now_ns = draw(st.integers(0, 10**15))
    timeline = []
    for step, cost in checks:
        now_ns += step
        timeline.append((now_ns, cost))
    return rate, timeline


def admits(rate: Rate, tat: int, now_ns: int) -> int:
    """How many cost-1 checks pass one after another at `now_ns`."""
    count = 0
    while (verdict := check(rate, tat, now_ns, 1)).allowed:
        count += 1
        tat = verdict.tat
        assert count <= rate.limit, "more than a full bucket at one instant"
    return count


# examples


def test_sixty_per_minute_bursts_sixty_then_refills_one_per_second() -> None:
    rate = Rate(60, MINUTE)
    tat = 0
    for _ in range(60):
        verdict = check(rate, tat, 0, 1)
        assert verdict.allowed
        tat = verdict.tat
    refused = check(rate, tat, 0, 1)
    assert not refused.allowed
    assert refused.retry_after_ns == SECOND
    assert refused.reset_after_ns == MINUTE
    assert check(rate, tat, SECOND - 1, 1).allowed is False
    assert check(rate, tat, SECOND, 1).allowed is True


def test_three_per_ten_seconds_refills_without_rounding_drift() -> None:
    rate = Rate(3, 10 * SECOND)  # one unit every 3.333... seconds
    tat = charge(rate, 0, 0, 3)
    refused = check(rate, tat, 0, 1)
    assert refused.retry_after_ns == 3_333_333_334  # rounded up, never early
    assert not check(rate, tat, 3_333_333_333, 1).allowed
    assert check(rate, tat, 3_333_333_334, 1).allowed
    # The thirds add up exactly: the whole bucket is back at 10 s, not a nanosecond later.
    assert peek(rate, tat, 10 * SECOND - 1) == (2, 1)
    assert peek(rate, tat, 10 * SECOND) == (3, 0)


def test_zero_limit_refuses_everything_for_a_full_period() -> None:
    rate = Rate(0, MINUTE)
    for now_ns in (0, 1, MINUTE, 10**18):
        verdict = check(rate, 0, now_ns, 1)
        assert not verdict.allowed
        assert verdict.retry_after_ns == MINUTE
        assert peek(rate, 0, now_ns) == (0, 0)


def test_cost_above_the_limit_never_fits_even_in_a_full_bucket() -> None:
    rate = Rate(10, MINUTE)
    verdict = check(rate, 0, 10**18, 11)
    assert not verdict.allowed
    assert verdict.remaining == 10
    assert verdict.retry_after_ns == MINUTE


def test_charge_goes_into_debt_where_check_would_refuse() -> None:
    rate = Rate(100, MINUTE)
    assert not check(rate, 0, 0, 250).allowed
    tat = charge(rate, 0, 0, 250)
    # 150 units over the bucket plus the one asked for, at 100 per minute: 90.6 s.
    assert check(rate, tat, 0, 1).retry_after_ns == 90_600_000_000


# properties


@PROPERTY
@given(rate=any_rates, now_ns=instants)
def test_fresh_bucket_admits_exactly_limit_at_one_instant(rate: Rate, now_ns: int) -> None:
    tat = 0
    for taken in range(1, rate.limit + 1):
        verdict = check(rate, tat, now_ns, 1)
        assert verdict.allowed
        assert verdict.remaining == rate.limit - taken
        tat = verdict.tat
    assert not check(rate, tat, now_ns, 1).allowed


@settings(max_examples=200, deadline=None)
@given(timelines())
def test_admitted_units_never_exceed_burst_plus_refill(
    case: tuple[Rate, list[tuple[int, int]]],
) -> None:
    rate, timeline = case
    tat = 0
    admitted: list[tuple[int, int]] = []
    for now_ns, cost in timeline:
        verdict = check(rate, tat, now_ns, cost)
        if verdict.allowed:
            tat = verdict.tat
            admitted.append((now_ns, cost))
    times = sorted({now_ns for now_ns, _ in timeline})
    for i, start in enumerate(times):
        for end in times[i:]:
            units = sum(cost for now_ns, cost in admitted if start <= now_ns <= end)
            assert units <= rate.limit + (end - start) * rate.limit // rate.period_ns


@PROPERTY
@given(st.one_of(overflowing_checks(), never_fitting_checks()))
def test_refused_check_leaves_the_state_unchanged(case: Check) -> None:
    rate, tat, now_ns, cost = case
    verdict = check(rate, tat, now_ns, cost)
    assert not verdict.allowed
    assert verdict.tat == tat
    assert verdict.retry_after_ns > 0


@PROPERTY
@given(fitting_checks())
def test_allowed_check_takes_exactly_what_charge_takes(case: Check) -> None:
    rate, tat, now_ns, cost = case
    verdict = check(rate, tat, now_ns, cost)
    assert verdict.allowed
    assert verdict.retry_after_ns == 0
    assert verdict.tat == charge(rate, tat, now_ns, cost)


@PROPERTY
@given(moment=moments(any_rates), cost=st.integers(0, 40))
def test_take_is_check_without_the_other_numbers(moment: tuple[Rate, int, int], cost: int) -> None:
    rate, tat, now_ns = moment
    verdict = check(rate, tat, now_ns, cost)
    expected = (verdict.tat, verdict.remaining) if verdict.allowed else None
    assert take(rate, tat, now_ns, cost) == expected


@PROPERTY
@given(overflowing_checks())
def test_retry_after_is_the_exact_wait(case: Check) -> None:
    rate, tat, now_ns, cost = case
    verdict = check(rate, tat, now_ns, cost)
    assert not verdict.allowed
    retry = verdict.retry_after_ns
    assert retry > 0
    assert check(rate, tat, now_ns + retry, cost).allowed
    assert not check(rate, tat, now_ns + retry - 1, cost).allowed


@PROPERTY
@given(case=never_fitting_checks(), data=st.data())
def test_check_that_can_never_fit_waits_a_full_period(case: Check, data: st.DataObject) -> None:
    rate, tat, now_ns, cost = case
    verdict = check(rate, tat, now_ns, cost)
    assert not verdict.allowed
    assert verdict.retry_after_ns == rate.period_ns > 0
    later = data.draw(st.integers(0, 10 * rate.period_ns + 10 * rate.capacity))
    assert not check(rate, tat, now_ns + later, cost).allowed
    assert not check(rate, 0, now_ns + later, cost).allowed


@PROPERTY
@given(fitting_checks())
def test_remaining_after_an_allowed_check_is_honest(case: Check) -> None:
    rate, tat, now_ns, cost = case
    verdict = check(rate, tat, now_ns, cost)
    assert verdict.allowed
    assert admits(rate, verdict.tat, now_ns) == verdict.remaining


@PROPERTY
@given(moment=moments(any_rates))
def test_peek_remaining_is_honest(moment: tuple[Rate, int, int]) -> None:
    rate, tat, now_ns = moment
    remaining, _ = peek(rate, tat, now_ns)
    assert admits(rate, tat, now_ns) == remaining


@PROPERTY
@given(moment=moments(any_rates), cost=st.integers(1, 40))
def test_check_fits_exactly_when_peek_has_room(moment: tuple[Rate, int, int], cost: int) -> None:
    rate, tat, now_ns = moment
    remaining, _ = peek(rate, tat, now_ns)
    assert check(rate, tat, now_ns, cost).allowed == (cost <= remaining)


@PROPERTY
@given(moment=moments(any_rates), cost=st.integers(0, 40))
def test_verdict_numbers_are_peek_of_the_resulting_state(
    moment: tuple[Rate, int, int], cost: int
) -> None:
    rate, tat, now_ns = moment
    verdict = check(rate, tat, now_ns, cost)
    assert (verdict.remaining, verdict.reset_after_ns) == peek(rate, verdict.tat, now_ns)


@PROPERTY
@given(moment=moments())
def test_bucket_is_full_exactly_at_reset(moment: tuple[Rate, int, int]) -> None:
    rate, tat, now_ns = moment
    _, reset = peek(rate, tat, now_ns)
    assert peek(rate, tat, now_ns + reset) == (rate.limit, 0)
    if reset > 0:
        remaining, reset_then = peek(rate, tat, now_ns + reset - 1)
        assert remaining < rate.limit
        assert reset_then == 1


@PROPERTY
@given(fitting_checks())
def test_allowed_check_reports_when_the_bucket_is_full_again(case: Check) -> None:
    rate, tat, now_ns, cost = case
    verdict = check(rate, tat, now_ns, cost)
    assert verdict.allowed
    assert verdict.reset_after_ns > 0
    assert admits(rate, verdict.tat, now_ns + verdict.reset_after_ns) == rate.limit
    assert admits(rate, verdict.tat, now_ns + verdict.reset_after_ns - 1) < rate.limit


@PROPERTY
@given(rate=positive_rates, now_ns=instants, data=st.data())
def test_debt_is_repaid_before_the_next_unit(rate: Rate, now_ns: int, data: st.DataObject) -> None:
    taken = data.draw(st.integers(rate.limit + 1, 20 * rate.limit))
    tat = charge(rate, 0, now_ns, taken)
    verdict = check(rate, tat, now_ns, 1)
    assert not verdict.allowed
    assert peek(rate, tat, now_ns)[0] == 0
    # The debt (`taken` beyond the bucket) plus the one unit asked for must refill first.
    owed = taken - rate.limit + 1
    expected = -(-owed * rate.period_ns // rate.limit)
    assert verdict.retry_after_ns == expected
    assert not check(rate, tat, now_ns + expected - 1, 1).allowed
    assert check(rate, tat, now_ns + expected, 1).allowed
