"""Settings: every `SPENDGATE_*` variable, its accepted aliases, files and validation.

Sources, earliest wins: init arguments (tests, the demo), environment variables,
`.env.local`, `.env`, then the TOML file named by `SPENDGATE_CONFIG`. This is the only
module that reads the process environment.
"""

import os
import tomllib
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from spendgate.limits.names import Limits
from spendgate.periods import Period

_MiB = 1024 * 1024


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming it."""


def _env(*names: str) -> Any:
    return AliasChoices(*names)


UpstreamKind = Literal["openai", "azure", "openrouter", "generic"]


class UpstreamConfig(BaseModel):
    """One `[[upstreams]]` entry of the TOML file (contract §7)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: UpstreamKind = "openai"
    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None  # the environment variable holding the key
    api_key: SecretStr | None = None  # inline: discouraged, for the rare user who insists
    api_version: str | None = None  # Azure's api-version
    headers: dict[str, str] = Field(default_factory=dict)  # extra headers (OpenRouter's)
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)  # globs served
    model_map: dict[str, str] = Field(default_factory=dict)  # requested -> upstream's name
    deployments: dict[str, str] = Field(default_factory=dict)  # Azure: model -> deployment
    priority: int | None = None  # lower first; default: position in the file
    weight: int = Field(1, ge=1)  # share of traffic among matching upstreams of one priority
    timeout: float | None = Field(None, gt=0)  # seconds to the response headers
    connect_timeout: float | None = Field(None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def resolved_key(self) -> str | None:
        """The key: from `api_key_env` (read at start-up), else inline, else none."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigError(
                    f"upstream '{self.name}': environment variable {self.api_key_env} "
                    "(api_key_env) is not set"
                )
            return value
        return self.api_key.get_secret_value() if self.api_key else None


class Settings(BaseSettings):
    """All of spendgate's settings. Each field's description is its one-line documentation."""

    model_config = SettingsConfigDict(
        env_file=(".env", ".env.local"),
        env_file_encoding="utf-8",
        # `KEY=` (as `spendgate init` writes placeholders) means unset, not an empty secret.
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    upstream_base: str = Field(
        "https://api.openai.com/v1",
        validation_alias=_env("SPENDGATE_UPSTREAM_BASE", "UPSTREAM_BASE"),
        description="Upstream base URL, including /v1.",
    )
    upstream_api_key: SecretStr | None = Field(
        None,
        validation_alias=_env("SPENDGATE_UPSTREAM_API_KEY", "UPSTREAM_API_KEY", "OPENAI_API_KEY"),
        description="The organisation's shared upstream key (required by serve).",
    )
    upstream_api_version: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_UPSTREAM_API_VERSION", "UPSTREAM_API_VERSION"),
        description="api-version query parameter added to upstream calls (Azure).",
    )
    upstream_timeout: float = Field(
        600.0,
        gt=0,
        validation_alias=_env("SPENDGATE_UPSTREAM_TIMEOUT"),
        description="Seconds to wait for the upstream's response headers before a 504.",
    )
    upstream_connect_timeout: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("SPENDGATE_UPSTREAM_CONNECT_TIMEOUT"),
        description="Seconds to wait for a connection to the upstream before a 502.",
    )
    upstream_max_connections: int = Field(
        1000,
        gt=0,
        validation_alias=_env("SPENDGATE_UPSTREAM_MAX_CONNECTIONS"),
        description="Size of the pooled upstream connection pool.",
    )
    upstreams: list[UpstreamConfig] = Field(
        default_factory=list,
        validation_alias=_env("SPENDGATE_UPSTREAMS"),
        description="Several upstreams, routed by model ([[upstreams]] in the TOML file, or "
        "JSON); none: the single upstream above serves every model.",
    )
    upstream_max_attempts: int = Field(
        3,
        ge=1,
        le=10,
        validation_alias=_env("SPENDGATE_UPSTREAM_MAX_ATTEMPTS"),
        description="Upstreams tried per request (the first, then fallbacks) on connect "
        "errors, timeouts before the first byte, 429 and 5xx.",
    )
    upstream_retry_backoff_ms: int = Field(
        100,
        ge=0,
        le=60_000,
        validation_alias=_env("SPENDGATE_UPSTREAM_RETRY_BACKOFF_MS"),
        description="Pause before the second attempt, doubling for each later one.",
    )
    upstream_cooldown_failures: int = Field(
        5,
        ge=1,
        validation_alias=_env("SPENDGATE_UPSTREAM_COOLDOWN_FAILURES"),
        description="Consecutive failures after which an upstream is skipped for a while.",
    )
    upstream_cooldown_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("SPENDGATE_UPSTREAM_COOLDOWN_SECONDS"),
        description="How long an upstream is skipped after those failures.",
    )
    admin_token: SecretStr | None = Field(
        None,
        validation_alias=_env("SPENDGATE_ADMIN_TOKEN", "ADMIN_TOKEN"),
        description="Admin API token; without one the admin API answers 401 to everyone.",
    )
    database_url: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_DATABASE_URL"),
        description="SQLAlchemy database URL (sqlite:///…, postgresql://…, mysql://…).",
    )
    database_path: str | None = Field(
        None,
        validation_alias=_env("DATABASE_PATH", "SPENDGATE_DATABASE_PATH"),
        description="A SQLite file path, used when no database URL is set.",
    )
    redis_url: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_REDIS_URL"),
        description="Redis URL for shared limits across instances; none keeps limits in process.",
    )
    redis_prefix: str = Field(
        "spendgate",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        validation_alias=_env("SPENDGATE_REDIS_PREFIX"),
        description="Prefix of every Redis key and channel (several deployments on one Redis).",
    )
    redis_max_connections: int = Field(
        64,
        gt=0,
        validation_alias=_env("SPENDGATE_REDIS_MAX_CONNECTIONS"),
        description="Redis connections per process; a request waits for a free one.",
    )
    redis_timeout_seconds: float = Field(
        2.0,
        gt=0,
        validation_alias=_env("SPENDGATE_REDIS_TIMEOUT_SECONDS"),
        description="How long a Redis call (or the wait for a connection) may take.",
    )
    redis_limits_on_error: Literal["fail_open", "fail_closed"] = Field(
        "fail_open",
        validation_alias=_env("SPENDGATE_REDIS_LIMITS_ON_ERROR"),
        description="Redis down: admit requests without rate limits, or refuse them (503).",
    )
    redis_budgets_on_error: Literal["fail_open", "fail_closed"] = Field(
        "fail_closed",
        validation_alias=_env("SPENDGATE_REDIS_BUDGETS_ON_ERROR"),
        description="Redis down: refuse requests under a budget or credits (503), or admit them.",
    )
    pricing_file: Path | None = Field(
        None,
        validation_alias=_env("SPENDGATE_PRICING_FILE"),
        description="Price overrides file (JSON or TOML), USD per 1M tokens.",
    )
    model_pricing_json: str | None = Field(
        None,
        validation_alias=_env("MODEL_PRICING_JSON", "SPENDGATE_MODEL_PRICING_JSON"),
        description="Inline price overrides as JSON, USD per 1K tokens.",
    )
    default_model: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_DEFAULT_MODEL", "MODEL_NAME"),
        description="Model used when a request names none.",
    )
    log_path: Path | None = Field(
        None,
        validation_alias=_env("SPENDGATE_LOG_PATH", "PROXY_LOG_PATH"),
        description="Log file, in addition to stderr.",
    )
    host: str = Field(
        "127.0.0.1",
        validation_alias=_env("SPENDGATE_HOST"),
        description="Listen address.",
    )
    port: int = Field(
        8000,
        ge=0,
        le=65535,
        validation_alias=_env("SPENDGATE_PORT", "PORT"),
        description="Listen port.",
    )
    ingest_key: SecretStr | None = Field(
        None,
        validation_alias=_env("SPENDGATE_INGEST_KEY", "INGEST_KEY"),
        description="Key for client-push usage ingestion; none makes /ingest answer 401.",
    )
    self_service: bool = Field(
        False,
        validation_alias=_env("SPENDGATE_SELF_SERVICE"),
        description="Allow self-service key requests under /public/keys.",
    )
    self_service_trusted_only: bool = Field(
        False,
        validation_alias=_env("SPENDGATE_SELF_SERVICE_TRUSTED_ONLY"),
        description="Self-service keys only for the trusted-header identity, in its own name.",
    )
    alert_webhook_url: str | None = Field(
        None,
        pattern=r"^https?://",
        validation_alias=_env("SPENDGATE_ALERT_WEBHOOK_URL"),
        description="http(s) URL budget and credit alerts are posted to as JSON; none: "
        "alerts are only recorded.",
    )
    alert_check_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias=_env("SPENDGATE_ALERT_CHECK_SECONDS"),
        description="Seconds between checks of budgets and balances for alerts.",
    )
    alert_low_balance_usd: Decimal = Field(
        Decimal(1),
        ge=0,
        validation_alias=_env("SPENDGATE_ALERT_LOW_BALANCE_USD"),
        description="A credit balance below this many USD raises a low-balance alert.",
    )
    metrics_user_labels: bool = Field(
        False,
        validation_alias=_env("SPENDGATE_METRICS_USER_LABELS"),
        description="Export per-user request, token and cost counters on /metrics (one "
        "series per user: keep off with many users).",
    )
    request_log: bool = Field(
        True,
        validation_alias=_env("SPENDGATE_REQUEST_LOG"),
        description="Write one JSON line per request to stderr and the log file.",
    )
    log_max_bytes: int = Field(
        100 * _MiB,
        ge=1024,
        validation_alias=_env("SPENDGATE_LOG_MAX_BYTES"),
        description="Size at which the log file is rotated.",
    )
    log_backups: int = Field(
        5,
        ge=0,
        le=1000,
        validation_alias=_env("SPENDGATE_LOG_BACKUPS"),
        description="Rotated log files kept (spendgate.log.1 …).",
    )
    influxdb_url: str | None = Field(
        None,
        pattern=r"^https?://",
        validation_alias=_env("SPENDGATE_INFLUXDB_URL"),
        description="InfluxDB server every usage event is also written to, as line protocol; "
        "none: no export.",
    )
    influxdb_database: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_INFLUXDB_DATABASE"),
        description="InfluxDB 1.x database (the /write API).",
    )
    influxdb_bucket: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_INFLUXDB_BUCKET"),
        description="InfluxDB 2.x/3.x bucket (the /api/v2/write API), with SPENDGATE_INFLUXDB_ORG.",
    )
    influxdb_org: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_INFLUXDB_ORG"),
        description="InfluxDB 2.x organisation of the bucket.",
    )
    influxdb_token: SecretStr | None = Field(
        None,
        validation_alias=_env("SPENDGATE_INFLUXDB_TOKEN"),
        description="InfluxDB API token (2.x), or user:password (1.x).",
    )
    otel: bool = Field(
        False,
        validation_alias=_env("SPENDGATE_OTEL"),
        description="Export an OpenTelemetry span per request (GenAI semantic conventions) "
        "over OTLP/HTTP.",
    )
    otel_endpoint: str = Field(
        "http://localhost:4318/v1/traces",
        pattern=r"^https?://",
        validation_alias=_env(
            "SPENDGATE_OTEL_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ),
        description="OTLP/HTTP traces endpoint the spans are sent to.",
    )
    otel_service_name: str = Field(
        "spendgate",
        min_length=1,
        validation_alias=_env("SPENDGATE_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        description="service.name of the exported spans.",
    )
    ingest_events_per_minute: int = Field(
        10_000,
        gt=0,
        validation_alias=_env("SPENDGATE_INGEST_EVENTS_PER_MINUTE"),
        description="Events each tracking token may push to /ingest per minute (429 beyond).",
    )
    trusted_user_header: str | None = Field(
        None,
        validation_alias=_env("SPENDGATE_TRUSTED_USER_HEADER"),
        description="Header naming the signed-in user, set by an authenticating reverse proxy "
        "(X-Forwarded-User); believed only from SPENDGATE_TRUSTED_PROXIES.",
    )
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("SPENDGATE_TRUSTED_PROXIES"),
        description="Addresses (IPs or CIDR blocks, comma list) whose trusted user header "
        "is believed.",
    )
    session_hours: float = Field(
        12,
        gt=0,
        le=24 * 90,
        validation_alias=_env("SPENDGATE_SESSION_HOURS"),
        description="How long a console sign-in lasts.",
    )
    session_secret: SecretStr | None = Field(
        None,
        validation_alias=_env("SPENDGATE_SESSION_SECRET"),
        description="Signs console sessions; none: derived from the admin token (the same on "
        "every instance).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=_env("SPENDGATE_CORS_ORIGINS", "ALLOWED_ORIGINS"),
        description="Browser origins allowed by CORS (comma list).",
    )
    on_disconnect: Literal["drain", "abort"] = Field(
        "drain",
        validation_alias=_env("SPENDGATE_ON_DISCONNECT"),
        description="When a client leaves mid-stream: drain the upstream for its usage, or abort.",
    )
    max_drains: int = Field(
        256,
        ge=0,
        validation_alias=_env("SPENDGATE_MAX_DRAINS"),
        description="How many abandoned streams may be drained at once.",
    )
    key_in_path: bool = Field(
        False,
        validation_alias=_env("SPENDGATE_KEY_IN_PATH"),
        description="Accept /{key}/v1/… for clients that can only set a base URL.",
    )
    max_body_bytes: int = Field(
        32 * _MiB,
        gt=0,
        validation_alias=_env("SPENDGATE_MAX_BODY_BYTES"),
        description="Largest request body accepted (413 beyond).",
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=4096,
        validation_alias=_env("SPENDGATE_MAX_HEADER_BYTES"),
        description="Largest request head (request line and headers) accepted (431 beyond).",
    )
    request_read_seconds: float = Field(
        60.0,
        gt=0,
        validation_alias=_env("SPENDGATE_REQUEST_READ_SECONDS"),
        description="Longest time a client may take to send a whole request, head and body "
        "(408 beyond: slow clients cannot hold connections open).",
    )
    auth_failures_per_minute: int = Field(
        60,
        ge=0,
        validation_alias=_env("SPENDGATE_AUTH_FAILURES_PER_MINUTE"),
        description="Failed authentications allowed per client address and minute; past them "
        "the address is refused (429) until it is back under the rate. 0: no throttling.",
    )
    stream_max_seconds: float = Field(
        3600.0,
        gt=0,
        validation_alias=_env("SPENDGATE_STREAM_MAX_SECONDS"),
        description="Longest an upstream stream is relayed or drained; it is then closed and "
        "recorded as estimated (upstream_timeout).",
    )
    flush_interval_ms: int = Field(
        100,
        gt=0,
        le=10_000,
        validation_alias=_env("SPENDGATE_FLUSH_INTERVAL_MS"),
        description="Longest time a usage event waits before it is written.",
    )
    database_timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("SPENDGATE_DATABASE_TIMEOUT_SECONDS"),
        description="Longest wait for a key look-up, a key-cache refresh or a ledger write; a "
        "database that hangs then counts as down (503 for unknown keys, writes retried).",
    )
    write_queue_max: int = Field(
        100_000,
        gt=0,
        validation_alias=_env("SPENDGATE_WRITE_QUEUE_MAX"),
        description="Usage events held in memory while the database is slow or down.",
    )
    journal_dir: Path | None = Field(
        None,
        validation_alias=_env("SPENDGATE_JOURNAL_DIR"),
        description="Directory of the journal: usage events kept on disk while the database "
        "cannot take them; none: the SQLite file's directory, else ./data.",
    )
    shutdown_write_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias=_env("SPENDGATE_SHUTDOWN_WRITE_SECONDS"),
        description="At shutdown, how long to keep writing queued events before the rest go "
        "to the journal.",
    )
    principal_refresh_seconds: float = Field(
        0.5,
        gt=0,
        validation_alias=_env("SPENDGATE_PRINCIPAL_REFRESH_SECONDS"),
        description="How often the key cache checks the database for changes by other processes.",
    )
    metrics_public: bool = Field(
        True,
        validation_alias=_env("SPENDGATE_METRICS_PUBLIC"),
        description="Serve /metrics without the admin token (it holds no secrets).",
    )
    default_max_tokens: int = Field(
        4096,
        gt=0,
        validation_alias=_env("SPENDGATE_DEFAULT_MAX_TOKENS"),
        description="Output tokens reserved against budgets when a request sets no bound.",
    )
    reservation_ttl_seconds: float = Field(
        900,
        gt=0,
        validation_alias=_env("SPENDGATE_RESERVATION_TTL_SECONDS"),
        description="How long a budget reservation lives if its request never settles.",
    )
    default_user_budget_usd: (
        Annotated[Decimal, Field(ge=0, le=9_000_000, decimal_places=12)] | None
    ) = Field(
        None,
        validation_alias=_env("SPENDGATE_DEFAULT_USER_BUDGET_USD"),
        description="Budget in USD given to new users that are created without one.",
    )
    default_user_budget_period: Period = Field(
        "monthly",
        validation_alias=_env("SPENDGATE_DEFAULT_USER_BUDGET_PERIOD"),
        description="Period of the default user budget: daily, weekly, monthly or total.",
    )
    default_user_limits: Limits | None = Field(
        None,
        validation_alias=_env("SPENDGATE_DEFAULT_USER_LIMITS"),
        description='Limits (JSON: {"requests_per_minute": 60}) for new users created without.',
    )
    default_key_budget_usd: (
        Annotated[Decimal, Field(ge=0, le=9_000_000, decimal_places=12)] | None
    ) = Field(
        None,
        validation_alias=_env("SPENDGATE_DEFAULT_KEY_BUDGET_USD"),
        description="Budget in USD given to new keys that are created without one.",
    )
    default_key_budget_period: Period = Field(
        "monthly",
        validation_alias=_env("SPENDGATE_DEFAULT_KEY_BUDGET_PERIOD"),
        description="Period of the default key budget: daily, weekly, monthly or total.",
    )
    default_key_limits: Limits | None = Field(
        None,
        validation_alias=_env("SPENDGATE_DEFAULT_KEY_LIMITS"),
        description="Limits (JSON) given to new keys created without any.",
    )

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("default_user_limits", "default_key_limits", mode="before")
    @classmethod
    def _parse_limits(cls, value: Any) -> Any:
        import json

        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else None
            except ValueError as exc:
                raise ValueError(f"malformed JSON ({exc})") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "://" not in value:
            raise ValueError("not a database URL (sqlite:///…, postgresql://…, mysql://…)")
        # The engine's own scheme table, so a scheme with a driver the engine cannot use
        # (sqlite+pysqlite, postgresql+psycopg) is refused here, naming the setting. Imported
        # here to keep SQLAlchemy and Alembic out of `spendgate --help`.
        from spendgate.ledger.engine import normalize_database_url

        normalize_database_url(value)  # ValueError names the scheme, never the password
        return value

    @field_validator("upstreams")
    @classmethod
    def _check_upstreams(cls, value: list[UpstreamConfig]) -> list[UpstreamConfig]:
        names = [u.name for u in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"upstream names must be unique: {', '.join(repeated)}")
        for u in value:
            if u.kind == "azure" and not u.api_version:
                raise ValueError(f"upstream '{u.name}' (azure) needs api_version")
        return value

    @field_validator("upstream_base")
    @classmethod
    def _check_upstream_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("model_pricing_json")
    @classmethod
    def _check_pricing_json(cls, value: str | None) -> str | None:
        import json

        if value is not None and value.strip():
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"malformed JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object of model -> prices")
        return value or None

    @property
    def database(self) -> str:
        """The database URL in effect (URL, else DATABASE_PATH, else ./data/spendgate.db)."""
        if self.database_url:
            return self.database_url
        if self.database_path:
            return f"sqlite:///{self.database_path}"
        return "sqlite:///./data/spendgate.db"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        sources.extend(_dotenv_sources(settings_cls, dotenv_settings))
        config_path = os.environ.get("SPENDGATE_CONFIG")
        if config_path:
            sources.append(InitSettingsSource(settings_cls, read_toml_settings(Path(config_path))))
        return tuple(sources)


def _dotenv_sources(
    settings_cls: type[BaseSettings], dotenv: PydanticBaseSettingsSource
) -> list[PydanticBaseSettingsSource]:
    """One source per env file, the later file first (`.env.local` before `.env`).

    pydantic-settings reads all env files into one mapping, where a setting's first name
    beats its aliases whichever file each came from (`SPENDGATE_PORT` in `.env` would beat
    `PORT` in `.env.local`); a source per file lets the file decide, as documented.
    """
    if not isinstance(dotenv, DotEnvSettingsSource):
        return [dotenv]
    files = dotenv.env_file
    if files is None:
        return []
    paths = [files] if isinstance(files, str | os.PathLike) else list(files)
    return [
        DotEnvSettingsSource(
            settings_cls, env_file=path, env_file_encoding=dotenv.env_file_encoding
        )
        for path in reversed(paths)
    ]


def env_name(field: str) -> str:
    """The primary environment variable name of a settings field."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return f"SPENDGATE_{field.upper()}"


def read_toml_settings(path: Path) -> dict[str, Any]:
    """Read a TOML settings file, refusing unknown keys."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"SPENDGATE_CONFIG: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"SPENDGATE_CONFIG: {path}: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"SPENDGATE_CONFIG: {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning any validation error into one clear `ConfigError` line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        name = env_name(field) if field in Settings.model_fields else field
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {message}") from None
