"""`UsageEvent`: one ledger row, built by the hot path and written by the batched writer."""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from spendgate.money import usd_to_pico

Source = Literal["proxy", "ingest"]


@dataclass(slots=True)  # not frozen: a frozen init costs twice as much, per request
class UsageEvent:
    """Everything the ledger keeps about one request.

    `request_id` is unique in the ledger: writing the same event twice counts it once.
    `cost_usd` is None when the model has no known price. `provider_cost_pico` is the cost
    the provider itself reported (OpenRouter's `usage.cost`), None when it reported none.
    """

    request_id: str
    timestamp: datetime  # timezone-aware UTC
    user: str
    key_id: int | None
    model: str  # the model priced: the one the upstream served, else the requested one
    endpoint: str  # "chat/completions", "embeddings", ...
    method: str
    status: int
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: Decimal | None
    latency_ms: int
    estimated: bool = False
    source: Source = "proxy"
    end_user: str | None = None
    upstream: str | None = None
    requested_model: str | None = None
    error_code: str | None = None
    key_display: str | None = None
    cost_pico: int | None = None  # `cost_usd` in picodollars; filled in when not given
    provider_cost_pico: int | None = None

    def __post_init__(self) -> None:
        if self.cost_pico is None and self.cost_usd is not None:
            self.cost_pico = usd_to_pico(self.cost_usd)
