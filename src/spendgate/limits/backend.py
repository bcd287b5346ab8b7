"""The one small interface for rate limits, spend counters and reservations.

A backend keeps three kinds of state and changes them atomically:
- one GCRA state per rate rule (`RateRule.key`);
- settled spend per scope (`user:NAME`, `key:ID`) and UTC day, on top of a baseline read once
  from the ledger (what was spent before the backend began counting);
- open reservations per scope, each with an expiry so a vanished request cannot leak one.

A backend counts a scope's spend from the first time it sees the scope (the in-process one:
from its creation); the baseline covers the ledger's rows stamped before. A settlement
carries its ledger row's timestamp, and is counted only if that is not before counting
began, so each row is counted once: by the baseline or by the backend. That holds for a
request that ends just before a scope is first seen and settles just after, and for one
whose settlement is replayed late.

`acquire` checks every rule of a request together and either takes them all (request
limits charged, worst-case cost reserved) or takes nothing. `commit` replaces the
reservation with the real cost and charges the real token count. The in-process backend
lives in `limits/memory.py`; a Redis backend implements the same protocol for many instances.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal, Protocol

from spendgate.limits.gcra import Rate

Unit = Literal["requests", "tokens"]
SpendKind = Literal["budget", "credits"]

# (scope, first day counted or None for all time) -> picodollars spent before counting began
Baseline = Callable[[str, date | None], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class RateRule:
    """One configured limit of one scope, e.g. the key's `requests_per_minute`."""

    key: str  # state key, unique per scope and limit name
    name: str  # the contract's limit name, e.g. "tokens_per_hour"
    scope: str
    unit: Unit
    rate: Rate


@dataclass(frozen=True, slots=True)
class SpendRule:
    """A cap on a scope's settled spend plus open reservations since `since`."""

    scope: str
    kind: SpendKind
    cap_pico: int
    since: date | None  # first day of the budget period; None: all time (credits)


@dataclass(frozen=True, slots=True)
class RateState:
    """A rate rule's numbers at one moment (for headers and `/me`)."""

    rule: RateRule
    remaining: int
    reset_after_ns: int


@dataclass(slots=True)
class Grant:
    """Everything `acquire` took for one request.

    `states` holds, for each unit with a rule, the state with the fewest units left after
    this request (the later reset on a tie): what the `x-ratelimit-*` headers tell.
    """

    states: list[RateState] = field(default_factory=list)
    reservation: int | None = None  # reservation id, None when nothing was reserved
    reserved_pico: int = 0
    scopes: tuple[str, ...] = ()  # where it was reserved (for backends that need telling)
    deadline_us: int = 0  # when the reservation expires, for backends that need telling


@dataclass(slots=True)
class Refusal:
    """Why `acquire` took nothing: for rates, the refusing rule with the longest wait and
    every rule's numbers; else the first spend rule at its cap."""

    kind: Literal["rate", "budget", "credits"]
    rule: RateRule | SpendRule
    retry_after_ns: int = 0  # for rate refusals
    states: list[RateState] = field(default_factory=list)


class LimitBackend(Protocol):
    """Atomic checks and charges over rate rules, spend and reservations."""

    async def acquire(
        self,
        rates: Sequence[RateRule],
        spends: Sequence[SpendRule],
        reserve_pico: int,
    ) -> Grant | Refusal:
        """Check all rules at once; take all of them, or nothing.

        Request rules are charged one request; token rules only need room for one token
        (they are charged with the real count by `commit`). Spend rules pass while settled
        spend plus open reservations is below the cap; then `reserve_pico` is reserved on
        every scope a spend rule names.
        """
        ...

    async def commit(
        self,
        grant: Grant,
        token_rules: Sequence[RateRule],
        scopes: Sequence[str],
        tokens: int,
        cost_pico: int,
        at: datetime | None = None,
    ) -> None:
        """End a request: drop its reservation, charge tokens and record its cost on `scopes`.

        `at` is the timestamp of the request's ledger row (None: now). A commit that raised
        may be called again with the same grant (`OutageGuard` does so when the store was
        unreachable). The Redis backend applies such a retry only if the first call did
        not, when the grant holds a reservation (see `lua/commit.lua`).
        """
        ...

    async def spent(self, scope: str, since: date | None) -> int:
        """Settled spend of `scope` from `since` (all time if None), in picodollars."""
        ...

    async def reserved(self, scope: str) -> int:
        """Open reservations of `scope`, in picodollars."""
        ...

    async def peek(self, rates: Sequence[RateRule]) -> list[RateState]:
        """The current numbers of each rule, changing nothing."""
        ...
