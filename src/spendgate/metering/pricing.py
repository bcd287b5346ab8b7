"""Prices per token and the cost of a request, in exact decimals.

Prices come, in order of precedence, from the pricing file (`SPENDGATE_PRICING_FILE`, USD
per million tokens), from `MODEL_PRICING_JSON` (USD per thousand tokens) and from the
price database bundled with the `genai-prices` package. The bundled data is read as
shipped: its updater, which downloads newer prices, is never used. Each (provider, model)
pair is resolved once per `PriceBook` and cached, so pricing a request is a dict lookup and
three products.

The provider is the genai-prices id of the upstream that answered ("openai", "azure",
"openrouter"): Azure and OpenRouter publish their own prices, and OpenRouter names models
`vendor/model`. A provider with no entry for a model falls back to the provider-less lookup
(OpenAI's price first, then any provider whose models match the name).
"""

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, TieredPrices

from spendgate.metering.usage import Usage

PRICING_FILE_SETTING = "SPENDGATE_PRICING_FILE"
INLINE_PRICING_SETTING = "MODEL_PRICING_JSON"

# Keys of one model's entry: (required, optional) -> per-token scale.
_FILE_KEYS = (("input_per_1m", "output_per_1m"), ("cached_input_per_1m",), -6)
_INLINE_KEYS = (("input", "output"), ("cached_input",), -3)
_DEFAULT_PROVIDER = "openai"
# Bound on cached lookups: model names come from clients, so misses must not grow forever.
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per token for one model, and where that price came from."""

    input_per_token: Decimal
    output_per_token: Decimal
    cached_input_per_token: Decimal
    source: str


class PricingConfigError(ValueError):
    """A price override setting is malformed; the message names the setting."""


def load_overrides(pricing_file: Path | None, inline_json: str | None) -> dict[str, ModelPrice]:
    """Read the price overrides; the pricing file wins over `MODEL_PRICING_JSON`."""
    prices: dict[str, ModelPrice] = {}
    if inline_json is not None and inline_json.strip():
        document = _parse_json(inline_json, INLINE_PRICING_SETTING, "its value")
        prices.update(_read_prices(document, INLINE_PRICING_SETTING, _INLINE_KEYS))
    if pricing_file is not None:
        try:
            text = pricing_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PricingConfigError(
                f"{PRICING_FILE_SETTING}: cannot read {pricing_file}: {exc}"
            ) from exc
        if pricing_file.suffix.lower() == ".toml":
            try:
                document = tomllib.loads(text, parse_float=Decimal)
            except tomllib.TOMLDecodeError as exc:
                raise PricingConfigError(
                    f"{PRICING_FILE_SETTING}: {pricing_file} is not valid TOML: {exc}"
                ) from exc
        else:
            document = _parse_json(text, PRICING_FILE_SETTING, str(pricing_file))
        prices.update(_read_prices(document, PRICING_FILE_SETTING, _FILE_KEYS))
    return prices


class PriceBook:
    """Per-token prices by model name: overrides first, then the bundled price database."""

    __slots__ = ("_cache", "_overrides")

    def __init__(self, overrides: Mapping[str, ModelPrice]) -> None:
        self._overrides = dict(overrides)
        self._cache: dict[tuple[str | None, str], ModelPrice | None] = {}

    def price_of(self, model: str, provider: str | None = None) -> ModelPrice | None:
        """Return the price of `model` (exact override name, else built-in), or None.

        `provider` (a genai-prices provider id) picks that provider's built-in price when it
        lists the model; overrides apply whatever the provider.
        """
        key = (provider, model)
        try:
            return self._cache[key]
        except KeyError:
            pass
        price = self._overrides.get(model)
        if price is None:
            price = _builtin_price(model, provider)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = price
        return price

    def describe(self, model: str, provider: str | None = None) -> ModelPrice | None:
        """Return the price that applies to `model` (for `spendgate prices MODEL`)."""
        return self.price_of(model, provider)

    def cost(
        self, usage: Usage, requested_model: str | None, provider: str | None = None
    ) -> tuple[str | None, Decimal | None]:
        """Return (model recorded, USD cost or None when neither served nor requested is priced).

        `provider` is the answering upstream's genai-prices provider id, when known.
        """
        served = usage.model
        price = self.price_of(served, provider) if served else None
        if price is None and requested_model:
            price = self.price_of(requested_model, provider)
        model = served or requested_model
        if price is None:
            return model, None
        prompt = usage.prompt_tokens
        cached = min(max(usage.cached_tokens, 0), prompt) if prompt > 0 else 0
        return model, (
            (prompt - cached) * price.input_per_token
            + cached * price.cached_input_per_token
            + usage.completion_tokens * price.output_per_token
        )


def _builtin_price(model: str, provider: str | None = None) -> ModelPrice | None:
    """Look `model` up in genai-prices' bundled data.

    `provider`'s own token price first when one is given; then provider "openai", then any
    provider whose model patterns match.
    """
    snapshot = data_snapshot.get_snapshot()
    if provider is not None and provider != _DEFAULT_PROVIDER:
        try:
            found, model_info = snapshot.find_provider_model(model, None, provider, None)
        except LookupError:  # no such provider, or it does not list the model
            pass
        else:
            price = _token_price(model_info, found.id)
            if price is not None:
                return price
    for provider_id in (_DEFAULT_PROVIDER, None):
        try:
            found, model_info = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            continue
        return _token_price(model_info, found.id)
    return None


def _token_price(model_info: ModelInfo, provider_id: str) -> ModelPrice | None:
    """The model's current per-token price, or None when it is not priced by the token."""
    prices = model_info.get_prices(datetime.now(tz=UTC))
    input_price = _per_million(getattr(prices, "input_mtok", None))
    output_price = _per_million(getattr(prices, "output_mtok", None))
    if input_price is None and output_price is None:
        return None  # priced by something other than tokens (images, audio seconds…)
    input_price = input_price if input_price is not None else Decimal(0)
    cached_price = _per_million(getattr(prices, "cache_read_mtok", None))
    return ModelPrice(
        input_per_token=input_price,
        output_per_token=output_price if output_price is not None else Decimal(0),
        cached_input_per_token=cached_price if cached_price is not None else input_price,
        source=f"genai-prices {genai_prices.__version__} ({provider_id})",
    )


