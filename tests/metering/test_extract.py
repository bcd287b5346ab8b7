"""Reading usage from complete (non-streamed) responses of every metered endpoint."""

from decimal import Decimal
from typing import Any

import orjson
import pytest

from spendgate.metering.extract import provider_cost, read_usage, usage_from_mapping
from spendgate.metering.usage import Usage


def body(document: Any) -> bytes:
    return orjson.dumps(document)


CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0},
    },
}
COMPLETIONS = {
    "object": "text_completion",
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": "yes", "index": 0}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}
EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
RESPONSES = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "model": "o3-2025-04-16",
    "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}],
    "usage": {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 512},
        "output_tokens": 400,
        "output_tokens_details": {"reasoning_tokens": 256},
        "total_tokens": 1300,
    },
}


@pytest.mark.parametrize(
    ("endpoint", "payload", "expected"),
    [
        pytest.param(
            "chat/completions",
            body(CHAT),
            Usage(1200, 300, 1024, 128, 1500, "gpt-4o-mini-2024-07-18"),
            id="chat-cached-and-reasoning",
        ),
        pytest.param(
            "/v1/chat/completions",
            body(CHAT),
            Usage(1200, 300, 1024, 128, 1500, "gpt-4o-mini-2024-07-18"),
            id="chat-path-with-v1-prefix",
        ),
        pytest.param(
            "completions",
            body(COMPLETIONS),
            Usage(5, 7, 0, 0, 12, "gpt-3.5-turbo-instruct"),
            id="completions",
        ),
        pytest.param(
            "embeddings",
            body(EMBEDDINGS),
            Usage(8, 0, 0, 0, 8, "text-embedding-3-small"),
            id="embeddings-no-completion",
        ),
        pytest.param(
            "responses",
            body(RESPONSES),
            Usage(900, 400, 512, 256, 1300, "o3-2025-04-16"),
            id="responses-api",
        ),
        pytest.param(
            "chat/completions",
            body({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
            Usage(3, 4, 0, 0, 7, None),
            id="no-model-total-defaults",
        ),
        pytest.param(
            "chat/completions",
            b'{"model": "m", "usage": {"prompt_tokens": 3}}',
            Usage(3, 0, 0, 0, 3, "m"),
            id="missing-completion",
        ),
        pytest.param("models", body(CHAT), None, id="unmetered-endpoint"),
        pytest.param("chat/completions", b"{not json", None, id="invalid-json"),
        pytest.param("chat/completions", b"", None, id="empty-body"),
        pytest.param("chat/completions", b"[1, 2]", None, id="not-an-object"),
        pytest.param("chat/completions", body({"model": "m"}), None, id="no-usage"),
        pytest.param("chat/completions", body({"usage": None}), None, id="usage-null"),
        pytest.param("chat/completions", body({"usage": [1]}), None, id="usage-not-object"),
        pytest.param(
            "chat/completions",
            body({"model": 5, "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
            Usage(1, 1, 0, 0, 2, None),
            id="model-not-a-string",
        ),
    ],
)
def test_read_usage(endpoint: str, payload: bytes, expected: Usage | None) -> None:
    assert read_usage(endpoint, payload) == expected


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param({}, Usage(), id="empty"),
        pytest.param(
            {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
            Usage(),
            id="nulls",
        ),
        pytest.param(
            {"prompt_tokens": True, "completion_tokens": False},
            Usage(),
            id="booleans-are-not-counts",
        ),
        pytest.param(
            {"prompt_tokens": -5, "completion_tokens": 2, "total_tokens": -1},
            Usage(0, 2, 0, 0, 2),
            id="negatives",
        ),
        pytest.param(
            {"prompt_tokens": 1.5, "completion_tokens": "7", "total_tokens": 9.0},
            Usage(),
            id="non-integers",
        ),
        pytest.param(
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            Usage(10, 5, 0, 0, 15),
            id="null-details",
        ),
        pytest.param(
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": None},
                "completion_tokens_details": {"reasoning_tokens": "3"},
            },
            Usage(10, 5, 0, 0, 15),
            id="bad-detail-values",
        ),
        pytest.param(
            {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 20},
            Usage(10, 5, 0, 0, 20),
            id="reported-total-is-kept",
        ),
        pytest.param(
            {"input_tokens": 7, "output_tokens": 3},
            Usage(7, 3, 0, 0, 10),
            id="responses-shape-total-defaults",
        ),
        pytest.param(
            {
                "input_tokens": 7,
                "output_tokens": 3,
                "input_tokens_details": {"cached_tokens": 4},
                "output_tokens_details": {"reasoning_tokens": 2},
                "total_tokens": 10,
            },
            Usage(7, 3, 4, 2, 10),
            id="responses-shape-details",
        ),
    ],
)
def test_usage_from_mapping(usage: dict[str, Any], expected: Usage) -> None:
    assert usage_from_mapping(usage, None) == expected


def test_usage_from_mapping_keeps_the_model() -> None:
    assert usage_from_mapping({"prompt_tokens": 1}, "gpt-4o").model == "gpt-4o"


# OpenRouter's response: OpenAI's shape plus `usage.cost` (USD) and its details.
OPENROUTER = (
    b'{"id":"gen-1","provider":"OpenAI","model":"openai/gpt-4o-mini",'
    b'"choices":[{"message":{"role":"assistant","content":"the \\"cost\\": 9"}}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"cost":%s,'
    b'"is_byok":false,"cost_details":{"upstream_inference_cost":null}}}'
)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        pytest.param(b"0.0000036", Decimal("0.0000036"), id="plain"),
        pytest.param(b"3.6e-06", Decimal("0.0000036"), id="exponent"),
        # More digits than a float holds: kept from the JSON text, not the float.
        pytest.param(
            b"0.00000360000000000000001", Decimal("0.00000360000000000000001"), id="digits"
        ),
        pytest.param(b"0", Decimal(0), id="zero-int"),
        pytest.param(b"2", Decimal(2), id="int"),
        pytest.param(b"-0.5", None, id="negative"),
        pytest.param(b'"0.1"', None, id="string"),
        pytest.param(b"true", None, id="boolean"),
        pytest.param(b"null", None, id="null"),
        pytest.param(b"1e7", None, id="too-large"),
    ],
)
def test_reported_cost_of_a_json_body(number: bytes, expected: Decimal | None) -> None:
    usage = read_usage("chat/completions", OPENROUTER % number)
    assert usage is not None and usage.provider_cost == expected
    assert usage.provider_cost is None or str(usage.provider_cost) == str(expected)
    assert (usage.prompt_tokens, usage.total_tokens) == (12, 15)


def test_reported_cost_in_the_responses_shape() -> None:
    usage = {"input_tokens": 7, "output_tokens": 3, "cost": 0.25}
    assert usage_from_mapping(usage, None) == Usage(7, 3, 0, 0, 10, provider_cost=Decimal("0.25"))


def test_no_reported_cost_is_none() -> None:
    usage = read_usage("chat/completions", body(CHAT))
    assert usage is not None and usage.provider_cost is None


def test_a_cost_without_its_text_comes_from_the_floats_shortest_repr() -> None:
    assert provider_cost(0.1) == Decimal("0.1")
    # The text found must parse to the same float; another `"cost"` key is passed over.
    assert provider_cost(0.1, b'{"x":{"cost":0.2},"usage":{"cost":0.1}}') == Decimal("0.1")
    assert provider_cost(0.3, b'{"cost":0.2}') == Decimal("0.3")
    assert provider_cost(float("nan")) is None
    assert provider_cost(float("inf")) is None
