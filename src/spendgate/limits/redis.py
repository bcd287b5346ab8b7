"""The Redis limit backend: rate states, spend counters and reservations shared by instances.

Every admission is one round trip: a Lua script (`lua/acquire.lua`) checks each rate and
spend rule of the request and takes them all or none, atomically on the server. Settlement
is a second script. Keys carry the user's name as a hash tag (`sg:{alice}:…`), so the keys
one script touches share a Redis Cluster slot.

Spend is counted per scope from the moment Redis first sees it (field `c` of the scope's
hash); what was spent before comes from the ledger once per scope and period, like the
in-process backend's baseline. After Redis is flushed the counters are therefore rebuilt
from the ledger on first use. A rebuild waits `settle_ns` past the start of counting before
it reads the ledger, so the rows of requests settled just before have been written.

Time is the Redis server's clock unless a `clock` is given (tests), so instances with
skewed clocks still share one timeline. Lua numbers are doubles, so each rate rule runs in
the finest unit (ns, µs, ms, s) in which its bucket stays exact below 2^53.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib.resources import files
from typing import Any

from redis.asyncio import Redis

from spendgate.limits.backend import Grant, RateRule, RateState, Refusal, SpendRule
from spendgate.limits.baseline import SpendHistory
from spendgate.limits.gcra import Rate, check, peek
from spendgate.periods import EPOCH, day_number

log = logging.getLogger("spendgate")

_EXACT = 2**47  # bucket size in units that leaves 64 buckets of token debt exact in doubles
_UNIX = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_MAX_LOADED = 100_000
_MAX_PLANS = 100_000
_RESERVED_ONLY = -2  # `first` for a read of the reservations alone


def _script(name: str) -> str:
    folder = files("spendgate.limits") / "lua"
    return (folder / "common.lua").read_text() + "\n" + (folder / name).read_text()


@dataclass(frozen=True, slots=True)
class _Plan:
    """The keys and argument words of one list of rules (or pair of lists), built once.

    The policy keeps its rule lists per principal (and spend rules per day), so the lists'
    identity names a plan; the plan holds them, so an identity is not reused while cached.
    Rule parameters travel as one string per list: a handful of arguments to encode per
    call instead of four per rule.
    """

    rates: Sequence[RateRule]
    spends: Sequence[SpendRule]
    scopes: tuple[str, ...]
    keys: list[str]
    words: list[str]  # the arguments after the per-call ones


def scope_tag(scope: str) -> str:
    """The hash tag of a scope: its user's name (`user:NAME`, `key:ID@NAME`)."""
    kind, _, rest = scope.partition(":")
    if kind == "key":
        return rest.partition("@")[2] or rest
    return rest


