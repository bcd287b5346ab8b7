"""Incremental reader of an upstream Server-Sent-Events stream, relayed as it arrives.

The scanner sits on the hot path of every streamed request, so it avoids decoding JSON:
an event is decoded only when it carries a usage *object* (OpenAI sends `"usage":null` on
every chunk when `include_usage` is on, which must stay cheap) or is a terminal Responses
event; a `cost` the provider reports in that usage object is read from the same event's
bytes. Generated text is found with byte regexes and kept JSON-escaped; it is decoded only
if someone asks for it (`completion_text()`, used when the usage never arrives).

Forwarding is event-aligned: `feed` returns every complete event (ended by a blank line)
byte-for-byte and holds an incomplete trailing one, so a usage-only chunk can be dropped
whole when the client did not ask for it. An event larger than `max_event_bytes` is not
held: it is forwarded as it arrives and not read.
"""

import re

import orjson

from spendgate.metering.extract import metered_endpoint, usage_from_mapping
from spendgate.metering.usage import Usage

# An event ends with a blank line; a line ends with "\r\n", "\n" or "\r" (SSE spec), so the
# terminator is two line ends, at most 4 bytes. A terminator still open at the end of the
# bytes so far (only a "\r" could grow, into "\r\n") starts at most this far back.
_END_LOOKBACK = 3
# A line end, then an empty line's end. A "\r" directly before a "\n" is half of one "\r\n".
_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
_CR = 13
_LF = 10
# What follows a `"usage"` key when its value is an object (not `"usage":null`).
_USAGE_KEY = b'"usage"'
_USAGE_VALUE = re.compile(rb"\s*:\s*([{n])")
_DONE = b"[DONE]"
# The raw (still escaped) body of a JSON string value.
_STRING = rb'"([^"\\]*(?:\\.[^"\\]*)*)"'
# Generated text in chat/completions deltas (text, reasoning, refusals, tool arguments).
_CHAT_TEXT = re.compile(
    rb'"(?:content|reasoning_content|reasoning|refusal|arguments)"\s*:\s*' + _STRING, re.DOTALL
)
_COMPLETIONS_TEXT = re.compile(rb'"text"\s*:\s*' + _STRING, re.DOTALL)
_RESPONSES_DELTA_TYPE = re.compile(
    rb'"type"\s*:\s*"response\.(?:output_text|refusal|function_call_arguments)\.delta"'
)
_RESPONSES_DELTA = re.compile(rb'"delta"\s*:\s*' + _STRING, re.DOTALL)
_RESPONSES_TERMINAL_TYPE = re.compile(rb'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')
_UNREAD_LIMIT = 64 * 1024  # bytes of events held before their text is read anyway
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class SSEUsageScanner:
    """Relay an SSE stream event by event while reading its usage and generated text."""

    __slots__ = (
        "_endpoint",
        "_held",
        "_max_event_bytes",
        "_resume_at",
        "_skip_tail",
        "_skipping",
        "_strip",
        "_text_bytes",
        "_text_full",
        "_text_limit",
        "_text_parts",
        "_unread",
        "_unread_bytes",
        "events",
        "saw_done",
        "usage",
    )

    def __init__(
        self,
        endpoint: str,
        *,
        strip_usage_chunk: bool,
        text_limit: int = 262144,
        max_event_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._endpoint = metered_endpoint(endpoint)
        self._strip = strip_usage_chunk and self._endpoint in ("chat/completions", "completions")
        self._text_limit = text_limit
        self._max_event_bytes = max_event_bytes
        self._held = bytearray()
        self._resume_at = 0
        self._skipping = False
        self._skip_tail = b""
        self._text_parts: list[bytes] = []
        self._text_full = False
        self.usage: Usage | None = None
        """The last usage object the stream reported."""
        self.saw_done = False
        """The stream ended properly: `data: [DONE]` or a terminal Responses event."""
        self.events = 0
        """Non-empty events read (an unterminated one read by `finish` included)."""
        self._text_bytes = 0
        # Events whose text is not read yet: text is only needed when the usage never
        # arrives, so it is read in bulk (at `_UNREAD_LIMIT` bytes, or when asked for).
        self._unread: list[bytes] = []
        self._unread_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        """Take the next upstream bytes; return the bytes to forward to the client now."""
        # The common case, one single-line event per chunk: no buffer bookkeeping.
        if not self._held and not self._skipping and (t := _single_line_event_terminator(chunk)):
            return chunk if self._read_event(chunk[:-t]) else b""
        return self._scan(chunk, final=False)

    def finish(self) -> bytes:
        """End of stream: return the held bytes, the usage-only chunk still dropped.

        An unterminated last event is returned unchanged (it is still read).
        """
        out = self._scan(b"", final=True) if self._held else b""
        tail = bytes(self._held)
        self._held = bytearray()
        self._resume_at = 0
        self._read_event(tail)
        return out + tail

    def _scan(self, chunk: bytes, *, final: bool) -> bytes:
        """Forward the complete events in the held bytes and `chunk`; hold the rest.

        `final`: no bytes follow, so a "\r" ending the bytes is a whole line end.
        """
        if self._skipping:
            return self._skip(chunk)
        held = self._held
        if held:
            held += chunk
            buffer: bytes | bytearray = held
        else:
            buffer = chunk
        start = 0  # where the current event begins
        forward_from = 0  # where the not-yet-returned forwardable bytes begin
        dropped: list[bytes] | None = None
        search_at = self._resume_at
        # Streams end their lines with "\n" or "\r\n"; a lone "\r" (which SSE allows too)
        # takes the slower search.
        lone_cr = _has_lone_cr(buffer, search_at)
        while True:
            if lone_cr:
                end, after = _cr_event_end(buffer, start, search_at, final)
            else:
                end, after = _lf_event_end(buffer, start, search_at)
            if end < 0:
                break
            if not self._read_event(bytes(buffer[start:end])):
                dropped = dropped or []
                dropped.append(bytes(buffer[forward_from:start]))
                forward_from = after
            start = search_at = after
        rest = len(buffer) - start
        if rest > self._max_event_bytes:
            start = len(buffer)  # forward the oversized event as it comes, unread
            self._skipping = True
            self._skip_tail = bytes(buffer[-_END_LOOKBACK:])
        if start == len(buffer):
            self._held = bytearray()
            self._resume_at = 0
        elif start:
            self._held = bytearray(buffer[start:])
            self._resume_at = max(0, rest - _END_LOOKBACK)
        else:
            if not held:
                self._held = bytearray(chunk)
            self._resume_at = max(0, rest - _END_LOOKBACK)
        if dropped is not None:
            dropped.append(bytes(buffer[forward_from:start]))
            return b"".join(dropped)
        if forward_from == 0 and start == len(buffer) and buffer is chunk:
            return chunk
        return bytes(buffer[forward_from:start])

    @property
    def text_bytes(self) -> int:
        """Bytes of generated text seen (JSON-escaped), including any beyond `text_limit`."""
        self._read_text()
        return self._text_bytes

    def completion_text(self) -> str:
        """Return the generated text seen so far (at most `text_limit` bytes of it)."""
        self._read_text()
        if not self._text_parts:
            return ""
        try:
            text = orjson.loads(b'"' + b"".join(self._text_parts) + b'"')
        except orjson.JSONDecodeError:
            return "".join(_decode_piece(part) for part in self._text_parts)
        return text if isinstance(text, str) else ""

    def _skip(self, chunk: bytes) -> bytes:
        """Forward the rest of an oversized event; resume reading after its end."""
        window = self._skip_tail + chunk
        end, after = (
            _cr_event_end(window, 0, 0, False)
            if _has_lone_cr(window, 0)
            else _lf_event_end(window, 0, 0)
        )
        if end < 0:
            self._skip_tail = window[-_END_LOOKBACK:]
            return chunk
        self._skipping = False
        self._skip_tail = b""
        self.events += 1
        cut = after - (len(window) - len(chunk))
        return chunk[:cut] + self._scan(chunk[cut:], final=False)

    def _read_event(self, event: bytes) -> bool:
        """Read one complete event; return False when it must not be forwarded."""
        if not event or event.isspace():
            return True
        self.events += 1
        kind = self._endpoint
        if kind == "responses":
            self._read_responses_event(event)
            return True
        if kind is None or kind == "embeddings":
            return True
        if (event.endswith(_DONE) or (len(event) < 128 and _DONE in event)) and _event_data(
            event
        ) == _DONE:
            self.saw_done = True
            return True
        self._unread.append(event)
        self._unread_bytes += len(event)
        if self._unread_bytes > _UNREAD_LIMIT:
            self._read_text()
        # `"usage"` is near the end of a chunk: look for it from there, and only decode the
        # event when the key's value is an object.
        at = event.rfind(_USAGE_KEY)
        if at >= 0 and event.startswith(b":null", at + len(_USAGE_KEY)):
            return True  # the common `"usage":null`, without the regex
        while at >= 0:
            value = _USAGE_VALUE.match(event, at + len(_USAGE_KEY))
            if value is not None:
                if value.group(1) == b"n":
                    return True  # `"usage": null`: the key is there, without an object
                break
            at = event.rfind(_USAGE_KEY, 0, at)  # that was a string value: look further back
        if at < 0:
            return True
        document = _decode(event)
        if document is None:
            return True
        usage = document.get("usage")
        if isinstance(usage, dict):
            model = document.get("model")
            self.usage = usage_from_mapping(usage, model if isinstance(model, str) else None, event)
            if self._strip and document.get("choices") == []:
                return False
        return True

    def _read_responses_event(self, event: bytes) -> None:
        if b'.delta"' in event and _RESPONSES_DELTA_TYPE.search(event) is not None:
            match = _RESPONSES_DELTA.search(event)
            if match is not None:
                self._keep_text(match.group(1))
            return
        if _RESPONSES_TERMINAL_TYPE.search(event) is None:
            return
        document = _decode(event)
        if document is None or document.get("type") not in _RESPONSES_TERMINAL:
            return
        self.saw_done = True
        response = document.get("response")
        if not isinstance(response, dict):
            return
        usage = response.get("usage")
        if isinstance(usage, dict):
            model = response.get("model")
            self.usage = usage_from_mapping(usage, model if isinstance(model, str) else None, event)

    def _read_text(self) -> None:
        """Find the generated text in the events held unread, in order, and keep it."""
        if not self._unread:
            return
        pattern = _CHAT_TEXT if self._endpoint == "chat/completions" else _COMPLETIONS_TEXT
        for event in self._unread:
            # Generated text sits inside `choices`; skipping the envelope before it is cheaper.
            choices_at = event.find(b'"choices"')
            if choices_at >= 0:
                for raw in pattern.findall(event, choices_at):
                    self._keep_text(raw)
        self._unread = []
        self._unread_bytes = 0

    def _keep_text(self, raw: bytes) -> None:
        self._text_bytes += len(raw)
        if self._text_full:
            return
        if self._text_bytes > self._text_limit:
            self._text_full = True
            return
        self._text_parts.append(raw)


def _cr_event_end(
    buffer: bytes | bytearray, start: int, search_at: int, final: bool
) -> tuple[int, int]:
    """Find the blank line ending the event at `start`: (its first byte, the byte after it).

    For bytes holding a "\r" line end (see `_has_lone_cr`); `_lf_event_end` is the fast
    search for the rest. Returns (-1, -1) when the bytes so far hold no complete
    terminator. `final`: no bytes follow, so a "\r" ending the buffer is a whole line end.
    """
    match = _BLANK_LINE.search(buffer, search_at)
    if match is None:
        return -1, -1
    end, after = match.span()
    if after == len(buffer) and buffer[after - 1] == _CR and not final:
        return -1, -1  # the "\r" may be the start of a "\r\n": wait for the next byte
    if end > start and buffer[end] == _LF and buffer[end - 1] == _CR:
        end -= 1  # the search began inside a "\r\n"
    return end, after


def _has_lone_cr(buffer: bytes | bytearray, start: int) -> bool:
    """Whether a "\r" from `start` on is not part of a "\r\n" (or may not be, at the end)."""
    crs = buffer.count(b"\r", start)
    return crs > 0 and crs != buffer.count(b"\r\n", start)


def _lf_event_end(buffer: bytes | bytearray, start: int, search_at: int) -> tuple[int, int]:
    """`_cr_event_end` for bytes whose line ends are all "\n" or "\r\n"."""
    size = len(buffer)
    while (newline := buffer.find(b"\n", search_at)) >= 0:
        after = newline + 1
        if after < size and buffer[after] == _CR:
            after += 1
        if after >= size:
            break
        if buffer[after] == _LF:
            if newline > start and buffer[newline - 1] == _CR:
                newline -= 1
            return newline, after + 1
        search_at = after
    return -1, -1


def _single_line_event_terminator(chunk: bytes) -> int:
    """The terminator's length if `chunk` is exactly one one-line event, else 0."""
    if chunk.endswith(b"\n\n"):
        if chunk.find(b"\n") == len(chunk) - 2 and chunk.find(b"\r") < 0:
            return 2
    elif (
        chunk.endswith(b"\r\n\r\n")
        and chunk.find(b"\n") == len(chunk) - 3
        and chunk.find(b"\r") == len(chunk) - 4
    ):
        return 4
    return 0


def _event_data(event: bytes) -> bytes:
    """The event's data: its `data:` lines' values, joined with newlines (per the SSE spec)."""
    if event.startswith(b"data:") and b"\n" not in event and b"\r" not in event:
        value = event[5:]
        return value[1:] if value.startswith(b" ") else value
    values = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            values.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(values)


def _decode(event: bytes) -> dict[str, object] | None:
    """The event's data as a JSON object, or None when it is not one."""
    try:
        document = orjson.loads(_event_data(event))
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _decode_piece(raw: bytes) -> str:
    try:
        text = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return ""
    return text if isinstance(text, str) else ""
