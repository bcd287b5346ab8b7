"""The runtime: every long-lived component, built from settings, started in the lifespan."""

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from spendgate.alerts import AlertMonitor
from spendgate.config import ConfigError, Settings
from spendgate.exports import build_exports
from spendgate.keys.principals import PrincipalCache
from spendgate.keys.throttle import AuthThrottle
from spendgate.ledger.alerts import AlertStore
from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.journal import Journal
from spendgate.ledger.store import AccountDefaults, Store
from spendgate.ledger.tracking import TrackingTokenStore
from spendgate.ledger.writer import LedgerWriter
from spendgate.limits.backend import LimitBackend
from spendgate.limits.baseline import ledger_baseline
from spendgate.limits.memory import MemoryBackend
from spendgate.limits.policy import LimitPolicy
from spendgate.metering.estimate import TokenEstimator
from spendgate.metering.pricing import PriceBook, PricingConfigError, load_overrides
from spendgate.metrics import ExportState, GatewayMetrics, RuntimeState
from spendgate.proxy.drains import DrainPool
from spendgate.proxy.models import ModelList
from spendgate.proxy.recorder import Recorder
from spendgate.proxy.routing import Router
from spendgate.proxy.upstream import UpstreamClient, UpstreamTarget
from spendgate.request_log import RequestLog

if TYPE_CHECKING:  # imported only with Redis configured (`limits/shared.py`)
    from redis.asyncio import Redis

    from spendgate.keys.broadcast import KeyChanges
    from spendgate.limits.outage import OutageGuard

log = logging.getLogger("spendgate")

_DISPOSE_SECONDS = 5.0  # at shutdown, the longest wait for database connections to close


class Runtime:
    """Holds the engine, writer, caches, upstream client and metrics of one app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self.prices = PriceBook(
                load_overrides(settings.pricing_file, settings.model_pricing_json)
            )
            database_url = normalize_database_url(settings.database)
        except (PricingConfigError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self.metrics = GatewayMetrics(
            user_labels=settings.metrics_user_labels, state=self.metrics_state
        )
        self.exports = build_exports(settings)
        self.estimator = TokenEstimator()
        self.engine = create_engine(database_url)
        self.store = Store(self.engine, account_defaults(settings))
        self.tracking = TrackingTokenStore(self.engine)
        self.writer = LedgerWriter(
            self.engine,
            flush_interval=settings.flush_interval_ms / 1000,
            max_queue=settings.write_queue_max,
            on_written=self.events_written,
            on_flushed=self.metrics.flushed,
            journal=Journal(journal_dir(settings, database_url)),
            timeout=settings.database_timeout_seconds,
        )
        self.redis: Redis | None = None
        self.key_changes: KeyChanges | None = None
        self.guard: OutageGuard | None = None
        if settings.redis_url:
            from spendgate.limits.shared import connect_shared_limits  # see its docstring

            shared = connect_shared_limits(settings, self.engine, self._keys_changed)
            self.redis = shared.redis
            self.key_changes = shared.key_changes
            self.guard = shared.guard
        self.principals = PrincipalCache(
            self.store,
            refresh_seconds=settings.principal_refresh_seconds,
            timeout=settings.database_timeout_seconds,
            announce=self.key_changes.publish if self.key_changes is not None else None,
        )
        self.upstream = UpstreamClient(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_timeout,
            max_connections=settings.upstream_max_connections,
        )
        self.router = Router(
            upstream_targets(settings),
            failures=settings.upstream_cooldown_failures,
            cooldown=settings.upstream_cooldown_seconds,
        )
        self.models = ModelList(self.router, self.upstream)
        backend: LimitBackend
        if self.guard is None:
            backend = MemoryBackend(
                ledger_baseline(self.engine, started=datetime.now(UTC)),
                reservation_ttl_ns=int(settings.reservation_ttl_seconds * 1e9),
            )
        else:
            backend = self.guard
        self.limits = LimitPolicy(
            backend, self.prices, default_max_tokens=settings.default_max_tokens
        )
        self.drains = DrainPool(settings.max_drains)
        self.auth_throttle = AuthThrottle(
            settings.auth_failures_per_minute, settings.trusted_proxies
        )
        self.request_log = RequestLog() if settings.request_log else None
        self.recorder = Recorder(
            self.writer, self.prices, self.estimator, self.metrics, self.request_log
        )
        self.alerts = AlertMonitor(
            self.store,
            self.limits,
            AlertStore(self.engine),
            webhook_url=settings.alert_webhook_url,
            interval=settings.alert_check_seconds,
            low_balance_usd=settings.alert_low_balance_usd,
        )

    async def start(self) -> None:
        """Migrate the database, start the writer, the key-cache watcher and the upstream pool."""
        await upgrade(self.engine)
        self.writer.start()
        for export in self.exports:
            await export.start()
        if self.request_log is not None:
            await self.request_log.start()
        await self.principals.start()
        if self.key_changes is not None:
            await self.key_changes.start()
        await self.upstream.open()
        await self.alerts.start()

    async def stop(self) -> None:
        """Finish drains, write every queued event, close pools. Loses nothing."""
        await self.alerts.stop()
        await self.drains.wait()
        await self.writer.stop(write_seconds=self.settings.shutdown_write_seconds)
        for export in self.exports:
            await export.stop()
        if self.request_log is not None:
            await self.request_log.stop()
        await self.principals.stop()
        if self.key_changes is not None:
            await self.key_changes.stop()
        if self.guard is not None:
            await self.guard.close()
        if self.redis is not None:
            await self.redis.aclose()
        await self.upstream.close()
        try:  # a database that went away can leave a connection whose close never returns
            async with asyncio.timeout(_DISPOSE_SECONDS):
                await self.engine.dispose()
        except TimeoutError:
            log.warning("database connections did not close in %g s; left", _DISPOSE_SECONDS)

    def events_written(self, events: Sequence[UsageEvent]) -> None:
        """Committed events (by the writer or /ingest): count them and hand them to exports."""
        self.metrics.written(events)
        for export in self.exports:
            export.add(events)

    def metrics_state(self) -> RuntimeState:
        """The other components' numbers, for a /metrics scrape."""
        return RuntimeState(
            queue_depth=self.writer.queue_depth,
            drains_active=self.drains.active,
            events_dropped=self.writer.dropped,
            events_retried=self.writer.events_retried,
            events_journaled=self.writer.journaled,
            journal_pending=self.writer.journal_pending,
            reservations_open=self.limits.reservations_open,
            reserved_pico=self.limits.reserved_pico,
            settlements_pending=self.guard.backlog if self.guard is not None else 0,
            upstreams_up=self.router.states(),
            redis_errors=self.guard.errors if self.guard is not None else 0,
            database_errors={
                "ledger_write": self.writer.retries,
                "key_lookup": self.principals.lookup_errors,
                "key_refresh": self.principals.refresh_errors,
            },
            exports=[
                ExportState(e.name, e.sent, e.dropped, e.retries, e.buffered) for e in self.exports
            ],
            auth_failures=self.auth_throttle.failures,
            auth_refused=self.auth_throttle.refused,
            auth_blocked=self.auth_throttle.blocked_addresses,
            tasks=len(asyncio.all_tasks()),
        )

    def _keys_changed(self) -> None:
        self.principals.invalidate()


