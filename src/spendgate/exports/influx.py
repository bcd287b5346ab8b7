"""The InfluxDB export: each committed usage event as one line-protocol point.

Events are turned into lines when the ledger hands them over, buffered (bounded), and sent
by a task every `flush_interval` seconds or as soon as `batch_size` lines wait: to `/write`
for InfluxDB 1.x (a database) or `/api/v2/write` for 2.x/3.x (a bucket in an org). A batch
that fails for a reason that may pass (no connection, timeout, 429, 5xx) is retried with
backoff, in order; one Influx refuses as bad (other 4xx) is logged once and dropped.
"""

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from spendgate.config import ConfigError
from spendgate.ledger.events import UsageEvent
from spendgate.tasks import cancel_and_wait

if TYPE_CHECKING:
    from spendgate.config import Settings

log = logging.getLogger("spendgate.exports.influx")

MEASUREMENT = "spendgate_usage"  # like the tag and field keys: nothing in it needs escaping
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# InfluxDB's Go parser (seen with 1.6.7) takes a backslash in a tag value as an escape only
# before a comma, an equals sign or a space, and keeps every other one as written (`a\\b`
# is stored with both), so backslashes are not doubled; a trailing one would escape the
# separator after it and cannot be written at all. Newlines would end the line: dropped.
_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": None, "\r": None})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": None, "\r": None})


def tag_value(text: str) -> str:
    """`text` escaped for a tag value (empty when nothing writable is left)."""
    return text.translate(_TAG_ESCAPES).rstrip("\\")


def string_field(text: str) -> str:
    """`text` as a quoted string field value."""
    return f'"{text.translate(_STRING_ESCAPES)}"'


def usage_line(event: UsageEvent, sequence: int) -> str:
    """The point for `event`; `sequence` (0-999) is added to its time in nanoseconds."""
    key = event.key_display or (str(event.key_id) if event.key_id is not None else "")
    tags = {  # in key order, as Influx sorts them
        "endpoint": event.endpoint,
        "key": key,
        "model": event.model,
        "source": event.source,
        "status": str(event.status),
        "upstream": event.upstream or "",
        "user": event.user,
    }
    tag_set = "".join(f",{name}={value}" for name, raw in tags.items() if (value := tag_value(raw)))
    fields = [
        f"prompt_tokens={event.prompt_tokens}i",
        f"completion_tokens={event.completion_tokens}i",
        f"cached_tokens={event.cached_tokens}i",
        f"reasoning_tokens={event.reasoning_tokens}i",
        f"total_tokens={event.total_tokens}i",
        f"latency_ms={event.latency_ms}i",
    ]
    if event.cost_pico is not None:
        fields += [f"cost_pico={event.cost_pico}i", f"cost_usd={event.cost_pico / 1e12!r}"]
    fields += [
        f"estimated={'true' if event.estimated else 'false'}",
        f"stream={'true' if event.stream else 'false'}",
        f"request_id={string_field(event.request_id)}",
    ]
    nanoseconds = (event.timestamp - _EPOCH) // _MICROSECOND * 1000 + sequence
    return f"{MEASUREMENT}{tag_set} {','.join(fields)} {nanoseconds}"


