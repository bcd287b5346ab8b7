"""The soak's irregular client (bench/soak.py): what wrk never does, a few times a second.

While a wrk slice runs, one thread in the soak's process cycles through four actions over
plain loopback sockets, one action every `interval_s` (0.25 s):

- `abandoned`: a streamed chat request whose upstream sends a chunk every 50 ms
  (`x-fake-chunk-delay-ms`); the client reads the response head and the first `data:` event,
  then closes the socket (every other one with an RST instead of a FIN). The gateway drains
  the rest for its usage, so each is one ledger row.
- `wrong_key`: a chat request with a key that does not exist: 401. At most one every
  `wrong_key_gap_s` (2 s), under the gateway's auth throttle (60 failures a minute per
  address by default): past it, the address — wrk's too — would be refused with 429.
- `bad_json`: a chat request whose body is cut short: 400, before the upstream.
- `slow_head`: a chat request whose head goes out in two parts `slow_pause_s` (0.3 s) apart,
  then the body: 200.

`abandoned` and `slow_head` reach the upstream (the fake counts them, the ledger has one row
each): `Counts.upstream` is what the soak adds to the completed requests of the ledger check.
Any other answer, a timeout or a connection error is a failure, kept in `Counts.failures`.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from procs import LOOPBACK, BenchError
from scenarios import CHAT_PATH, SCENARIOS

ACTIONS = ("abandoned", "wrong_key", "bad_json", "slow_head")
_CHAT = next(s for s in SCENARIOS if s.name == "chat").body
_STREAM = next(s for s in SCENARIOS if s.name == "stream").body
_TIMEOUT_S = 30.0  # per socket operation; far beyond any answer under the soak's load
_MAX_FAILURES_KEPT = 10


@dataclass
class Counts:
    """What the chaos client did; `failures` describes the unexpected outcomes."""

    abandoned: int = 0
    wrong_key: int = 0
    bad_json: int = 0
    slow_head: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def upstream(self) -> int:
        """Requests that reached the upstream: one ledger row each."""
        return self.abandoned + self.slow_head

    @property
    def total(self) -> int:
        return self.abandoned + self.wrong_key + self.bad_json + self.slow_head + self.failed

    def add(self, other: Counts) -> None:
        for name in (*ACTIONS, "failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures += other.failures[: _MAX_FAILURES_KEPT - len(self.failures)]

    def summary(self) -> str:
        done = ", ".join(f"{getattr(self, name)} {name}" for name in ACTIONS)
        return f"{done}, {self.failed} failed"


class Chaos:
    """The irregular client of one gateway: `with chaos.running(): <wrk slice>`."""

    def __init__(
        self,
        base_url: str,
        auth: str,
        *,
        interval_s: float = 0.25,
        wrong_key_gap_s: float = 2.0,
        slow_pause_s: float = 0.3,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.hostname != LOOPBACK or parts.port is None:
            raise BenchError(f"refusing to send chaos to a non-loopback URL: {base_url}")
        self.address = (LOOPBACK, parts.port)
        self.host = f"{LOOPBACK}:{parts.port}"
        self.auth = auth
        self.interval_s = interval_s
        self.wrong_key_gap_s = wrong_key_gap_s
        self.slow_pause_s = slow_pause_s
        self.totals = Counts()
        self._next = 0  # index into ACTIONS, kept across slices
        self._abandoned = 0  # for alternating FIN and RST
        self._last_wrong_key = -wrong_key_gap_s

    @contextmanager
    def running(self) -> Iterator[Counts]:
        """Run the client in a thread for the `with` block; yields this slice's counts, which
        are complete once the block is left (the thread ends its current action first)."""
        counts, stop = Counts(), threading.Event()
        thread = threading.Thread(target=self._loop, args=(counts, stop), name="chaos")
        thread.start()
        try:
            yield counts
        finally:
            stop.set()
            thread.join()
            self.totals.add(counts)

    def _loop(self, counts: Counts, stop: threading.Event) -> None:
        actions: dict[str, Callable[[], None]] = {
            "abandoned": self.abandoned,
            "wrong_key": self.wrong_key,
            "bad_json": self.bad_json,
            "slow_head": self.slow_head,
        }
        tick = time.monotonic()
        while not stop.is_set():
            name = ACTIONS[self._next % len(ACTIONS)]
            self._next += 1
            if name == "wrong_key":
                if time.monotonic() - self._last_wrong_key < self.wrong_key_gap_s:
                    continue  # over the budget: the next action instead
                self._last_wrong_key = time.monotonic()
            try:
                actions[name]()
            except (OSError, BenchError) as exc:
                counts.failed += 1
                if len(counts.failures) < _MAX_FAILURES_KEPT:
                    counts.failures.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                setattr(counts, name, getattr(counts, name) + 1)
            tick = max(tick + self.interval_s, time.monotonic())  # no burst after a slow one
            stop.wait(max(0.0, tick - time.monotonic()))

    # The actions: each raises BenchError (or OSError) unless the gateway answered as expected.

    def abandoned(self) -> None:
        """A slow stream, left after its first event."""
        self._abandoned += 1
        with self._connect() as sock:
            sock.sendall(
                self._request(json.dumps(_STREAM).encode(), extra=[("x-fake-chunk-delay-ms", "50")])
            )
            status, _, rest = _read_head(sock)
            _expect("abandoned stream", status, 200, rest)
            while b"data:" not in rest:
                chunk = sock.recv(4096)
                if not chunk:
                    raise BenchError("abandoned stream: the stream ended before its first event")
                rest += chunk
            if self._abandoned % 2 == 0:  # an RST instead of a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def wrong_key(self) -> None:
        body = json.dumps(_CHAT).encode()
        status, body_out = self._exchange(self._request(body, auth="Bearer sk-chaos-not-a-key"))
        _expect("wrong key", status, 401, body_out)

    def bad_json(self) -> None:
        body = json.dumps(_CHAT).encode()[:-7]  # cut short: not JSON
        status, body_out = self._exchange(self._request(body))
        _expect("bad JSON", status, 400, body_out)

    def slow_head(self) -> None:
        body = json.dumps(_CHAT).encode()
        request = self._request(body)
        split = request.index(b"\r\n\r\n") // 2  # mid-head
        with self._connect() as sock:
            sock.sendall(request[:split])
            time.sleep(self.slow_pause_s)
            sock.sendall(request[split:])
            status, answer = _read_answer(sock)
        _expect("slow head", status, 200, answer)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _request(
        self, body: bytes, *, auth: str | None = None, extra: list[tuple[str, str]] | None = None
    ) -> bytes:
        headers = [
            ("Host", self.host),
            ("Authorization", auth or self.auth),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *(extra or []),
        ]
        head = f"POST {CHAT_PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        return (head + "\r\n").encode("latin-1") + body

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        with self._connect() as sock:
            sock.sendall(request)
            return _read_answer(sock)


def _read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-case names) and the bytes read past the head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise BenchError(f"connection closed before the response head ({data[:80]!r})")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BenchError(f"not an HTTP status line: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """A whole response with a Content-Length body (every answer the chaos client expects)."""
    status, headers, body = _read_head(sock)
    if "content-length" not in headers:
        raise BenchError(f"status {status} without a Content-Length: {headers}")
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"status {status}: the body ended at {len(body)} of {length} bytes")
        body += chunk
    return status, body[:length]


def _expect(what: str, status: int, expected: int, body: bytes) -> None:
    if status != expected:
        raise BenchError(f"{what}: status {status}, expected {expected}: {body[:200]!r}")
