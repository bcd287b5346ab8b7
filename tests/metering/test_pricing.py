"""Price overrides, the bundled price database, and exact request costs."""

from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.metering.pricing import (
    ModelPrice,
    PriceBook,
    PricingConfigError,
    load_overrides,
)
from spendgate.metering.usage import Usage

PER_1M = Decimal("0.000001")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def price(input_: str, output: str, cached: str | None = None, source: str = "test") -> ModelPrice:
    return ModelPrice(
        input_per_token=Decimal(input_),
        output_per_token=Decimal(output),
        cached_input_per_token=Decimal(cached if cached is not None else input_),
        source=source,
    )


@pytest.mark.parametrize(
    ("file_name", "file_text", "inline", "expected"),
    [
        pytest.param(
            "prices.json",
            '{"my-model": {"input_per_1m": 0.15, "output_per_1m": 0.6, '
            '"cached_input_per_1m": 0.075}}',
            None,
            {"my-model": price("1.5E-7", "6E-7", "7.5E-8", "pricing file")},
            id="json-file-with-cached",
        ),
        pytest.param(
            "prices.json",
            '{"my-model": {"input_per_1m": 3, "output_per_1m": 15}}',
            None,
            {"my-model": price("0.000003", "0.000015", None, "pricing file")},
            id="json-file-cached-falls-back-to-input",
        ),
        pytest.param(
            "prices.toml",
            '["gpt-4.1"]\ninput_per_1m = 2.0\noutput_per_1m = 8\ncached_input_per_1m = 0.5\n',
            None,
            {"gpt-4.1": price("0.000002", "0.000008", "5E-7", "pricing file")},
            id="toml-file",
        ),
        pytest.param(
            None,
            None,
            '{"m": {"input": 0.0015, "output": 0.002}}',
            {"m": price("0.0000015", "0.000002", None, "MODEL_PRICING_JSON")},
            id="inline-per-1k",
        ),
        pytest.param(
            None,
            None,
            '{"m": {"input": 0.001, "output": 0.002, "cached_input": 0.0005}}',
            {"m": price("0.000001", "0.000002", "5E-7", "MODEL_PRICING_JSON")},
            id="inline-with-cached",
        ),
        pytest.param(
            "prices.json",
            '{"both": {"input_per_1m": 1, "output_per_1m": 2}}',
            '{"both": {"input": 9, "output": 9}, "only-inline": {"input": 1, "output": 1}}',
            {
                "both": price("0.000001", "0.000002", None, "pricing file"),
                "only-inline": price("0.001", "0.001", None, "MODEL_PRICING_JSON"),
            },
            id="file-wins-over-inline",
        ),
        pytest.param(None, None, "  ", {}, id="blank-inline-is-none"),
        pytest.param(None, None, None, {}, id="nothing"),
    ],
)
def test_load_overrides(
    tmp_path: Path,
    file_name: str | None,
    file_text: str | None,
    inline: str | None,
    expected: dict[str, ModelPrice],
) -> None:
    path = write(tmp_path, file_name, file_text or "") if file_name else None
    assert load_overrides(path, inline) == expected


def test_prices_are_exact_decimals(tmp_path: Path) -> None:
    path = write(tmp_path, "p.json", '{"m": {"input_per_1m": 0.1, "output_per_1m": 0.3}}')
    model_price = load_overrides(path, None)["m"]
    assert model_price.input_per_token * 3 == Decimal("0.0000003")
    assert isinstance(model_price.output_per_token, Decimal)