class InfluxExport:
    """Sends committed usage events to InfluxDB in batches, off the request path."""

    name = "influxdb"

    def __init__(
        self,
        *,
        url: str,
        database: str | None = None,
        bucket: str | None = None,
        org: str | None = None,
        token: str | None = None,
        flush_interval: float = 1.0,
        batch_size: int = 5000,
        max_buffer: int = 100_000,
    ) -> None:
        base = URL(url.rstrip("/"))
        if token is None and base.user is not None:  # credentials in the URL: 1.x user:password
            token = f"{base.user}:{base.password or ''}"
        self._base = base.with_user(None)  # also drops the password: safe to log
        self._database = database
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if database is not None:
            self._write_url = self._base / "write"
            self._params = {"db": database, "precision": "ns"}
            if token is not None and ":" in token:  # user:password, for HTTP Basic auth
                basic = base64.b64encode(token.encode()).decode()
                self._headers["Authorization"] = f"Basic {basic}"
        else:
            self._write_url = self._base / "api" / "v2" / "write"
            self._params = {"org": org or "", "bucket": bucket or "", "precision": "ns"}
        if token is not None and "Authorization" not in self._headers:
            self._headers["Authorization"] = f"Token {token}"
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self._lines: deque[str] = deque()
        self._sequence = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._database_created = False
        self._failing = False  # an outage is under way: its first failure has been logged
        self._overflowing = False  # the buffer filled up: logged once until a send succeeds
        self._sent = self._retries = self._dropped = 0

    @classmethod
    def from_settings(cls, settings: "Settings") -> "InfluxExport":
        """The export the SPENDGATE_INFLUXDB_* settings describe; ConfigError if incomplete."""
        database, bucket, org = (
            settings.influxdb_database,
            settings.influxdb_bucket,
            settings.influxdb_org,
        )
        if bool(database) == bool(bucket) or (bucket and not org):
            raise ConfigError(
                "SPENDGATE_INFLUXDB_URL needs SPENDGATE_INFLUXDB_DATABASE (InfluxDB 1.x) or "
                "SPENDGATE_INFLUXDB_BUCKET and SPENDGATE_INFLUXDB_ORG (2.x), not both"
            )
        token = settings.influxdb_token
        return cls(
            url=settings.influxdb_url or "",
            database=database,
            bucket=bucket,
            org=org,
            token=token.get_secret_value() if token is not None else None,
        )

    @property
    def sent(self) -> int:
        """Events InfluxDB accepted."""
        return self._sent

    @property
    def retries(self) -> int:
        """Failed send attempts that will be retried."""
        return self._retries

    @property
    def dropped(self) -> int:
        """Events given up: buffer full, refused by InfluxDB, or unsent at shutdown."""
        return self._dropped

    @property
    def buffered(self) -> int:
        """Events waiting to be sent."""
        return len(self._lines)

    def add(self, events: Sequence[UsageEvent]) -> None:
        """Buffer `events` as lines; drop (and count) those that do not fit."""
        room = max(self.max_buffer - len(self._lines), 0)
        for event in events[:room]:
            # Influx keeps one point per series and time: a second point with the same tags
            # and timestamp replaces the first. Event times are microseconds, so two requests
            # of one user, key and model in the same microsecond (or ingested events sharing
            # a client's timestamp) would overwrite each other; a rolling count in the spare
            # nanoseconds keeps them apart. Lines are built once, so a retried batch rewrites
            # the same points rather than adding copies.
            self._lines.append(usage_line(event, self._sequence))
            self._sequence = (self._sequence + 1) % 1000
        if len(events) > room:
            self._dropped += len(events) - room
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "InfluxDB export buffer full (%d events): dropping new events until "
                    "%s accepts writes again",
                    self.max_buffer,
                    self._base,
                )
        if len(self._lines) >= self.batch_size:
            self._wake.set()

    async def start(self) -> None:
        """Open the HTTP session and start the sending task."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._task = asyncio.create_task(self._run(), name="influxdb-export")

    async def stop(self) -> None:
        """Send what is buffered, for at most STOP_TIMEOUT_SECONDS, then close the session."""
        self._closing = True
        self._wake.set()
        try:
            if self._task is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_TIMEOUT_SECONDS):
                        await asyncio.shield(self._task)
        finally:
            await cancel_and_wait(self._task)
            if self._lines:
                log.warning("InfluxDB export stopped with %d events unsent", len(self._lines))
                self._dropped += len(self._lines)
                self._lines.clear()
            if self._session is not None:
                await self._session.close()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            while self._lines:
                batch = [self._lines[i] for i in range(min(self.batch_size, len(self._lines)))]
                await self._deliver(batch)
                for _ in batch:  # only the sender takes lines off the front
                    self._lines.popleft()
            if self._closing:
                return

    async def _deliver(self, batch: list[str]) -> None:
        """Send `batch` until InfluxDB accepts or refuses it, retrying what may pass."""
        assert self._session is not None
        body = "\n".join(batch).encode()
        delay = BACKOFF_FIRST
        while True:
            status: int | None = None
            try:
                async with self._session.post(
                    self._write_url, params=self._params, data=body, headers=self._headers
                ) as response:
                    status, message = response.status, (await response.text()).strip()
            except (aiohttp.ClientError, TimeoutError) as exc:
                message = f"{type(exc).__name__}: {exc}"
            if status is not None and status < 300:
                if self._failing:
                    log.info("InfluxDB at %s accepts writes again", self._base)
                self._sent += len(batch)
                self._failing = self._overflowing = False
                return
            if status == 404 and "database not found" in message and not self._database_created:
                self._database_created = await self._create_database()
                if self._database_created:
                    continue
            if status is not None and 400 <= status < 500 and status != 429:
                log.warning(
                    "InfluxDB at %s refused %d events (HTTP %d): %s",
                    self._base, len(batch), status, message[:500],
                )  # fmt: skip
                self._dropped += len(batch)
                return
            if not self._failing:
                self._failing = True
                log.warning("InfluxDB at %s unavailable (%s); retrying", self._base, message)
            self._retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _create_database(self) -> bool:
        """Issue CREATE DATABASE for the 1.x database; whether InfluxDB accepted it."""
        assert self._session is not None and self._database is not None
        name = self._database.replace("\\", "\\\\").replace('"', '\\"')
        try:
            async with self._session.post(
                self._base / "query",
                data={"q": f'CREATE DATABASE "{name}"'},
                headers={k: v for k, v in self._headers.items() if k == "Authorization"},
            ) as response:
                if response.status < 300:
                    log.info("created InfluxDB database %s at %s", self._database, self._base)
                    return True
                message = (await response.text()).strip()
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = f"{type(exc).__name__}: {exc}"
        log.warning("could not create InfluxDB database %s: %s", self._database, message[:500])
        return False
