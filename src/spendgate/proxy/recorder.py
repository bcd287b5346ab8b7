"""Settlement: price the usage, build the `UsageEvent`, hand it to the writer and metrics."""

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from spendgate.keys.principals import Principal
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.writer import LedgerWriter
from spendgate.metering.estimate import TokenEstimator
from spendgate.metering.pricing import PriceBook
from spendgate.metering.usage import ZERO_USAGE, Usage
from spendgate.metrics import GatewayMetrics
from spendgate.money import usd_to_pico
from spendgate.proxy.rewrite import PreparedRequest
from spendgate.request_log import RequestLog


class RequestIds:
    """Request ids `req_` + 24 hex digits: a random per-process prefix and a counter.

    Unique across processes and instances (48 random bits each) without a system call per
    request; ids are labels, not secrets, so they need not be unguessable.
    """

    def __init__(self) -> None:
        self._prefix = "req_" + secrets.token_hex(6)
        self._counter = itertools.count(1)

    def next(self) -> str:
        """A fresh id."""
        return f"{self._prefix}{next(self._counter):012x}"


@dataclass(slots=True)
class Outcome:
    """How a proxied request ended, as far as the ledger cares."""

    status: int
    usage: Usage | None = None
    completion_text: str = ""
    error_code: str | None = None
    upstream: str | None = None  # name of the upstream that answered
    provider: str | None = None  # its genai-prices provider id ("openai", "azure", …), if known
    upstream_seconds: float | None = None  # request sent → response headers
    first_token_seconds: float | None = None  # streams: request → first bytes relayed


class Recorder:
    """Turns a finished request into one usage event."""

    def __init__(
        self,
        writer: LedgerWriter,
        prices: PriceBook,
        estimator: TokenEstimator,
        metrics: GatewayMetrics,
        request_log: RequestLog | None = None,
    ) -> None:
        self._writer = writer
        self._prices = prices
        self._estimator = estimator
        self._metrics = metrics
        self._request_log = request_log
        self._ids = RequestIds()

    def new_request_id(self) -> str:
        """A unique request id for the ledger and the `x-spendgate-request-id` header."""
        return self._ids.next()

    def price(
        self, usage: Usage, requested_model: str | None, provider: str | None = None
    ) -> tuple[str | None, Decimal | None]:
        """The model priced and the exact cost of `usage` (at `provider`'s price, if known)."""
        return self._prices.cost(usage, requested_model, provider)

    async def prepare_estimate(self, request: PreparedRequest, outcome: Outcome) -> None:
        """Load the tokenizer an estimate will need, off the event loop, if not yet loaded.

        Vocabularies cost ~40-70 MB each and are needed only when usage never arrives, so
        they are loaded on first need rather than at start-up.
        """
        if (
            outcome.usage is None
            and request.metered
            and outcome.status < 400
            and not self._estimator.is_loaded_for(request.model)
        ):
            await asyncio.to_thread(self._estimator.load_for, request.model)

    def estimate(self, request: PreparedRequest, completion_text: str) -> Usage:
        """Token counts from the request and the relayed text, when no usage arrived."""
        if request.json is None or not request.metered:
            return ZERO_USAGE
        return self._estimator.estimate_usage(
            request.endpoint, request.json, request.model, completion_text
        )

    def record(
        self,
        request_id: str,
        principal: Principal,
        request: PreparedRequest,
        outcome: Outcome,
        started: float,
    ) -> tuple[Usage, Decimal | None, datetime]:
        """Write the event for one request; returns the usage, the cost and the event's time."""
        estimated = False
        usage = outcome.usage
        if usage is None:
            # Success without reported usage (stream cut, client gone, upstream silent):
            # count what we can from the request and from what was relayed.
            if request.metered and outcome.status < 400:
                usage = self.estimate(request, outcome.completion_text)
                estimated = True
            else:
                usage = ZERO_USAGE
        if usage.total_tokens or usage.prompt_tokens or usage.completion_tokens:
            model, cost = self.price(usage, request.model, outcome.provider)
        else:
            model, cost = usage.model or request.model, Decimal(0)
        event = UsageEvent(
            request_id=request_id,
            timestamp=datetime.now(UTC),
            user=principal.user.name,
            key_id=principal.key.id,
            key_display=principal.key.display,
            model=model or "",
            endpoint=request.endpoint,
            method=request.method,
            status=outcome.status,
            stream=request.stream,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            total_tokens=usage.total_tokens,
            cost_usd=cost,
            cost_pico=None if cost is None else usd_to_pico(cost),
            provider_cost_pico=(
                None if usage.provider_cost is None else usd_to_pico(usage.provider_cost)
            ),
            latency_ms=int((time.perf_counter() - started) * 1000),
            estimated=estimated,
            source="proxy",
            end_user=request.end_user,
            upstream=outcome.upstream,
            requested_model=request.model,
            error_code=outcome.error_code,
        )
        self._writer.record(event)
        self._metrics.observe(event, outcome.upstream_seconds, outcome.first_token_seconds)
        if self._request_log is not None:
            self._request_log.add(event)
        return usage, cost, event.timestamp
