"""Admission with limits: model allow-lists, rate limits, budgets and prepaid credits.

`LimitPolicy` turns a principal's settings into backend rules, asks the backend to take
them all at once, and maps a refusal to the contract's error (403, 402 or 429). A request
that is admitted reserves its worst-case cost (prompt bytes as tokens at the input price,
plus its max-token bound, or the configured default, at the output price) on every
budget and balance it is subject to; `settle` replaces that with the real cost.

Scopes name what a counter belongs to: `user:NAME` and `key:ID@NAME` (the key's user).
Every settled cost is recorded on both, whether or not they have a budget now, so a budget
set later starts from the exact spend.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from fnmatch import fnmatchcase

from spendgate.errors import BudgetExceeded, InsufficientCredits, ModelNotAllowed, RateLimitExceeded
from spendgate.keys.principals import Principal
from spendgate.ledger.records import KeyRecord, UserRecord
from spendgate.limits.admission import Admitted
from spendgate.limits.backend import Grant, LimitBackend, RateRule, RateState, Refusal, SpendRule
from spendgate.limits.gcra import Rate
from spendgate.limits.headers import rate_headers, retry_after_seconds
from spendgate.limits.names import LIMIT_WINDOWS
from spendgate.metering.pricing import PriceBook
from spendgate.metering.usage import ZERO_USAGE, Usage
from spendgate.money import format_usd, pico_to_usd, usd_to_pico, usd_to_pico_ceil
from spendgate.periods import DAY_NS, day_of, period_resets_at, period_start
from spendgate.proxy.rewrite import PreparedRequest

_NS_PER_S = 1_000_000_000


def user_scope(name: str) -> str:
    """The counter scope of a user."""
    return f"user:{name}"


def key_scope(key_id: int, owner: str) -> str:
    """The counter scope of a key; it names the key's user, whose counters it sits beside."""
    return f"key:{key_id}@{owner}"


def rate_rules(scope: str, limits: dict[str, int]) -> list[RateRule]:
    """The rate rules of one scope's limits."""
    rules = []
    for name, limit in limits.items():
        unit, seconds = LIMIT_WINDOWS[name]
        rules.append(
            RateRule(f"{scope}:{name}", name, scope, unit, Rate(limit, seconds * _NS_PER_S))
        )
    return rules


def model_allowed(model: str, globs: list[str]) -> bool:
    """Whether `model` matches one of the allow-list globs (case-sensitive)."""
    return any(fnmatchcase(model, glob) for glob in globs)


@dataclass(slots=True)
class _Rules:
    """What one principal is subject to, built once per cached principal."""

    principal: Principal
    rates: list[RateRule]
    token_rates: list[RateRule]
    scopes: tuple[str, str]
    spends_day: int = -1
    spends: list[SpendRule] = field(default_factory=list)


@dataclass(slots=True)
class _Ticket:
    rules: _Rules
    grant: Grant


@dataclass(frozen=True, slots=True)
class BudgetView:
    """A budget's state for display."""

    usd: Decimal
    period: str
    spent_usd: Decimal
    remaining_usd: Decimal
    resets_at: datetime | None


