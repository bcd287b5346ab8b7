"""GCRA, the generic cell rate algorithm: one integer of state per limit, exact arithmetic.

A limit of `limit` units per `period` lets a burst of `limit` units through at once and
then refills continuously, one unit every `period / limit` (as OpenAI's own limits do).
The state is the theoretical arrival time (TAT): the moment the bucket is full again.

To stay exact for any limit, times are kept *scaled* by the limit: a scaled time is a
nanosecond count multiplied by `limit`, so one unit costs exactly `period_ns` scaled
nanoseconds and nothing is ever rounded. Everything here is a pure function of integers.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Rate:
    """`limit` units per `period_ns` nanoseconds (`limit` >= 0, `period_ns` > 0)."""

    limit: int
    period_ns: int
    capacity: int = field(init=False, compare=False, repr=False)  # the bucket, scaled ns

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity", self.limit * self.period_ns)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one check: allowed or not, and the state and numbers that follow."""

    allowed: bool
    tat: int  # the new state if allowed (commit it); the old state if not
    remaining: int  # whole units still available right after this check
    reset_after_ns: int  # until the bucket is full again
    retry_after_ns: int  # 0 if allowed; else the wait until this check would pass


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def check(rate: Rate, tat: int, now_ns: int, cost: int) -> Verdict:
    """Whether `cost` units fit now; if so, `tat` is the state after taking them."""
    now = now_ns * rate.limit
    base = max(tat, now)
    new_tat = base + cost * rate.period_ns
    over = new_tat - now - rate.capacity
    if over <= 0 and rate.limit > 0:
        return Verdict(True, new_tat, *_numbers(rate, new_tat, now), 0)
    remaining, reset = _numbers(rate, base, now)
    # A cost over the limit can never fit: say "a full period" rather than 0.
    retry = rate.period_ns if cost > rate.limit or rate.limit == 0 else _ceil_div(over, rate.limit)
    return Verdict(False, tat, remaining, reset, retry)


def take(rate: Rate, tat: int, now_ns: int, cost: int) -> tuple[int, int] | None:
    """`(state after, units left)` if `cost` units fit now, else None (the hot-path `check`)."""
    limit = rate.limit
    now = now_ns * limit
    new_tat = (tat if tat > now else now) + cost * rate.period_ns
    left = rate.capacity - (new_tat - now)
    if left < 0 or limit == 0:
        return None
    return new_tat, left // rate.period_ns


def charge(rate: Rate, tat: int, now_ns: int, cost: int) -> int:
    """The state after taking `cost` units unconditionally (it may go into debt)."""
    now = now_ns * rate.limit
    return max(tat, now) + cost * rate.period_ns


def peek(rate: Rate, tat: int, now_ns: int) -> tuple[int, int]:
    """Whole units available now, and nanoseconds until the bucket is full."""
    now = now_ns * rate.limit
    return _numbers(rate, max(tat, now), now)


def _numbers(rate: Rate, tat: int, now: int) -> tuple[int, int]:
    used = tat - now
    if rate.limit == 0:
        return 0, 0
    remaining = max(0, (rate.capacity - used) // rate.period_ns)
    return remaining, _ceil_div(used, rate.limit)
