"""What the gateway does while the shared limit store (Redis) cannot be reached.

Two settings decide, one for rate limits and one for budgets and credits: `fail_open`
admits the request without counting it, `fail_closed` refuses it with a 503. A request
subject to both kinds of rule is refused if either says closed. Settlements that cannot be
written are kept (up to a bound) and replayed in order once Redis answers again, so the
counters catch up with what the ledger recorded meanwhile. A replay is the same call with
the same `Grant`; whether a settlement whose reply was lost counts twice is the backend's
to prevent (the Redis one does for settlements holding a reservation, `lua/commit.lua`).
"""

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spendgate.errors import LimitsUnavailable
from spendgate.limits.backend import Grant, LimitBackend, RateRule, RateState, Refusal, SpendRule
from spendgate.tasks import cancel_and_wait

log = logging.getLogger("spendgate")

# What "cannot be reached" means: refused connections, timeouts, an exhausted pool.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_MAX_BACKLOG = 100_000
_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class _Settlement:
    grant: Grant
    token_rules: Sequence[RateRule]
    scopes: Sequence[str]
    tokens: int
    cost_pico: int
    at: datetime | None


class OutageGuard:
    """A `LimitBackend` that applies the fail-open / fail-closed settings around another."""

    def __init__(
        self, backend: LimitBackend, *, limits_fail_open: bool, budgets_fail_open: bool
    ) -> None:
        self._backend = backend
        self._limits_open = limits_fail_open
        self._budgets_open = budgets_fail_open
        self._backlog: deque[_Settlement] = deque(maxlen=_MAX_BACKLOG)
        self._replay: asyncio.Task[None] | None = None
        self.errors = 0  # calls that failed because the store was unreachable
        self.down = False  # whether the last call failed to reach the store

    @property
    def backlog(self) -> int:
        """Settlements waiting to be replayed."""
        return len(self._backlog)

    async def acquire(
        self, rates: Sequence[RateRule], spends: Sequence[SpendRule], reserve_pico: int
    ) -> Grant | Refusal:
        """The backend's answer; when it is unreachable, admit or refuse as configured."""
        try:
            result = await self._backend.acquire(rates, spends, reserve_pico)
        except UNREACHABLE as exc:
            self._went_down(exc)
            if (rates and not self._limits_open) or (spends and not self._budgets_open):
                raise LimitsUnavailable(
                    "Limits and budgets cannot be checked right now; try again shortly."
                ) from exc
            return Grant()  # admitted uncounted: its settlement still reaches the counters
        self._came_back()
        return result

    async def commit(
        self,
        grant: Grant,
        token_rules: Sequence[RateRule],
        scopes: Sequence[str],
        tokens: int,
        cost_pico: int,
        at: datetime | None = None,
    ) -> None:
        """Settle now, or keep the settlement for replay when the store is unreachable."""
        settlement = _Settlement(grant, token_rules, scopes, tokens, cost_pico, at)
        if self._backlog:  # keep order: behind the ones already waiting
            self._keep(settlement)
            return
        try:
            await self._backend.commit(grant, token_rules, scopes, tokens, cost_pico, at)
        except UNREACHABLE as exc:
            self._went_down(exc)
            self._keep(settlement)
            return
        self._came_back()

    async def spent(self, scope: str, since: date | None) -> int:
        """Settled spend (503 while the store is unreachable)."""
        try:
            return await self._backend.spent(scope, since)
        except UNREACHABLE as exc:
            raise self._read_failed(exc) from exc

    async def reserved(self, scope: str) -> int:
        """Open reservations (503 while the store is unreachable)."""
        try:
            return await self._backend.reserved(scope)
        except UNREACHABLE as exc:
            raise self._read_failed(exc) from exc

    async def peek(self, rates: Sequence[RateRule]) -> list[RateState]:
        """Rate states (503 while the store is unreachable)."""
        try:
            return await self._backend.peek(rates)
        except UNREACHABLE as exc:
            raise self._read_failed(exc) from exc

    async def wait_replayed(self) -> None:
        """Wait until the kept settlements have been replayed."""
        if self._replay is not None:
            await asyncio.shield(self._replay)

    async def close(self) -> None:
        """Stop replaying (what is left stays in the ledger, which rebuilds nothing here)."""
        await cancel_and_wait(self._replay)
        self._replay = None

    # internals

    def _read_failed(self, exc: BaseException) -> LimitsUnavailable:
        self._went_down(exc)
        return LimitsUnavailable("Spend and limits cannot be read right now; try again shortly.")

    def _keep(self, settlement: _Settlement) -> None:
        if len(self._backlog) == self._backlog.maxlen:
            log.error("limit store unreachable: settlement backlog full, oldest dropped")
        self._backlog.append(settlement)
        if self._replay is None or self._replay.done():
            self._replay = asyncio.create_task(self._replay_backlog(), name="spendgate-replay")

    async def _replay_backlog(self) -> None:
        while self._backlog:
            s = self._backlog[0]
            try:
                await self._backend.commit(
                    s.grant, s.token_rules, s.scopes, s.tokens, s.cost_pico, s.at
                )
            except UNREACHABLE:
                await asyncio.sleep(_RETRY_SECONDS)
                continue
            self._backlog.popleft()
        self._came_back()

    def _went_down(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.down:
            log.warning("limit store unreachable (%s): %s", type(exc).__name__, _reason(exc))
        self.down = True

    def _came_back(self) -> None:
        if self.down:
            log.info("limit store reachable again")
        self.down = False


def _reason(exc: BaseException) -> str:
    """The error's first line, without any URL (which could hold a password)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text.split("redis://")[0].split("rediss://")[0].strip()