def _per_million(price: object) -> Decimal | None:
    """USD per token from a genai-prices USD-per-million value (tiers: the base price)."""
    if isinstance(price, TieredPrices):
        price = price.base
    if isinstance(price, Decimal | int):
        return Decimal(price).scaleb(-6)
    return None


def _parse_json(text: str, setting: str, what: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal, parse_int=Decimal)
    except json.JSONDecodeError as exc:
        raise PricingConfigError(f"{setting}: {what} is not valid JSON: {exc}") from exc


def _read_prices(
    document: Any, setting: str, keys: tuple[tuple[str, ...], tuple[str, ...], int]
) -> dict[str, ModelPrice]:
    """Validate one override document into prices; any defect raises `PricingConfigError`."""
    required, optional, scale = keys
    if not isinstance(document, dict):
        raise PricingConfigError(
            f"{setting}: expected an object mapping model names to prices, "
            f"got {type(document).__name__}"
        )
    source = "pricing file" if setting == PRICING_FILE_SETTING else setting
    prices: dict[str, ModelPrice] = {}
    for model, entry in document.items():
        if not isinstance(model, str) or not model.strip():
            raise PricingConfigError(f"{setting}: model names must be non-empty strings")
        if not isinstance(entry, dict):
            raise PricingConfigError(
                f"{setting}: model {model!r}: expected an object with keys "
                f"{', '.join(required + optional)}, got {type(entry).__name__}"
            )
        unknown = sorted(set(entry) - set(required) - set(optional))
        if unknown:
            nested = any(isinstance(entry[key], dict) for key in unknown)
            raise PricingConfigError(
                f"{setting}: model {model!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(required + optional)}"
                + ('; in TOML, quote model names that contain dots: ["gpt-4.1"]' if nested else "")
            )
        missing = [key for key in required if key not in entry]
        if missing:
            raise PricingConfigError(
                f"{setting}: model {model!r}: missing key(s) {', '.join(map(repr, missing))}"
            )
        values = [_price_value(entry[key], setting, model, key) for key in required]
        cached_key = optional[0]
        cached = (
            _price_value(entry[cached_key], setting, model, cached_key)
            if cached_key in entry
            else values[0]
        )
        prices[model] = ModelPrice(
            input_per_token=values[0].scaleb(scale),
            output_per_token=values[1].scaleb(scale),
            cached_input_per_token=cached.scaleb(scale),
            source=source,
        )
    return prices


def _price_value(value: object, setting: str, model: str, key: str) -> Decimal:
    """One price as an exact Decimal; booleans, strings, NaN, infinities and negatives fail."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise PricingConfigError(
            f"{setting}: model {model!r}: {key!r} must be a non-negative number "
            f"(USD), got {value if isinstance(value, Decimal) else repr(value)}"
        )
    return value