@pytest.mark.parametrize(
    ("file_name", "file_text", "inline", "setting", "fragment"),
    [
        pytest.param(
            "p.json", "{", None, "SPENDGATE_PRICING_FILE", "not valid JSON", id="bad-json"
        ),
        pytest.param(
            "p.toml", "x = ", None, "SPENDGATE_PRICING_FILE", "not valid TOML", id="bad-toml"
        ),
        pytest.param(
            "p.json", "[1]", None, "SPENDGATE_PRICING_FILE", "object mapping", id="not-an-object"
        ),
        pytest.param(
            "p.json", '{"m": 5}', None, "SPENDGATE_PRICING_FILE", "'m'", id="entry-not-object"
        ),
        pytest.param(
            "p.json",
            '{"m": {"input_per_1m": 1}}',
            None,
            "SPENDGATE_PRICING_FILE",
            "missing key(s) 'output_per_1m'",
            id="missing-key",
        ),
        pytest.param(
            "p.json",
            '{"m": {"input_per_1m": 1, "output_per_1m": 1, "cache_per_1m": 1}}',
            None,
            "SPENDGATE_PRICING_FILE",
            "unknown key(s) 'cache_per_1m'",
            id="unknown-key",
        ),
        pytest.param(
            "p.json",
            '{"m": {"input_per_1m": -1, "output_per_1m": 1}}',
            None,
            "SPENDGATE_PRICING_FILE",
            "'input_per_1m' must be a non-negative number",
            id="negative",
        ),
        pytest.param(
            "p.json",
            '{"m": {"input_per_1m": "1", "output_per_1m": 1}}',
            None,
            "SPENDGATE_PRICING_FILE",
            "non-negative number",
            id="string-number",
        ),
        pytest.param(
            "p.json",
            '{"m": {"input_per_1m": true, "output_per_1m": 1}}',
            None,
            "SPENDGATE_PRICING_FILE",
            "non-negative number",
            id="boolean",
        ),
        pytest.param(
            "p.json",
            '{"m": {"input_per_1m": NaN, "output_per_1m": 1}}',
            None,
            "SPENDGATE_PRICING_FILE",
            "non-negative number",
            id="nan",
        ),
        pytest.param(
            "p.toml",
            "[m]\ninput_per_1m = inf\noutput_per_1m = 1\n",
            None,
            "SPENDGATE_PRICING_FILE",
            "non-negative number",
            id="toml-infinity",
        ),
        pytest.param(
            "p.toml",
            "[gpt-4.1]\ninput_per_1m = 2\noutput_per_1m = 8\n",
            None,
            "SPENDGATE_PRICING_FILE",
            "quote model names that contain dots",
            id="toml-unquoted-dotted-model",
        ),
        pytest.param(
            None, None, "{not json", "MODEL_PRICING_JSON", "not valid JSON", id="inline-bad-json"
        ),
        pytest.param(
            None,
            None,
            '{"m": {"input_per_1m": 1, "output_per_1m": 1}}',
            "MODEL_PRICING_JSON",
            "unknown key(s)",
            id="inline-uses-per-1k-keys",
        ),
        pytest.param(
            None,
            None,
            '{"": {"input": 1, "output": 1}}',
            "MODEL_PRICING_JSON",
            "non-empty",
            id="inline-empty-model-name",
        ),
        pytest.param(
            None, None, '"gpt-4o"', "MODEL_PRICING_JSON", "object mapping", id="inline-string"
        ),
    ],
)
def test_bad_configs_name_the_setting(
    tmp_path: Path,
    file_name: str | None,
    file_text: str | None,
    inline: str | None,
    setting: str,
    fragment: str,
) -> None:
    path = write(tmp_path, file_name, file_text or "") if file_name else None
    with pytest.raises(PricingConfigError) as raised:
        load_overrides(path, inline)
    message = str(raised.value)
    assert message.startswith(setting + ":")
    assert fragment in message
    assert "\n" not in message


def test_unreadable_pricing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(PricingConfigError, match=r"^SPENDGATE_PRICING_FILE: cannot read"):
        load_overrides(tmp_path / "absent.json", None)


def test_builtin_prices_come_from_the_bundled_database() -> None:
    book = PriceBook({})
    mini = book.price_of("gpt-4o-mini")
    assert mini is not None
    assert (mini.input_per_token, mini.output_per_token, mini.cached_input_per_token) == (
        Decimal("1.5E-7"),
        Decimal("6E-7"),
        Decimal("7.5E-8"),
    )
    assert mini.source.startswith("genai-prices ")
    assert mini.source.endswith("(openai)")
    claude = book.describe("claude-3-5-sonnet-latest")
    assert claude is not None and claude.source.endswith("(anthropic)")
    embedding = book.price_of("text-embedding-3-small")
    assert embedding is not None and embedding.output_per_token == 0
    assert book.price_of("no-such-model-anywhere") is None


def test_lookups_are_cached_per_model() -> None:
    book = PriceBook({})
    assert book.price_of("gpt-4o") is book.price_of("gpt-4o")
    assert book.price_of("nope") is None and book.price_of("nope") is None


OVERRIDE = price("0.000001", "0.000002", "0.0000005", "pricing file")


@pytest.mark.parametrize(
    ("overrides", "usage", "requested", "expected"),
    [
        pytest.param(
            {},
            Usage.of(1000, 500, 200, model="gpt-4o-mini"),
            None,
            ("gpt-4o-mini", Decimal("0.000435")),
            id="builtin-gpt-4o-mini-with-cache",
        ),
        pytest.param(
            {},
            Usage.of(1000, 500, 200, 300, model="gpt-4o-mini"),
            None,
            ("gpt-4o-mini", Decimal("0.000435")),
            id="reasoning-not-charged-twice",
        ),
        pytest.param(
            {"gpt-4o-mini": OVERRIDE},
            Usage.of(1000, 500, 200, model="gpt-4o-mini"),
            None,
            ("gpt-4o-mini", Decimal("0.0019")),
            id="override-beats-builtin",
        ),
        pytest.param(
            {"gpt-4o-mini": OVERRIDE},
            Usage.of(100, 10, model="gpt-4o-mini"),
            "gpt-4o",
            ("gpt-4o-mini", Decimal("0.00012")),
            id="served-model-is-priced",
        ),
        pytest.param(
            {"my-alias": OVERRIDE},
            Usage.of(100, 10, model="unpriced-served-model"),
            "my-alias",
            ("unpriced-served-model", Decimal("0.00012")),
            id="unpriced-served-uses-requested-price",
        ),
        pytest.param(
            {"my-alias": OVERRIDE},
            Usage.of(100, 10),
            "my-alias",
            ("my-alias", Decimal("0.00012")),
            id="no-served-model-uses-requested",
        ),
        pytest.param(
            {},
            Usage.of(100, 10, model="unpriced-a"),
            "unpriced-b",
            ("unpriced-a", None),
            id="neither-priced",
        ),
        pytest.param({}, Usage.of(100, 10), None, (None, None), id="no-model-at-all"),
        pytest.param(
            {"m": OVERRIDE},
            Usage.of(100, 0, 500, model="m"),
            None,
            ("m", Decimal("0.00005")),
            id="cached-clamped-to-prompt",
        ),
        pytest.param(
            {"m": OVERRIDE},
            Usage.of(100, 0, -5, model="m"),
            None,
            ("m", Decimal("0.0001")),
            id="negative-cached-clamped-to-zero",
        ),
        pytest.param(
            {"m": price("0.000001", "0.000002")},
            Usage.of(100, 0, 40, model="m"),
            None,
            ("m", Decimal("0.0001")),
            id="cached-price-defaults-to-input",
        ),
        pytest.param(
            {},
            Usage.of(1_000_000, 0, model="text-embedding-3-small"),
            None,
            ("text-embedding-3-small", Decimal("0.02")),
            id="builtin-embedding",
        ),
    ],
)
def test_cost(
    overrides: dict[str, ModelPrice],
    usage: Usage,
    requested: str | None,
    expected: tuple[str | None, Decimal | None],
) -> None:
    model, cost = PriceBook(overrides).cost(usage, requested)
    assert (model, cost) == expected
    if cost is not None:
        assert isinstance(cost, Decimal)