def rule_unit(rate: Rate) -> tuple[int, int]:
    """(exponent, period in units): the finest unit of 1000**exponent ns keeping it exact."""
    for exponent in range(4):
        unit = 1000**exponent
        if rate.period_ns % unit == 0 and rate.limit * (rate.period_ns // unit) <= _EXACT:
            return exponent, rate.period_ns // unit
    return 3, max(1, rate.period_ns // 1000**3)  # beyond exact: seconds, rounded


class RedisBackend:
    """`LimitBackend` on Redis: global limits, budgets and reservations for many instances."""

    def __init__(
        self,
        client: "Redis",
        history: SpendHistory,
        *,
        prefix: str,
        reservation_ttl_ns: int,
        settle_ns: int,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._client = client
        self._history = history
        self._prefix = prefix
        self._ttl_us = max(1, reservation_ttl_ns // 1000)
        self._settle_ns = settle_ns
        self._clock = clock
        self._acquire = client.register_script(_script("acquire.lua"))
        self._commit = client.register_script(_script("commit.lua"))
        self._read = client.register_script(_script("read.lua"))
        self._peek = client.register_script(_script("peek.lua"))
        self._units: dict[Rate, tuple[int, int]] = {}
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._scope_keys: dict[str, tuple[str, str]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._loaded: set[tuple[str, str]] = set()
        self.repeats_skipped = 0  # settlements sent again and found applied already

    # keys

    def _hash(self, scope: str) -> str:
        return f"{self._prefix}:{{{scope_tag(scope)}}}:spend:{scope}"

    def _set(self, scope: str) -> str:
        return f"{self._prefix}:{{{scope_tag(scope)}}}:held:{scope}"

    def _state(self, rule: RateRule) -> str:
        return f"{self._prefix}:{{{scope_tag(rule.scope)}}}:rate:{rule.key}"

    def _ids(self, scope: str) -> str:
        return f"{self._prefix}:{{{scope_tag(scope)}}}:ids"

    def _unit(self, rate: Rate) -> tuple[int, int]:
        unit = self._units.get(rate)
        if unit is None:
            unit = self._units[rate] = rule_unit(rate)
        return unit

    def _now(self) -> list[str]:
        if self._clock is None:
            return ["", "0"]
        now = self._clock()
        return [str(now // 1000), str(now % 1000)]

    # the protocol

    async def acquire(
        self,
        rates: Sequence[RateRule],
        spends: Sequence[SpendRule],
        reserve_pico: int,
    ) -> Grant | Refusal:
        """Check every rule and take all of them or nothing, in one script."""
        plan = self._admission_plan(rates, spends)
        scopes = plan.scopes
        counts = (len(rates), len(scopes), len(spends))
        args: list[str | int] = [*self._now(), *counts, reserve_pico, self._ttl_us, *plan.words]
        keys = plan.keys
        while True:
            reply = await self._acquire(keys=keys, args=args)
            status, detail, now_us, now_ns = (int(value) for value in reply[:4])
            if status == 1:
                grant = self._grant(rates, reply[4:], detail, reserve_pico, tuple(scopes))
                grant.deadline_us = now_us + self._ttl_us  # the member's score in each set
                return grant
            if status == 0:
                return self._refuse(rates, reply[4:])
            if status == 3:
                refused = spends[detail - 1]
                return Refusal(refused.kind, refused)
            missing = reply[4:]
            now = now_us * 1000 + now_ns
            await asyncio.gather(
                *(
                    self._baseline(scopes[int(index) - 1], int(since), int(first), now)
                    for index, since, first in zip(
                        missing[0::3], missing[1::3], missing[2::3], strict=True
                    )
                )
            )

    async def commit(
        self,
        grant: Grant,
        token_rules: Sequence[RateRule],
        scopes: Sequence[str],
        tokens: int,
        cost_pico: int,
        at: datetime | None = None,
    ) -> None:
        """Drop the reservation, charge `tokens`, record `cost_pico` on `scopes`.

        Sent again after a failure (a lost reply), a settlement holding a reservation is
        applied once; one without a reservation is applied each time it is sent.
        """
        held = grant.scopes if grant.reservation is not None else ()
        charged = self._token_plan(token_rules if tokens > 0 else ())
        keys = [*charged.keys]
        keys += [self._scope_pair(scope)[0] for scope in scopes]
        for scope in held:
            keys += self._scope_pair(scope)
        member = f"{grant.reservation}:{grant.reserved_pico}" if held else ""
        stamp = "" if at is None else (at - _UNIX) // _MICROSECOND
        args: list[Any] = self._now()
        args += (len(charged.rates), len(scopes), len(held), tokens, cost_pico, stamp, member,
                 grant.deadline_us, self._ttl_us)  # fmt: skip
        args += charged.words
        if keys and not await self._commit(keys=keys, args=args):
            self.repeats_skipped += 1
            log.info("settlement found applied already (its reply was lost): skipped")
        # Only once it is settled: a settlement that fails is kept and sent again (see
        # `OutageGuard`) with this same grant, and must still release the reservation.
        grant.reservation = None

    async def spent(self, scope: str, since: date | None) -> int:
        """Settled spend of `scope` from `since`: the ledger's before counting, Redis's after."""
        settled, _ = await self._read_scope(scope, -1 if since is None else day_number(since))
        return settled

    async def reserved(self, scope: str) -> int:
        """Open reservations of `scope`."""
        _, held = await self._read_scope(scope, _RESERVED_ONLY)
        return held

    async def peek(self, rates: Sequence[RateRule]) -> list[RateState]:
        """Each rule's numbers now."""
        if not rates:
            return []
        args: list[Any] = self._now()
        for rule in rates:
            args += (rule.rate.limit, self._unit(rule.rate)[0])
        used = await self._peek(keys=[self._state(rule) for rule in rates], args=args)
        return [self._state_of(rule, int(value)) for rule, value in zip(rates, used, strict=True)]

    async def ping(self) -> None:
        """Raise if Redis does not answer."""
        await self._client.ping()

    # internals

    def _admission_plan(self, rates: Sequence[RateRule], spends: Sequence[SpendRule]) -> _Plan:
        ident = (id(rates), id(spends) if spends else 0)
        plan = self._plans.get(ident)
        if plan is not None and plan.rates is rates and (plan.spends is spends or not spends):
            return plan
        scopes = tuple(dict.fromkeys(rule.scope for rule in spends))
        anchor = scopes[0] if scopes else rates[0].scope if rates else ""
        keys = [self._ids(anchor)]
        keys += [self._state(rule) for rule in rates]
        for scope in scopes:
            keys += self._scope_pair(scope)
        rate_words: list[int] = []
        for rule in rates:
            exponent, period = self._unit(rule.rate)
            rate_words += (rule.rate.limit, exponent, period, 1 if rule.unit == "requests" else 0)
        spend_words: list[int] = []
        for spend in spends:
            first = -1 if spend.since is None else day_number(spend.since)
            spend_words += (scopes.index(spend.scope) + 1, first, spend.cap_pico)
        words = [_joined(rate_words), _joined(spend_words)]
        return self._keep(ident, _Plan(rates, spends, scopes, keys, words))

    def _token_plan(self, rules: Sequence[RateRule]) -> _Plan:
        ident = (id(rules), -1)
        plan = self._plans.get(ident)
        if plan is not None and (plan.rates is rules or not rules):
            return plan
        words: list[int] = []
        for rule in rules:
            words += (rule.rate.limit, *self._unit(rule.rate))
        keys = [self._state(rule) for rule in rules]
        return self._keep(ident, _Plan(rules, (), (), keys, [_joined(words)]))

    def _keep(self, ident: tuple[int, int], plan: _Plan) -> _Plan:
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[ident] = plan
        return plan

    def _scope_pair(self, scope: str) -> tuple[str, str]:
        """The scope's spend hash and reservation set."""
        pair = self._scope_keys.get(scope)
        if pair is None:
            if len(self._scope_keys) >= _MAX_PLANS:
                self._scope_keys.clear()
            pair = self._scope_keys[scope] = (self._hash(scope), self._set(scope))
        return pair

    def _grant(
        self,
        rates: Sequence[RateRule],
        used: Sequence[Any],
        reservation: int,
        reserve_pico: int,
        scopes: tuple[str, ...],
    ) -> Grant:
        # per unit, the tightest: (units left, reset key for ties, state)
        tightest: dict[str, tuple[int, tuple[int, int], RateState]] = {}
        for rule, value in zip(rates, used, strict=True):
            exponent, period = self._unit(rule.rate)
            limit = rule.rate.limit
            state = int(value) + (period if rule.unit == "requests" else 0)
            left = (limit * period - state) // period
            reset = _ceil_div(state, limit) * 1000**exponent if limit else 0
            # the exact reset, as a fraction state·unit/limit, orders ties
            order = (state * 1000**exponent, limit)
            best = tightest.get(rule.unit)
            if best is None or left < best[0] or (left == best[0] and _later(order, best[1])):
                tightest[rule.unit] = (left, order, RateState(rule, left, reset))
        grant = Grant([entry[2] for entry in tightest.values()])
        if reservation:
            grant.reservation = reservation
            grant.reserved_pico = reserve_pico
            grant.scopes = scopes
        return grant

    def _refuse(self, rates: Sequence[RateRule], used: Sequence[Any]) -> Refusal:
        """The refusal naming the rule with the longest wait, with every rule's numbers."""
        refused, retry = rates[0], -1
        states = []
        for rule, value in zip(rates, used, strict=True):
            exponent, period = self._unit(rule.rate)
            verdict = check(Rate(rule.rate.limit, period), int(value), 0, 1)
            wait = verdict.retry_after_ns * 1000**exponent
            if not verdict.allowed and wait > retry:
                refused, retry = rule, wait
            states.append(self._state_of(rule, int(value)))
        return Refusal("rate", refused, retry, states)

    def _state_of(self, rule: RateRule, used: int) -> RateState:
        exponent, period = self._unit(rule.rate)
        remaining, reset = peek(Rate(rule.rate.limit, period), used, 0)
        return RateState(rule, remaining, reset * 1000**exponent)

    async def _read_scope(self, scope: str, first: int) -> tuple[int, int]:
        """(settled spend from day `first`, open reservations); -1: all time."""
        keys = [self._hash(scope), self._set(scope)]
        while True:
            reply = await self._read(keys=keys, args=[*self._now(), first])
            now_us, now_ns, counting, field, base, held = reply[:6]
            if not field or base is not None:
                settled = sum(int(value) for value in reply[6:] if value is not None)
                return settled + int(base or 0), int(held)
            now = int(now_us) * 1000 + int(now_ns)
            await self._baseline(scope, int(counting), first, now)

    async def _baseline(self, scope: str, since_us: int, first: int, now_ns: int) -> None:
        """Read the ledger's spend of `scope` before counting began, once, into Redis."""
        key = (scope, f"{since_us}:{first}")
        if key in self._loaded:
            return  # in Redis already: a script that ran before it was there asks again
        loading = self._loading.get(key)
        if loading is None:
            # One read per scope and period, in its own task: a cancelled caller does not
            # cancel the others waiting for it.
            loading = asyncio.ensure_future(self._load_baseline(scope, since_us, first, now_ns))
            loading.add_done_callback(_retrieve)
            self._loading[key] = loading
        await asyncio.shield(loading)

    async def _load_baseline(self, scope: str, since_us: int, first: int, now_ns: int) -> None:
        try:
            wait_ns = since_us * 1000 + self._settle_ns - now_ns
            if wait_ns > 0:  # let rows settled just before counting began reach the ledger
                await asyncio.sleep(wait_ns / 1e9)
            before = _UNIX + timedelta(microseconds=since_us)
            day = None if first < 0 else EPOCH + timedelta(days=first)
            value = await self._history(scope, day, before)
            field = "b:all" if first < 0 else f"b:{first}"
            await self._client.hsetnx(self._hash(scope), field, value)
            if len(self._loaded) >= _MAX_LOADED:
                self._loaded.clear()
            self._loaded.add((scope, f"{since_us}:{first}"))
        finally:
            del self._loading[(scope, f"{since_us}:{first}")]


def _joined(numbers: list[int]) -> str:
    return " ".join(map(str, numbers))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _later(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether fraction a[0]/a[1] is larger than b[0]/b[1] (exact)."""
    return a[0] * b[1] > b[0] * a[1]


def _retrieve(task: "asyncio.Future[None]") -> None:
    """Mark a baseline load's failure as seen; its callers re-raise it themselves."""
    if not task.cancelled():
        task.exception()