class LimitPolicy:
    """The `Admission` used by the gateway: limits, budgets, credits and allow-lists."""

    def __init__(
        self,
        backend: LimitBackend,
        prices: PriceBook,
        *,
        default_max_tokens: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._backend = backend
        self._prices = prices
        self._default_max_tokens = default_max_tokens
        self._clock = clock
        self._rules: dict[int, _Rules] = {}
        self._token_prices: dict[str, tuple[int, int] | None] = {}
        self.reservations_open = 0  # held by requests in progress (for metrics)
        self.reserved_pico = 0

    @property
    def backend(self) -> LimitBackend:
        """The backend holding the counters."""
        return self._backend

    # Admission

    async def admit(self, principal: Principal, request: PreparedRequest) -> Admitted:
        """Check the allow-list, then take every rate, budget and credit rule together."""
        key = principal.key
        model = request.model
        if key.models is not None and model is not None and not model_allowed(model, key.models):
            raise ModelNotAllowed(f"This key may not use the model '{model}'.", param="model")
        rules = self._rules_of(principal)
        spends = self._spends(rules, self._clock()) if request.metered else []
        if not rules.rates and not spends:
            return Admitted(token=_Ticket(rules, Grant()))
        reserve = self._worst_case(request) if spends else 0
        result = await self._backend.acquire(rules.rates, spends, reserve)
        if isinstance(result, Refusal):
            raise self._refusal_error(principal, result)
        headers = rate_headers(result.states) if result.states else []
        if result.reservation is not None:
            self.reservations_open += 1
            self.reserved_pico += result.reserved_pico
        return Admitted(headers, result.reserved_pico, _Ticket(rules, result))

    async def settle(
        self,
        principal: Principal,
        admitted: Admitted,
        usage: Usage,
        cost: Decimal | None,
        at: datetime | None = None,
    ) -> None:
        """Charge the real tokens and cost, dropping the reservation; `at`: the row's time."""
        ticket = admitted.token
        if isinstance(ticket, _Ticket):
            rules, grant = ticket.rules, ticket.grant
        else:  # admitted elsewhere (tests, future callers): charge without a reservation
            rules, grant = self._rules_of(principal), Grant()
        cost_pico = usd_to_pico(cost) if cost else 0
        if grant.reservation is not None:
            self.reservations_open -= 1
            self.reserved_pico -= grant.reserved_pico
        await self._backend.commit(
            grant, rules.token_rates, rules.scopes, usage.total_tokens, cost_pico, at
        )

    async def release(self, principal: Principal, admitted: Admitted) -> None:
        """Give the reservation back without charging anything."""
        await self.settle(principal, admitted, ZERO_USAGE, None)

    # views for /me and the admin API

    async def budget_view(
        self, scope: str, budget_usd: Decimal | None, period: str | None
    ) -> BudgetView | None:
        """The budget of a scope with what is spent and left of it, or None if it has none."""
        if budget_usd is None:
            return None
        period = period or "monthly"
        today = self._today()
        spent = pico_to_usd(await self._backend.spent(scope, _since(period, today)))
        return BudgetView(
            usd=budget_usd,
            period=period,
            spent_usd=spent,
            remaining_usd=max(budget_usd - spent, Decimal(0)),
            resets_at=period_resets_at(period, today),
        )

    async def period_spend(self, user: UserRecord) -> Decimal:
        """What the user spent in its budget period so far (this month when it has none)."""
        since = _since(user.budget_period or "monthly", self._today())
        return pico_to_usd(await self._backend.spent(user_scope(user.name), since))

    async def balance(self, user: UserRecord) -> Decimal | None:
        """Prepaid credits minus every settled cost, or None if the user has no credit account."""
        if user.credit_usd is None:
            return None
        spent = await self._backend.spent(user_scope(user.name), None)
        return user.credit_usd - pico_to_usd(spent)

    async def limit_states(self, principal: Principal) -> list[RateState]:
        """Every rate rule of the principal with its numbers now."""
        return await self._backend.peek(self._rules_of(principal).rates)

    def now(self) -> datetime:
        """The policy clock's time (injected in tests)."""
        return datetime.fromtimestamp(self._clock() / _NS_PER_S, UTC)

    # internals

    def _today(self) -> date:
        return day_of(self._clock() // DAY_NS)

    def _rules_of(self, principal: Principal) -> _Rules:
        rules = self._rules.get(principal.key.id)
        if rules is not None and rules.principal is principal:
            return rules
        user, key = principal.user, principal.key
        rates = rate_rules(user_scope(user.name), user.limits)
        rates += rate_rules(key_scope(key.id, user.name), key.limits)
        rules = _Rules(
            principal=principal,
            rates=rates,
            token_rates=[rule for rule in rates if rule.unit == "tokens"],
            scopes=(user_scope(user.name), key_scope(key.id, user.name)),
        )
        if len(self._rules) >= 100_000:
            self._rules.clear()
        self._rules[key.id] = rules
        return rules

    def _spends(self, rules: _Rules, now_ns: int) -> list[SpendRule]:
        day = now_ns // DAY_NS
        if rules.spends_day != day:
            rules.spends = _spend_rules(rules.principal, day_of(day))
            rules.spends_day = day
        return rules.spends

    def _worst_case(self, request: PreparedRequest) -> int:
        if request.model is None:
            return 0
        try:
            prices = self._token_prices[request.model]
        except KeyError:
            price = self._prices.price_of(request.model)
            prices = None
            if price is not None:
                prices = (
                    usd_to_pico_ceil(price.input_per_token),
                    usd_to_pico_ceil(price.output_per_token),
                )
            if len(self._token_prices) >= 4096:
                self._token_prices.clear()
            self._token_prices[request.model] = prices
        if prices is None:
            return 0  # unpriced: its cost is not known and will not be charged
        output = request.max_output_tokens or self._default_max_tokens
        # One token per body byte is a true upper bound for text prompts.
        return len(request.body) * prices[0] + output * prices[1]

    def _refusal_error(
        self, principal: Principal, refusal: Refusal
    ) -> RateLimitExceeded | BudgetExceeded | InsufficientCredits:
        rule = refusal.rule
        if isinstance(rule, RateRule):
            headers = rate_headers(refusal.states, rule)
            seconds = retry_after_seconds(refusal.retry_after_ns)
            headers.append((b"retry-after", b"%d" % seconds))
            headers.append((b"retry-after-ms", b"%d" % -(-refusal.retry_after_ns // 1_000_000)))
            who = "user" if rule.scope.startswith("user:") else "key"
            return RateLimitExceeded(
                f"Rate limit reached for this {who}: {rule.name} is {rule.rate.limit}. "
                f"Try again in {seconds} s.",
                headers=headers,
            )
        if refusal.kind == "credits":
            return InsufficientCredits(
                f"The prepaid credit balance of user '{principal.user.name}' is spent. "
                "Ask an administrator for a top-up."
            )
        record: UserRecord | KeyRecord = (
            principal.user if rule.scope.startswith("user:") else principal.key
        )
        who = f"user '{principal.user.name}'" if record is principal.user else "this key"
        period = record.budget_period or "monthly"
        return BudgetExceeded(
            f"The {period} budget of {who} (${format_usd(pico_to_usd(rule.cap_pico))}) is spent."
        )


def _since(period: str, today: date) -> date | None:
    return None if period == "total" else period_start(period, today)


def _spend_rules(principal: Principal, today: date) -> list[SpendRule]:
    user, key = principal.user, principal.key
    rules = []
    if user.budget_usd is not None:
        period = user.budget_period or "monthly"
        rules.append(SpendRule(user_scope(user.name), "budget", usd_to_pico(user.budget_usd),
                               _since(period, today)))  # fmt: skip
    if key.budget_usd is not None:
        period = key.budget_period or "monthly"
        rules.append(SpendRule(key_scope(key.id, user.name), "budget", usd_to_pico(key.budget_usd),
                               _since(period, today)))  # fmt: skip
    if user.credit_usd is not None:
        rules.append(SpendRule(user_scope(user.name), "credits", usd_to_pico(user.credit_usd),
                               None))  # fmt: skip
    return rules
