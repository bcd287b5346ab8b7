"""The runtime: every long-lived component, built from settings, started in the lifespan."""

import logging

from spendgate.config import ConfigError, Settings
from spendgate.keys.principals import PrincipalCache
from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
from spendgate.ledger.store import Store
from spendgate.ledger.writer import LedgerWriter
from spendgate.limits.admission import Admission, OpenAdmission
from spendgate.metering.estimate import TokenEstimator
from spendgate.metering.pricing import PriceBook, PricingConfigError, load_overrides
from spendgate.metrics import GatewayMetrics
from spendgate.proxy.drains import DrainPool
from spendgate.proxy.recorder import Recorder
from spendgate.proxy.upstream import UpstreamClient, UpstreamTarget

log = logging.getLogger("spendgate")


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
        self.metrics = GatewayMetrics()
        self.estimator = TokenEstimator()
        self.engine = create_engine(database_url)
        self.store = Store(self.engine)
        self.writer = LedgerWriter(
            self.engine,
            flush_interval=settings.flush_interval_ms / 1000,
            max_queue=settings.write_queue_max,
            on_written=self.metrics.written,
        )
        self.principals = PrincipalCache(
            self.store, refresh_seconds=settings.principal_refresh_seconds
        )
        api_key = (
            settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
        )
        self.upstream = UpstreamClient(
            UpstreamTarget(
                name="default",
                base_url=settings.upstream_base,
                api_key=api_key,
                api_version=settings.upstream_api_version,
            ),
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_timeout,
            max_connections=settings.upstream_max_connections,
        )
        self.admission: Admission = OpenAdmission()
        self.drains = DrainPool(settings.max_drains)
        self.recorder = Recorder(self.writer, self.prices, self.estimator, self.metrics)

    async def start(self) -> None:
        """Migrate the database, start the writer, the key-cache watcher and the upstream pool."""
        await upgrade(self.engine)
        self.writer.start()
        await self.principals.start()
        await self.upstream.open()

    async def stop(self) -> None:
        """Finish drains, write every queued event, close pools. Loses nothing."""
        await self.drains.wait()
        await self.writer.stop()
        await self.principals.stop()
        await self.upstream.close()
        await self.engine.dispose()
