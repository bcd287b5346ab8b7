"""The `Usage` value: token counts of one request, as the provider reported or as estimated."""

from dataclasses import dataclass
from decimal import Decimal


@dataclass(slots=True)  # not frozen: a frozen init costs twice as much, per request
class Usage:
    """Token counts of one request.

    `cached_tokens` are part of `prompt_tokens`; `reasoning_tokens` are part of
    `completion_tokens` (both as OpenAI reports them). `model` is the model the upstream
    says it served, when it says so. `provider_cost` is the USD cost the provider reported
    for the request (OpenRouter's `usage.cost`), when it reports one.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    model: str | None = None
    provider_cost: Decimal | None = None

    @classmethod
    def of(
        cls,
        prompt_tokens: int,
        completion_tokens: int,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        model: str | None = None,
    ) -> "Usage":
        """Build a `Usage` whose total is prompt + completion."""
        return cls(
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            reasoning_tokens,
            prompt_tokens + completion_tokens,
            model,
        )


ZERO_USAGE = Usage()
