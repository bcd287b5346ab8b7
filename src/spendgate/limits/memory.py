"""The in-process limit backend: dictionaries on the event loop, atomic by construction.

`acquire` awaits only to read baselines it has never seen (once per scope and period);
the checks and charges that follow run without an await in between, so no other request
can interleave. `commit` never awaits, so it cannot fail half-way or need a retry; it
counts every settlement (ignoring `at`, on the day it settles): this backend counts from
its creation, before any row its process settles was stamped. Good for one gateway
process; several processes need the Redis backend.
"""

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from spendgate.limits.backend import (
    Baseline,
    Grant,
    RateRule,
    RateState,
    Refusal,
    SpendRule,
)
from spendgate.limits.gcra import charge, check, peek, take
from spendgate.periods import DAY_NS, day_number, day_of

_KEEP_DAYS = 40  # longer than any calendar period but `total`, which keeps its own sum
_PRUNE_EVERY = 50_000  # states and baselines past their use are dropped this often


@dataclass(slots=True)
class _Reservation:
    amount: int
    scopes: tuple[str, ...]
    deadline_ns: int


class MemoryBackend:
    """Rate states, spend counters and reservations of one process."""

    def __init__(
        self,
        baseline: Baseline,
        *,
        reservation_ttl_ns: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._baseline = baseline
        self._ttl = reservation_ttl_ns
        self._clock = clock
        self._tat: dict[str, tuple[int, int]] = {}  # rule key -> (scaled TAT, limit)
        self._baselines: dict[tuple[str, date | None], int] = {}
        self._loading: dict[tuple[str, date | None], asyncio.Future[int]] = {}
        self._own_days: dict[str, dict[int, int]] = {}  # scope -> day number -> pico
        self._own_total: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        # Insertion order is deadline order (one TTL for all), so expiry reads from the front.
        self._open: OrderedDict[int, _Reservation] = OrderedDict()
        self._ids = itertools.count(1)
        self._operations = 0

    # the protocol

    async def acquire(
        self,
        rates: Sequence[RateRule],
        spends: Sequence[SpendRule],
        reserve_pico: int,
    ) -> Grant | Refusal:
        """Check every rule; take all of them or nothing (see `LimitBackend.acquire`)."""
        baselines = []
        for spend in spends:
            known = self._baselines.get((spend.scope, spend.since))
            if known is None:
                known = await self._baseline_of(spend.scope, spend.since)
            baselines.append(known)
        # From here to the return there is no await: this is the atomic section.
        now = self._clock()
        self._expire(now)
        tats = self._tat
        taken: list[tuple[str, tuple[int, int]]] = []  # request rules' new states
        # per unit, the tightest so far: (units left, state, rule)
        tightest: dict[str, tuple[int, int, RateRule]] = {}
        for rule in rates:
            rate = rule.rate
            limit = rate.limit
            entry = tats.get(rule.key)  # `_tat_of`, inlined: this loop is the hot path
            state = entry[0] if entry is not None and entry[1] == limit else 0
            after = take(rate, state, now, 1)
            if after is None:
                return self._refuse(rates, now)
            if rule.unit == "requests":
                state, left = after
                taken.append((rule.key, (state, limit)))
            else:  # token rules need room for one token now; commit charges the real count
                left = after[1] + 1
            best = tightest.get(rule.unit)
            if (
                best is None
                or left < best[0]
                or (left == best[0] and _resets_later(rule, state, best[2], best[1], now))
            ):
                tightest[rule.unit] = (left, state, rule)
        for spend, base in zip(spends, baselines, strict=True):
            scope = spend.scope
            used = base + self._own_since(scope, spend.since) + self._reserved.get(scope, 0)
            if used >= spend.cap_pico:
                return Refusal(spend.kind, spend)
        tats.update(taken)
        grant = Grant(
            [
                RateState(rule, left, peek(rule.rate, state, now)[1])
                for left, state, rule in tightest.values()
            ]
        )
        if spends and reserve_pico > 0:
            grant.reservation = self._reserve(spends, reserve_pico, now)
            grant.reserved_pico = reserve_pico
        return grant

    async def commit(
        self,
        grant: Grant,
        token_rules: Sequence[RateRule],
        scopes: Sequence[str],
        tokens: int,
        cost_pico: int,
        at: datetime | None = None,
    ) -> None:
        """Drop the reservation, charge `tokens` to the token rules, add the cost to `scopes`."""
        now = self._clock()
        if grant.reservation is not None:
            self._drop(grant.reservation)
            grant.reservation = None
        if tokens > 0:
            for rule in token_rules:
                self._tat[rule.key] = (
                    charge(rule.rate, self._tat_of(rule), now, tokens),
                    rule.rate.limit,
                )
        if cost_pico:
            day = now // DAY_NS
            for scope in scopes:
                days = self._own_days.setdefault(scope, {})
                days[day] = days.get(day, 0) + cost_pico
                self._own_total[scope] = self._own_total.get(scope, 0) + cost_pico
        self._operations += 1
        if self._operations % _PRUNE_EVERY == 0:
            self._prune(now)

    async def spent(self, scope: str, since: date | None) -> int:
        """Baseline plus what this process settled, from `since`."""
        return await self._baseline_of(scope, since) + self._own_since(scope, since)

    async def reserved(self, scope: str) -> int:
        """Open reservations of `scope`."""
        self._expire(self._clock())
        return self._reserved.get(scope, 0)

    async def peek(self, rates: Sequence[RateRule]) -> list[RateState]:
        """Each rule's numbers now."""
        return self._states(rates, self._clock())

    # internals

    def _tat_of(self, rule: RateRule) -> int:
        entry = self._tat.get(rule.key)
        if entry is None or entry[1] != rule.rate.limit:
            return 0  # never used, or the limit changed: start from a full bucket
        return entry[0]

    def _refuse(self, rates: Sequence[RateRule], now: int) -> Refusal:
        """The refusal naming the rule with the longest wait, with every rule's numbers."""
        refused, retry = rates[0], -1
        for rule in rates:
            verdict = check(rule.rate, self._tat_of(rule), now, 1)
            if not verdict.allowed and verdict.retry_after_ns > retry:
                refused, retry = rule, verdict.retry_after_ns
        return Refusal("rate", refused, retry, self._states(rates, now))

    def _states(self, rates: Sequence[RateRule], now: int) -> list[RateState]:
        return [RateState(rule, *peek(rule.rate, self._tat_of(rule), now)) for rule in rates]

    async def _baseline_of(self, scope: str, since: date | None) -> int:
        key = (scope, since)
        value = self._baselines.get(key)
        if value is not None:
            return value
        loading = self._loading.get(key)
        if loading is None:
            # One load per key, in its own task: a cancelled caller does not cancel it.
            loading = asyncio.ensure_future(self._load_baseline(key))
            loading.add_done_callback(_retrieve)
            self._loading[key] = loading
        return await asyncio.shield(loading)

    async def _load_baseline(self, key: tuple[str, date | None]) -> int:
        try:
            value = await self._baseline(*key)
            self._baselines[key] = value
            return value
        finally:
            del self._loading[key]

    def _own_since(self, scope: str, since: date | None) -> int:
        if since is None:
            return self._own_total.get(scope, 0)
        days = self._own_days.get(scope)
        if not days:
            return 0
        first = day_number(since)
        return sum(value for day, value in days.items() if day >= first)

    def _reserve(self, spends: Sequence[SpendRule], amount: int, now: int) -> int:
        scopes = tuple(dict.fromkeys(rule.scope for rule in spends))
        for scope in scopes:
            self._reserved[scope] = self._reserved.get(scope, 0) + amount
        reservation = next(self._ids)
        deadline = now + self._ttl
        self._open[reservation] = _Reservation(amount, scopes, deadline)
        return reservation

    def _drop(self, reservation: int) -> None:
        held = self._open.pop(reservation, None)
        if held is None:
            return  # expired already
        for scope in held.scopes:
            left = self._reserved[scope] - held.amount
            if left:
                self._reserved[scope] = left
            else:
                del self._reserved[scope]

    def _expire(self, now: int) -> None:
        held = self._open
        while held:
            reservation = next(iter(held))
            if held[reservation].deadline_ns > now:
                return
            self._drop(reservation)

    def _prune(self, now: int) -> None:
        self._tat = {key: entry for key, entry in self._tat.items() if entry[0] > now * entry[1]}
        oldest = now // DAY_NS - _KEEP_DAYS
        for days in self._own_days.values():
            for day in [day for day in days if day < oldest]:
                del days[day]
        oldest_day = day_of(oldest)
        self._baselines = {
            key: value
            for key, value in self._baselines.items()
            if key[1] is None or key[1] >= oldest_day
        }


def _resets_later(a: RateRule, a_state: int, b: RateRule, b_state: int, now: int) -> bool:
    """Whether bucket `a` is full again later than bucket `b` (exact, no division).

    States are scaled by each rule's own limit: the reset of `a` is (state - now·limit) / limit
    nanoseconds, so the two are compared by cross-multiplying.
    """
    la, lb = a.rate.limit, b.rate.limit
    return (a_state - now * la) * lb > (b_state - now * lb) * la


def _retrieve(task: "asyncio.Future[int]") -> None:
    """Mark a baseline load's failure as seen; its callers re-raise it themselves."""
    if not task.cancelled():
        task.exception()