def journal_dir(settings: Settings, database_url: str) -> Path:
    """Where the journal lives: the setting, else beside the SQLite file, else ./data."""
    if settings.journal_dir is not None:
        return settings.journal_dir
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).parent
    return Path("data")


def upstream_targets(settings: Settings) -> list[UpstreamTarget]:
    """The `[[upstreams]]` of the config file, else the single upstream of the env settings."""
    if not settings.upstreams:
        key = settings.upstream_api_key
        return [
            UpstreamTarget(
                name="default",
                base_url=settings.upstream_base,
                api_key=key.get_secret_value() if key else None,
                api_version=settings.upstream_api_version,
            )
        ]
    return [
        UpstreamTarget(
            name=u.name,
            base_url=u.base_url,
            api_key=u.resolved_key(),
            api_version=u.api_version,
            kind=u.kind,
            headers=tuple(u.headers.items()),
            models=tuple(u.models),
            model_map=dict(u.model_map),
            deployments=dict(u.deployments),
            priority=position if u.priority is None else u.priority,
            weight=u.weight,
            timeout=u.timeout,
            connect_timeout=u.connect_timeout,
        )
        for position, u in enumerate(settings.upstreams)
    ]


def account_defaults(settings: Settings) -> AccountDefaults:
    """The budget and limits new users and keys get from settings."""
    return AccountDefaults(
        user_budget_usd=settings.default_user_budget_usd,
        user_budget_period=settings.default_user_budget_period,
        user_limits=settings.default_user_limits.as_dict()
        if settings.default_user_limits
        else None,
        key_budget_usd=settings.default_key_budget_usd,
        key_budget_period=settings.default_key_budget_period,
        key_limits=settings.default_key_limits.as_dict() if settings.default_key_limits else None,
    )
