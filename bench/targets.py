"""What the benchmark measures: one `TargetDef` per system under test, listed in `TARGETS`.

A target starts its processes in a work directory and hands back a `Running`: the base URL
wrk and hey load (scenarios add their path), the Authorization header, the `gateway` process
(None when there is none) and the `upstream` process (the fake), whose CPU is measured
separately. `finish()` stops it and may return a `Check` (spendgate verifies its ledger, the
others the fake's request counter); then its `cleanups` run (a scratch database dropped, Redis
keys deleted), also when the benchmark is killed. A target that cannot run here raises
`TargetUnavailable` and is skipped. To add one, write a `start_*` function and append a
`TargetDef`; the harness, tables and ratios pick it up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from peers import start_litellm_server
from procs import (
    LOOPBACK,
    BenchError,
    Server,
    free_port,
    loopback_json,
    loopback_request,
    start_server,
)
from scenarios import SCENARIOS
from scratch import ScratchDatabase, ScratchRedis
from spendgate.config import Settings
from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
from spendgate.ledger.reports import UsageFilter, usage_report
from spendgate.ledger.store import Store
from spendgate.limits.names import LIMIT_WINDOWS

BENCH_DIR = Path(__file__).resolve().parent
UPSTREAM_KEY = "sk-bench-upstream"
LITELLM_SKIPS = frozenset({"mixed"})  # it forwards no x-fake-* header to the upstream


@dataclass
class Check:
    """A correctness check run when a target finishes."""

    ok: bool
    lines: list[str]


@dataclass
class Running:
    """A started target. `completed`/`cut_allowance` are filled in by the harness."""

    name: str
    base_url: str  # "http://127.0.0.1:PORT"; a scenario appends its path
    auth: str  # the Authorization header value
    gateway: Server | None
    upstream: Server
    upstream_base: str  # the fake's base URL, ".../v1"
    finisher: Callable[[Running], Check | None] | None = None
    completed: int = 0  # responses wrk and hey completed, over every run incl. warm-ups
    cut_allowance: int = 0  # connections summed over runs: at most this many cut in flight
    servers: list[Server] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # after the servers

    def url(self, path: str) -> str:
        """The URL of `path` ("/v1/...") on this target."""
        return self.base_url + path

    def upstream_stats(self) -> dict[str, int]:
        """The fake upstream's counters (GET /__fake__/stats)."""
        stats = loopback_json(self.upstream_base.removesuffix("/v1") + "/__fake__/stats")
        return {k: v for k, v in stats.items() if isinstance(v, int)}

    def finish(self) -> Check | None:
        """Stop gracefully (gateway first, so it drains), run the target's check."""
        check = self.finisher(self) if self.finisher is not None else None
        for server in reversed(self.servers):
            server.stop()
        while self.cleanups:
            self.cleanups.pop()()
        return check

    def kill(self) -> None:
        """Kill every process, then run the cleanups left; never raises (the error path)."""
        for server in self.servers:
            server.kill()
        while self.cleanups:
            cleanup = self.cleanups.pop()
            try:
                cleanup()
            except Exception as exc:  # the benchmark is failing already: report, go on
                print(f"{self.name}: cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)


@dataclass(frozen=True)
class TargetDef:
    name: str
    description: str
    start: Callable[[Path], Running]
    peer: bool = False  # another product (LiteLLM): only with --peers or --targets
    judged: bool = False  # a spendgate: the target figures apply to it
    skips: frozenset[str] = frozenset()  # scenarios it cannot serve


def start_fake(work: Path, name: str) -> tuple[Server, str]:
    """A fake upstream on a free loopback port; returns it and its base URL (".../v1")."""
    argv = [sys.executable, "-m", "spendgate.fake_upstream", "--host", LOOPBACK, "--port", "0"]
    ready = "fake upstream on "
    server, line = start_server(name, argv, work, ready=ready, env=clean_env(), cwd=work)
    return server, line.split("fake upstream on ", 1)[1].strip()


Launch = Callable[[str], tuple[Server, str, str]]  # fake's base URL -> (server, base URL, auth)


def _behind_fake(
    work: Path, name: str, launch: Launch, finisher: Callable[[Running], Check | None]
) -> Running:
    """Start a fake upstream, then the target in front of it (`launch`), as one `Running`."""
    fake, upstream_base = start_fake(work, f"{name}-fake")
    try:
        gateway, base_url, auth = launch(upstream_base)
    except BaseException:
        fake.kill()
        raise
    running = Running(name, base_url, auth, gateway, fake, upstream_base, finisher)
    running.servers = [fake, gateway]
    return running


def start_direct(work: Path) -> Running:
    """(a) The fake upstream, loaded directly."""
    fake, base = start_fake(work, "direct-fake")
    origin = base.removesuffix("/v1")
    running = Running("direct", origin, "Bearer sk-direct", None, fake, base, _upstream_check)
    running.servers = [fake]
    return running


def start_passthrough(work: Path) -> Running:
    """(b) bench/passthrough.py, the bare aiohttp pass-through proxy, before a fake."""

    def launch(upstream_base: str) -> tuple[Server, str, str]:
        key, port = f"sk-bench-{secrets.token_hex(12)}", free_port()
        argv = [sys.executable, str(BENCH_DIR / "passthrough.py"), "--host", LOOPBACK]
        argv += ["--port", str(port), "--upstream", upstream_base]
        env = clean_env() | {
            "BENCH_PASSTHROUGH_KEY": key,
            "BENCH_PASSTHROUGH_UPSTREAM_KEY": UPSTREAM_KEY,
        }
        ready = "passthrough listening on "
        server, _ = start_server("passthrough", argv, work, ready=ready, env=env, cwd=work)
        return server, f"http://{LOOPBACK}:{port}", f"Bearer {key}"

    return _behind_fake(work, "passthrough", launch, _passthrough_check)


def start_spendgate(work: Path) -> Running:
    """(c) `spendgate serve` (SQLite ledger in `work`, in-process limits) before a fake."""
    return _start_spendgate(work, "spendgate", _sqlite_url(work / "spendgate"), limited=False)


def start_spendgate_limited(work: Path) -> Running:
    """(c') as (c), with every limit, both budgets, credits and an allow-list on the key."""
    return _start_spendgate(work, "sg-limits", _sqlite_url(work / "sg-limits"), limited=True)


def start_spendgate_postgres(work: Path) -> Running:
    """(d) as (c) on PostgreSQL (a scratch database, dropped afterwards)."""
    database = ScratchDatabase.new()
    database.create()
    try:
        running = _start_spendgate(work, "sg-postgres", database.url, limited=False)
    except BaseException:
        database.drop()
        raise
    running.cleanups.append(database.drop)
    return running


def start_spendgate_postgres_redis(work: Path) -> Running:
    """(d') as (c') on PostgreSQL, the limits on Redis (a key prefix of its own)."""
    redis = ScratchRedis.new()
    redis.ping()  # before the database: nothing to drop if Redis is not there
    database = ScratchDatabase.new()
    database.create()
    limits_env = {"SPENDGATE_REDIS_URL": redis.url, "SPENDGATE_REDIS_PREFIX": redis.prefix}
    try:
        running = _start_spendgate(
            work, "sg-postgres-redis", database.url, limited=True, limits_env=limits_env
        )
    except BaseException:
        redis.delete()
        database.drop()
        raise
    running.finisher = _redis_check(redis, database.url)
    running.cleanups += [database.drop, redis.delete]
    # A scope's first admission rebuilds its Redis spend counters from the ledger, after
    # waiting out the writer's flush window (~0.8 s): done here, not in a timed run.
    _prime(running)
    return running


def start_litellm(work: Path) -> Running:
    """(e) LiteLLM's proxy, pinned, one worker, no database (bench/peers.py)."""

    def launch(upstream_base: str) -> tuple[Server, str, str]:
        server, base_url, master_key = start_litellm_server(
            work, "litellm", upstream_base, clean_env()
        )
        return server, base_url, f"Bearer {master_key}"

    running = _behind_fake(work, "litellm", launch, _upstream_check)
    _prime(running, LITELLM_SKIPS)  # its first requests take seconds
    return running


def _prime(running: Running, skips: frozenset[str] = frozenset()) -> None:
    """One request per scenario before wrk starts, so slow first requests are not timed."""
    try:
        for scenario in SCENARIOS:
            if scenario.name not in skips:
                auth = {"Authorization": running.auth}
                url = running.url(scenario.path)
                loopback_request(url, "POST", body=scenario.body, headers=auth, timeout_s=120)
                running.completed += 1
    except BaseException:
        running.kill()
        raise


def _sqlite_url(home: Path) -> str:
    return f"sqlite:///{home / 'ledger.db'}"


def _start_spendgate(
    work: Path,
    name: str,
    database_url: str,
    *,
    limited: bool,
    limits_env: dict[str, str] | None = None,  # none: limits in process
) -> Running:
    home = work / name
    home.mkdir()  # the cwd: no stray .env is read
    key = asyncio.run(_make_key(database_url, limited=limited))

    def launch(upstream_base: str) -> tuple[Server, str, str]:
        port = free_port()
        env = (
            clean_env()
            | (limits_env or {})
            | {
                "SPENDGATE_DATABASE_URL": database_url,
                "SPENDGATE_UPSTREAM_BASE": upstream_base,
                "SPENDGATE_UPSTREAM_API_KEY": UPSTREAM_KEY,
                "SPENDGATE_ADMIN_TOKEN": secrets.token_hex(16),
            }
        )
        argv = [sys.executable, "-m", "spendgate", "serve", "--host", LOOPBACK]
        argv += ["--port", str(port)]
        server, _ = start_server(name, argv, work, ready="listening", env=env, cwd=home)
        return server, f"http://{LOOPBACK}:{port}", f"Bearer {key}"

    return _behind_fake(work, name, launch, _ledger_check(database_url))


TARGETS: list[TargetDef] = [
    TargetDef("direct", "(a) the fake upstream, direct", start_direct),
    TargetDef(
        "passthrough",
        "(b) bare pass-through proxy (aiohttp + uvloop, one pooled client; key lookup and "
        "swap, usage read, counts in memory)",
        start_passthrough,
    ),
    TargetDef(
        "spendgate",
        "(c) spendgate serve, SQLite ledger, in-process limits",
        start_spendgate,
        judged=True,
    ),
    TargetDef(
        "sg-limits",
        "(c') as (c) with 12 rate limits (user and key), two budgets, credits and an allow-list "
        "on the key, none of them reached",
        start_spendgate_limited,
        judged=True,
    ),
    TargetDef(
        "sg-postgres",
        "(d) spendgate serve, PostgreSQL ledger (127.0.0.1:5432), in-process limits",
        start_spendgate_postgres,
        judged=True,
    ),
    TargetDef(
        "sg-postgres-redis",
        "(d') as (c') on PostgreSQL (127.0.0.1:5432) with the limits on Redis "
        "(127.0.0.1:6379, a key prefix of its own): one Lua script round trip to admit, one "
        "to settle",
        start_spendgate_postgres_redis,
        judged=True,
    ),
    TargetDef(
        "litellm",
        "(e) LiteLLM proxy 1.106.2, one worker, no database (forwards no x-fake-* header: "
        "no mixed scenario)",
        start_litellm,
        peer=True,
        skips=LITELLM_SKIPS,
    ),
]


def clean_env() -> dict[str, str]:
    """This environment minus every variable spendgate's settings would read."""
    names = {"SPENDGATE_CONFIG"}
    for info in Settings.model_fields.values():
        names.update(c for c in getattr(info.validation_alias, "choices", ()) if isinstance(c, str))
    upper = {name.upper() for name in names}
    return {k: v for k, v in os.environ.items() if k.upper() not in upper}


async def _make_key(database_url: str, *, limited: bool) -> str:
    engine = create_engine(normalize_database_url(database_url))
    try:
        await upgrade(engine)
        key = new_key()
        store = Store(engine)
        if not limited:
            await store.create_key("bench", hash_key(key), display_key(key), note="bench")
            return key
        # Limits and money out of reach: every request is admitted, and checked.
        limits = dict.fromkeys(LIMIT_WINDOWS, 10**11)
        money = Decimal(1_000_000)
        await store.create_user("bench", budget_usd=money, limits=limits)
        await store.add_credit("bench", money, note="bench", actor="bench")
        await store.create_key(
            "bench", hash_key(key), display_key(key), note="bench", budget_usd=money,
            budget_period="daily", limits=limits, models=["gpt-4o*", "text-embedding-3-*"],
        )  # fmt: skip
        return key
    finally:
        await engine.dispose()


async def _ledger_requests(database_url: str) -> int:
    engine = create_engine(normalize_database_url(database_url))
    try:
        end = datetime.now(UTC).date() + timedelta(days=1)
        report = await usage_report(engine, UsageFilter(start=date(2000, 1, 1), end=end), None)
        return int(report["totals"]["requests"])
    finally:
        await engine.dispose()


def _ledger_check(database_url: str) -> Callable[[Running], Check]:
    def check(running: Running) -> Check:
        assert running.gateway is not None
        code = running.gateway.stop()  # SIGTERM: in-flight streams finish, the queue drains
        if code not in (0, -15):
            raise BenchError(
                f"spendgate exited with {code} on SIGTERM:\n{running.gateway.log_tail()}"
            )
        stats = running.upstream_stats()
        received, ledger = int(stats["received"]), asyncio.run(_ledger_requests(database_url))
        low, high = running.completed, running.completed + running.cut_allowance
        exact, bounded = ledger == received, low <= ledger <= high
        lines = [
            f"wrk + hey completed responses (all runs incl. warm-ups): {low}",
            f"fake upstream received (GET /__fake__/stats): {received} "
            f"(billed {stats['requests']}, unbilled {stats['unbilled']}, errors {stats['errors']})",
            f"ledger requests (usage_report after SIGTERM drain): {ledger}",
            f"ledger == upstream received: {'PASS' if exact else 'FAIL'}",
            f"completed <= ledger <= completed + connections per run ({high}): "
            f"{'PASS' if bounded else 'FAIL'}",
        ]
        return Check(exact and bounded, lines)

    return check


def _redis_check(redis: ScratchRedis, database_url: str) -> Callable[[Running], Check]:
    """The ledger check, then: every admission reserved budget in Redis and settled it."""
    ledger_check = _ledger_check(database_url)

    def check(running: Running) -> Check:
        result = ledger_check(running)  # stops the gateway first: every settlement is in
        counters = redis.counters()
        ledger = asyncio.run(_ledger_requests(database_url))
        used, admitted = counters.keys > 0, counters.reservations == ledger
        settled = counters.reserved_pico == 0
        result.lines += [
            f"Redis keys under {redis.prefix}: {counters.keys}: {'PASS' if used else 'FAIL'}",
            f"admissions that reserved budget in Redis (ids counter): {counters.reservations}, "
            f"ledger requests {ledger}: {'PASS' if admitted else 'FAIL'}",
            f"budget still reserved in Redis after the drain: {counters.reserved_pico} "
            f"picodollars: {'PASS' if settled else 'FAIL'}",
        ]
        return Check(result.ok and used and admitted and settled, result.lines)

    return check


def _upstream_check(running: Running) -> Check:
    """The fake received what wrk and hey completed, up to the requests cut in flight."""
    stats = running.upstream_stats()
    low, high = running.completed, running.completed + running.cut_allowance
    bounded = low <= stats["received"] <= high
    lines = [
        f"wrk + hey completed responses (all runs incl. warm-ups): {low}",
        f"fake upstream received (GET /__fake__/stats): {stats['received']} "
        f"(billed {stats['requests']}, unbilled {stats['unbilled']}, errors {stats['errors']})",
        f"completed <= received <= completed + connections per run ({high}): "
        f"{'PASS' if bounded else 'FAIL'}",
    ]
    return Check(bounded, lines)


def _passthrough_check(running: Running) -> Check:
    """As `_upstream_check`, and the proxy's token counts equal what the fake billed."""
    check = _upstream_check(running)
    assert running.gateway is not None
    counted = loopback_json(running.base_url + "/__passthrough__/stats")
    billed = running.upstream_stats()
    names = ("requests", "prompt_tokens", "completion_tokens")
    exact = all(counted[n] == billed[n] for n in names)
    check.lines += [
        "pass-through counted " + ", ".join(f"{n} {counted[n]}" for n in names),
        "fake billed " + ", ".join(f"{n} {billed[n]}" for n in names),
        f"counted == billed: {'PASS' if exact else 'FAIL'}",
    ]
    return Check(check.ok and exact, check.lines)
