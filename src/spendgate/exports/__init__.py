"""Exports of committed usage events to other systems (InfluxDB, OpenTelemetry).

Each export receives the events the ledger writer has just committed (proxied and ingested
alike, duplicates already skipped), off the request path, and sends them in its own task.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from spendgate.ledger.events import UsageEvent

if TYPE_CHECKING:
    from spendgate.config import Settings


class EventExport(Protocol):
    """A destination for committed usage events."""

    name: str

    @property
    def sent(self) -> int:
        """Events the destination accepted."""

    @property
    def dropped(self) -> int:
        """Events given up (buffer full, refused, or unsent at shutdown)."""

    @property
    def retries(self) -> int:
        """Failed attempts that will be retried."""

    @property
    def buffered(self) -> int:
        """Events waiting to be sent."""

    def add(self, events: Sequence[UsageEvent]) -> None:
        """Take committed events; must not block (buffer them and send from a task)."""

    async def start(self) -> None:
        """Start the sending task on the running loop."""

    async def stop(self) -> None:
        """Send what is buffered (bounded in time), then end the task."""


def build_exports(settings: "Settings") -> list[EventExport]:
    """The exports the settings turn on (none by default)."""
    exports: list[EventExport] = []
    if settings.influxdb_url:
        from spendgate.exports.influx import InfluxExport

        exports.append(InfluxExport.from_settings(settings))
    if settings.otel:
        from spendgate.exports.otel import OtelExport

        exports.append(OtelExport.from_settings(settings))
    return exports