def test_override_file_to_cost_end_to_end(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.json",
        '{"gpt-4o-mini": {"input_per_1m": 0.15, "output_per_1m": 0.6, '
        '"cached_input_per_1m": 0.075}}',
    )
    book = PriceBook(load_overrides(path, '{"gpt-4o-mini": {"input": 1, "output": 1}}'))
    _, cost = book.cost(Usage.of(1000, 500, 200, model="gpt-4o-mini"), None)
    assert cost == Decimal("0.000435")
    assert str(cost.normalize()) == "0.000435"
    mini = book.describe("gpt-4o-mini")
    assert mini is not None and mini.source == "pricing file"


def test_a_provider_with_its_own_entry_prices_at_its_own_rate() -> None:
    # genai-prices lists Azure's davinci at USD 2 per million input tokens, OpenAI's at 20.
    book = PriceBook({})
    azure, openai = book.price_of("davinci", "azure"), book.price_of("davinci")
    assert azure is not None and openai is not None
    assert (azure.input_per_token, azure.source.endswith("(azure)")) == (Decimal("2E-6"), True)
    assert (openai.input_per_token, openai.source.endswith("(openai)")) == (Decimal("2E-5"), True)
    assert book.price_of("davinci", "openai") == openai
    _, cost = book.cost(Usage.of(1000, 0, model="davinci"), None, "azure")
    assert cost == Decimal("0.002")


def test_openrouter_prices_its_vendor_prefixed_model_ids() -> None:
    book = PriceBook({})
    routed = book.price_of("openai/gpt-4o-mini", "openrouter")
    assert routed is not None and routed.source.endswith("(openrouter)")
    assert routed.input_per_token == Decimal("1.5E-7")
    # Haiku 4.5's batch tier, which only OpenRouter lists: half Anthropic's price.
    batch = book.price_of("anthropic/claude-haiku-4.5:batch", "openrouter")
    direct = book.price_of("claude-haiku-4-5")
    assert batch is not None and direct is not None
    assert batch.input_per_token * 2 == direct.input_per_token
    assert book.price_of("openai/gpt-4o-mini") is None  # the id means nothing without it


@pytest.mark.parametrize("provider", ["openrouter", "no-such-provider", "openai", None])
def test_a_provider_without_an_entry_falls_back_to_the_provider_less_price(
    provider: str | None,
) -> None:
    price_ = PriceBook({}).price_of("gpt-4o-mini", provider)
    assert price_ is not None and price_.source.endswith("(openai)")
    assert price_.input_per_token == Decimal("1.5E-7")


def test_overrides_win_over_every_provider() -> None:
    book = PriceBook({"davinci": OVERRIDE, "openai/gpt-4o-mini": OVERRIDE})
    assert book.price_of("davinci", "azure") is OVERRIDE
    assert book.price_of("openai/gpt-4o-mini", "openrouter") is OVERRIDE
    assert book.price_of("openai/gpt-4o-mini") is OVERRIDE


def test_lookups_are_cached_per_provider_and_model() -> None:
    book = PriceBook({})
    azure = book.price_of("davinci", "azure")
    assert book.price_of("davinci", "azure") is azure
    assert book.price_of("davinci") is not azure
    assert book.price_of("davinci") is book.price_of("davinci")


def test_cost_falls_back_to_the_requested_model_at_the_providers_price() -> None:
    usage = Usage.of(1000, 0, model="an-unknown-snapshot")
    model, cost = PriceBook({}).cost(usage, "davinci", "azure")
    assert (model, cost) == ("an-unknown-snapshot", Decimal("0.002"))
