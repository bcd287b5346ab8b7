"""The request mixes the benchmark sends: one `Scenario` per body, path and error rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark in a few words."}]
_CHAT = {"model": "gpt-4o-mini", "messages": _MESSAGES, "max_tokens": 16}
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str  # appended to a target's base URL
    body: dict[str, Any]
    description: str
    error_every: int = 0  # every Nth request of a wrk thread asks the fake for a 500
    latency: bool = False  # also measured with hey at a fixed rate
    streamed: bool = False


SCENARIOS = [
    Scenario("chat", CHAT_PATH, _CHAT, "non-streamed chat, max_tokens 16", latency=True),
    Scenario(
        "stream",
        CHAT_PATH,
        # 16 content chunks, then finish, usage and [DONE]; spendgate asks for the usage
        # itself anyway, so the fake does the same work behind every target
        {**_CHAT, "stream": True, "stream_options": {"include_usage": True}},
        "stream true, 16 SSE chunks (+ finish, usage, [DONE])",
        latency=True,
        streamed=True,
    ),
    Scenario(
        "embeddings",
        "/v1/embeddings",
        {"model": "text-embedding-3-small", "input": "The quick brown fox jumps over the dog."},
        "POST /v1/embeddings, one short string",
    ),
    Scenario(
        "mixed",
        CHAT_PATH,
        _CHAT,
        "chat, every 10th request (per wrk thread) carries x-fake-status: 500",
        error_every=10,
    ),
]
