"""`make bench-ledger`: spendgate with 5,000,000 events in its ledger (issue 4).

1. Seeds a SQLite ledger (bench/ledger_seed.py; cached under ~/.cache/spendgate-bench for
   the rest of the UTC day), copies it to a temp dir and starts `spendgate serve` on it.
2. Times `/admin/usage` over loopback: the 30-day window grouped by user (target: median
   < 100 ms) and, for information, other groupings; notes the start-up time and the first
   request of a budgeted heavy user (its spend baseline is read from the ledger then).
3. Loads two gateways, one on an empty ledger and one on the seeded ledger, with wrk
   (chat, interleaved runs) and compares req/s and gateway CPU µs per request (target:
   within ±5 %). Checks that every request the fake upstream received is in each ledger.
4. Writes bench/RESULTS-ledger.md and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import platform
import secrets
import shlex
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType

from alembic.script import ScriptDirectory

import ledger_seed
from procs import LOOPBACK, BenchError, Server, free_port
from run import loadavg, machine
from spendgate.keys.material import display_key, hash_key, new_key
from spendgate.ledger.engine import alembic_config, create_engine, sqlite_url_for_path, upgrade
from spendgate.ledger.store import Store
from targets import clean_env, start_fake
from wrk import WrkResult, run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS-ledger.md"
CACHE_DIR = Path.home() / ".cache" / "spendgate-bench"
TARGET_MS = 100.0
TOLERANCE = 0.05
CHAT_PATH = "/v1/chat/completions"
SETTLE_S = 0.3  # after wrk ends, let the writer flush before reading CPU times
CHAT_BODY = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "Say hello to the benchmark in a few words."}],
    "max_tokens": 16,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=5_000_000, help="events to seed")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per gateway")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--queries", type=int, default=25, help="timed calls per report")
    parser.add_argument("--no-cache", action="store_true", help="seed afresh, cache nothing")
    parser.add_argument("--keep-logs", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    if min(args.events, args.duration, args.runs, args.connections, args.queries) < 1:
        parser.error("every number must be positive")
    return args


# the ledgers


def schema_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head or "none"


def seeded_ledger(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """A fresh copy of the seeded ledger in `work`, and how it was obtained."""
    spec = ledger_seed.SeedSpec(args.events)
    today = datetime.now(UTC).date().isoformat()
    stem = f"ledger-{args.events}-r{schema_revision()}-s{ledger_seed.SEED_VERSION}"
    cached = CACHE_DIR / f"{stem}-{today}.db"
    target = work / "seeded.db"
    if not args.no_cache and cached.exists():
        started = time.perf_counter()
        shutil.copyfile(cached, target)
        return target, f"copied from the cache {cached} in {time.perf_counter() - started:.1f} s"
    started = time.perf_counter()
    stats = ledger_seed.seed_ledger(target, spec, progress=_progress(started))
    how = f"seeded in {stats.seconds:.0f} s"
    if not args.no_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        for old in CACHE_DIR.glob(f"ledger-{args.events}-*"):  # older days, partial copies
            old.unlink()
        partial = cached.with_suffix(".partial")
        shutil.copyfile(target, partial)
        partial.rename(cached)
        how += f", cached as {cached}"
    return target, how


def _progress(started: float) -> ledger_seed.Progress:
    def note(what: str) -> None:
        print(f"  seeding: {time.perf_counter() - started:6.1f} s  {what}", file=sys.stderr)

    return note


@dataclass(frozen=True)
class Keys:
    plain: str  # the load key: user "bench", no budget (as bench/targets.py)
    heavy: str  # seed key 0 of HEAVY_USER: a daily key budget and a monthly user budget


async def add_keys(path: Path, *, seeded: bool) -> Keys:
    """Migrate (a no-op when seeded), add the load key; on an empty ledger add the heavy key."""
    engine = create_engine(sqlite_url_for_path(str(path)))
    try:
        await upgrade(engine)
        store = Store(engine)
        plain = new_key()
        await store.create_key("bench", hash_key(plain), display_key(plain), note="bench")
        heavy = ledger_seed.seed_key(0)
        if not seeded:  # the same budgets as the seeded ledger's key 0 and its user
            budget = ledger_seed.HEAVY_USER_BUDGET
            await store.create_user(ledger_seed.HEAVY_USER, budget_usd=budget,
                                    budget_period="monthly")  # fmt: skip
            await store.create_key(
                ledger_seed.HEAVY_USER, hash_key(heavy), display_key(heavy),
                budget_usd=budget, budget_period="daily",
            )  # fmt: skip
        return Keys(plain, heavy)
    finally:
        await engine.dispose()


def count_events(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM usage_events").fetchone()[0])
    finally:
        conn.close()


def rollup_rows_between(path: Path, start: date, end: date, table: str = "usage_daily") -> int:
    """Rows of a rollup table (usage_daily or usage_daily_user) in a day range."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE day >= ? AND day <= ?",
            (start.isoformat(), end.isoformat()),
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def events_between(path: Path, start: date, end: date) -> tuple[int, int]:
    """Requests and cost_pico straight from the events (the rollups' check)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost_pico), 0) FROM usage_events "
            "WHERE day >= ? AND day <= ?",
            (start.isoformat(), end.isoformat()),
        ).fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


# the gateways


@dataclass
class Gateway:
    name: str
    db: Path
    keys: Keys
    server: Server
    fake: Server
    fake_base: str
    port: int
    admin_token: str
    startup_s: float
    events_at_start: int
    completed: int = 0
    samples: list[Sample] = field(default_factory=list)

    def kill(self) -> None:
        self.server.kill()
        self.fake.kill()


def start_gateway(work: Path, name: str, db: Path, keys: Keys, events: int) -> Gateway:
    """`spendgate serve` on `db` in front of its own fake upstream; waits until it listens."""
    home = work / name
    home.mkdir()  # the cwd: no stray .env is read
    fake, base = start_fake(work, f"{name}-fake")
    port, token = free_port(), secrets.token_hex(16)
    env = clean_env() | {
        "SPENDGATE_DATABASE_URL": f"sqlite:///{db}",
        "SPENDGATE_UPSTREAM_BASE": base,
        "SPENDGATE_UPSTREAM_API_KEY": "sk-bench-upstream",
        "SPENDGATE_ADMIN_TOKEN": token,
    }
    argv = [sys.executable, "-m", "spendgate", "serve", "--host", LOOPBACK, "--port", str(port)]
    started = time.perf_counter()
    try:
        server = Server(name, argv, work, env=env, cwd=home)
    except BaseException:
        fake.kill()
        raise
    gateway = Gateway(name, db, keys, server, fake, base, port, token, 0.0, events)
    try:
        server.wait_for_line("listening", timeout_s=600)
        gateway.startup_s = time.perf_counter() - started
    except BaseException:
        gateway.kill()
        raise
    return gateway


class Client:
    """One keep-alive HTTP/1.1 connection to a loopback gateway."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=120)

    def call(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[float, bytes]:
        """(wall ms, body) of one request; BenchError unless it answers 200."""
        started = time.perf_counter()
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise BenchError(f"{method} {path}: {response.status} {data[:300]!r}")
        return elapsed, data

    def close(self) -> None:
        self.conn.close()


# /admin/usage


@dataclass(frozen=True)
class QueryTiming:
    label: str
    path: str
    times_ms: list[float]
    groups: int
    requests: int

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.times_ms)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def report_paths(today: date) -> list[tuple[str, str]]:
    start30, start60 = today - timedelta(days=29), today - timedelta(days=59)
    window = f"start={start30}&end={today}"
    return [
        ("30 days by user (the target)", f"/admin/usage?{window}&group_by=user"),
        ("30 days by model", f"/admin/usage?{window}&group_by=model"),
        ("30 days by day", f"/admin/usage?{window}&group_by=day"),
        ("30 days by key", f"/admin/usage?{window}&group_by=key"),
        ("default (last 30 days, totals only)", "/admin/usage"),
        ("60 days by user", f"/admin/usage?start={start60}&end={today}&group_by=user"),
        (f"30 days of {ledger_seed.HEAVY_USER} by day",
         f"/admin/usage?{window}&user={ledger_seed.HEAVY_USER}&group_by=day"),
        ("monitor (today, top users, recent)", "/admin/monitor"),
    ]  # fmt: skip


def time_reports(gateway: Gateway, queries: int) -> list[QueryTiming]:
    client = Client(gateway.port)
    headers = {"x-admin-token": gateway.admin_token}
    timings = []
    try:
        for label, path in report_paths(datetime.now(UTC).date()):
            for _ in range(2):  # warm-up: first-use costs (page cache, statement cache)
                client.call("GET", path, headers)
            times, data = [], b""
            for _ in range(queries):
                elapsed, data = client.call("GET", path, headers)
                times.append(elapsed)
            doc = json.loads(data)
            totals = doc.get("totals") or doc.get("today") or {}
            groups = len(doc.get("groups") or doc.get("top_users") or [])
            timings.append(QueryTiming(label, path, times, groups, int(totals.get("requests", 0))))
            print(f"  {label}: median {timings[-1].median:.1f} ms", file=sys.stderr)
    finally:
        client.close()
    return timings


def check_window(gateway: Gateway) -> list[str]:
    """The 30-day report's totals against a direct COUNT/SUM over the events."""
    today = datetime.now(UTC).date()
    start = today - timedelta(days=29)
    client = Client(gateway.port)
    try:
        path = f"/admin/usage?start={start}&end={today}&group_by=user"
        _, data = client.call("GET", path, {"x-admin-token": gateway.admin_token})
    finally:
        client.close()
    doc = json.loads(data)
    requests, cost_pico = events_between(gateway.db, start, today)
    api_cost = doc["totals"]["cost_usd"]
    summed = sum(int(g["requests"]) for g in doc["groups"])
    ok_requests = doc["totals"]["requests"] == requests == summed
    ok_cost = _pico(str(api_cost)) == cost_pico
    return [
        f"30-day totals.requests {doc['totals']['requests']:,}, sum over groups {summed:,}, "
        f"COUNT(*) over usage_events {requests:,}: {'PASS' if ok_requests else 'FAIL'}",
        f"30-day totals.cost_usd {api_cost} = SUM(cost_pico) over usage_events "
        f"({cost_pico:,} pico): {'PASS' if ok_cost else 'FAIL'}",
    ]


def _pico(usd: str) -> int:
    whole, _, frac = usd.partition(".")
    return int(whole) * 10**12 + int((frac + "0" * 12)[:12]) * (-1 if usd.startswith("-") else 1)


def first_requests(gateway: Gateway, count: int = 10) -> tuple[float, float]:
    """Wall ms of the heavy key's first chat request (reads its baselines) and of later ones."""
    client = Client(gateway.port)
    headers = {
        "authorization": f"Bearer {gateway.keys.heavy}",
        "content-type": "application/json",
    }
    body = json.dumps(CHAT_BODY).encode()
    try:
        first, _ = client.call("POST", CHAT_PATH, headers, body)
        later = [client.call("POST", CHAT_PATH, headers, body)[0] for _ in range(count)]
    finally:
        client.close()
    return first, statistics.median(later)


# wrk


@dataclass(frozen=True)
class Sample:
    rps: float
    gateway_cpu_us: float
    upstream_cpu_us: float
    p99_ms: float


def load(gateway: Gateway, body: Path, conns: int, seconds: int) -> Sample:
    cpu_before = gateway.server.cpu_seconds(), gateway.fake.cpu_seconds()
    result: WrkResult = run_wrk(
        f"http://{LOOPBACK}:{gateway.port}{CHAT_PATH}", connections=conns, duration_s=seconds,
        body_file=body, auth=f"Bearer {gateway.keys.plain}",
    )  # fmt: skip
    time.sleep(SETTLE_S)
    cpu_after = gateway.server.cpu_seconds(), gateway.fake.cpu_seconds()
    gateway.server.check_alive()
    gateway.fake.check_alive()
    gateway.completed += result.requests
    if result.status or result.socket_errors or result.requests == 0:
        raise BenchError(
            f"{gateway.name}: {result.status} non-2xx responses and {result.socket_errors} "
            f"socket errors in {result.requests} requests"
        )
    gw, up = ((a - b) * 1e6 / result.requests for a, b in zip(cpu_after, cpu_before, strict=True))
    return Sample(result.rps, gw, up, result.p99_us / 1000)


def ledger_check(gateway: Gateway) -> str:
    """After SIGTERM (the queue drains): events added == requests the fake received."""
    code = gateway.server.stop()
    if code not in (0, -15):
        raise BenchError(f"{gateway.name} exited with {code}:\n{gateway.server.log_tail()}")
    stats = _fake_stats(gateway.fake_base)
    added = count_events(gateway.db) - gateway.events_at_start
    ok = added == int(stats["received"])
    return (
        f"{gateway.name}: events added to the ledger {added:,} == requests the fake upstream "
        f"received {int(stats['received']):,}: {'PASS' if ok else 'FAIL'}"
    )


def _fake_stats(base: str) -> dict[str, int]:
    port = int(base.removesuffix("/v1").rsplit(":", 1)[1])
    client = Client(port)
    try:
        _, data = client.call("GET", "/__fake__/stats", {})
    finally:
        client.close()
    stats: dict[str, int] = json.loads(data)
    return stats


# the report


@dataclass
class Findings:
    seed_how: str = ""
    stats: ledger_seed.SeedStats | None = None
    timings: list[QueryTiming] = field(default_factory=list)
    window_checks: list[str] = field(default_factory=list)
    window_rollups: int = 0
    window_user_rollups: int = 0
    first: dict[str, tuple[float, float]] = field(default_factory=dict)
    ledger_lines: list[str] = field(default_factory=list)
    gateways: list[Gateway] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def query_section(found: Findings) -> tuple[list[str], bool]:
    lines = [
        "| report | path | median ms | p95 ms | max ms | groups | requests |",
        "|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for t in found.timings:
        lines.append(
            f"| {t.label} | `{t.path}` | {t.median:.1f} | {t.p95:.1f} | {max(t.times_ms):.1f} | "
            f"{t.groups} | {t.requests:,} |"
        )
    target = found.timings[0]
    ok = target.median < TARGET_MS
    lines += [
        "",
        f"**{verdict(ok)}**: 30-day `/admin/usage` grouped by user, median "
        f"{target.median:.1f} ms (p95 {target.p95:.1f}, max {max(target.times_ms):.1f}) "
        f"< {TARGET_MS:.0f} ms",
    ]
    return lines, ok


def load_section(found: Findings) -> tuple[list[str], bool]:
    empty, seeded = found.gateways
    lines = [
        "| ledger | events at start | req/s (runs) | req/s median | gateway CPU µs/req (runs) "
        "| gateway CPU µs/req median | upstream CPU µs/req | wrk p99 ms |",
        "|:---|---:|:---|---:|:---|---:|---:|---:|",
    ]
    for g in found.gateways:
        rps = [s.rps for s in g.samples]
        cpu = [s.gateway_cpu_us for s in g.samples]
        lines.append(
            f"| {g.name} | {g.events_at_start:,} | {', '.join(f'{v:,.0f}' for v in rps)} | "
            f"{statistics.median(rps):,.0f} | {', '.join(f'{v:,.0f}' for v in cpu)} | "
            f"{statistics.median(cpu):,.0f} | "
            f"{statistics.median(s.upstream_cpu_us for s in g.samples):,.0f} | "
            f"{statistics.median(s.p99_ms for s in g.samples):.1f} |"
        )
    cpu_ratio = _median_of(seeded, "gateway_cpu_us") / _median_of(empty, "gateway_cpu_us")
    rps_ratio = _median_of(seeded, "rps") / _median_of(empty, "rps")
    cpu_ok = abs(cpu_ratio - 1) <= TOLERANCE
    rps_ok = abs(rps_ratio - 1) <= TOLERANCE
    lines += [
        "",
        f"**{verdict(cpu_ok)}**: gateway CPU per request, seeded ÷ empty = {cpu_ratio:.3f} "
        f"(within ±{TOLERANCE:.0%})",
        "",
        f"**{verdict(rps_ok)}** (not gating): req/s, seeded ÷ empty = {rps_ratio:.3f} (within "
        f"±{TOLERANCE:.0%}); wrk and other processes share the cores, so req/s moves with the "
        "machine's load from run to run, CPU per request much less",
    ]
    return lines, cpu_ok


def _median_of(g: Gateway, name: str) -> float:
    return float(statistics.median(getattr(s, name) for s in g.samples))


def report(
    args: argparse.Namespace, found: Findings, started: datetime, loads: str
) -> tuple[str, bool]:
    stats = found.stats
    assert stats is not None
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    query_lines, query_ok = query_section(found)
    load_lines, load_ok = load_section(found)
    empty, seeded = found.gateways
    checks_ok = all(line.endswith("PASS") for line in found.window_checks + found.ledger_lines)
    mb = stats.bytes / 2**20
    out = [
        "# spendgate ledger at scale (issue 4)",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average (1, 5, 15 min) {loads} (other processes may "
        "share the machine)",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {wrk_version()}",
        f"- command: `{shlex.join([str(exe), *sys.argv])}`",
        f"- ledger: SQLite, {stats.events:,} events from {stats.first_day} to {stats.last_day}, "
        f"{stats.rollup_rows:,} `usage_daily` rows ({found.window_rollups:,} in the 30-day "
        f"window), {stats.user_rollup_rows:,} `usage_daily_user` rows "
        f"({found.window_user_rollups:,} in the window), {stats.users} users, {stats.keys} keys, "
        f"{mb:,.0f} MiB; {found.seed_how}",
        f"- start-up of `spendgate serve` until it listens: empty ledger {empty.startup_s:.2f} s, "
        f"seeded ledger {seeded.startup_s:.2f} s",
        "",
        "## /admin/usage on the seeded ledger",
        "",
        f"{args.queries} timed calls per row over one keep-alive loopback connection, after 2 "
        "untimed ones; wall time in the client (request sent to body read).",
        "",
        *query_lines,
        "",
        *(f"- {line}" for line in found.window_checks),
        "",
        "## per-request cost: empty ledger vs seeded ledger",
        "",
        f"wrk -t2 -c{args.connections} -d{args.duration}s, chat (non-streamed, max_tokens 16) "
        f"with a key without budget; {args.runs} run(s) per gateway, interleaved (empty, seeded, "
        "…), after a 2 s warm-up each. CPU µs/req = utime+stime of the process during a run ÷ "
        "wrk's completed requests.",
        "",
        *load_lines,
        "",
        "## spend baselines",
        "",
        f"The first request of seed key 0 ({ledger_seed.HEAVY_USER}: monthly user budget, daily "
        "key budget) reads both baselines from the ledger; later ones do not.",
        "",
        "| ledger | first request ms | later requests, median ms |",
        "|:---|---:|---:|",
        *(f"| {name} | {a:.1f} | {b:.1f} |" for name, (a, b) in found.first.items()),
        "",
        "## checks",
        "",
        *(f"- {line}" for line in found.ledger_lines),
        "",
        "## server logs",
        "",
        *(found.problems or ["- no errors or warnings in any server log"]),
    ]
    ok = query_ok and load_ok and checks_ok
    out += ["", f"**overall: {verdict(ok)}**"]
    return "\n".join(out), ok


# main


def run(args: argparse.Namespace, work: Path, found: Findings) -> None:
    seeded_db, found.seed_how = seeded_ledger(args, work)
    found.stats = ledger_seed.ledger_stats(seeded_db, 0)
    today = datetime.now(UTC).date()
    window = today - timedelta(days=29), today
    found.window_rollups = rollup_rows_between(seeded_db, *window)
    found.window_user_rollups = rollup_rows_between(seeded_db, *window, table="usage_daily_user")
    empty_db = work / "empty.db"
    keys_empty = asyncio.run(add_keys(empty_db, seeded=False))
    keys_seeded = asyncio.run(add_keys(seeded_db, seeded=True))
    print("starting the gateways ...", file=sys.stderr)
    empty = start_gateway(work, "empty", empty_db, keys_empty, count_events(empty_db))
    found.gateways.append(empty)
    seeded = start_gateway(work, "seeded", seeded_db, keys_seeded, found.stats.events)
    found.gateways.append(seeded)
    print("timing /admin/usage ...", file=sys.stderr)
    found.timings = time_reports(seeded, args.queries)
    found.window_checks = check_window(seeded)
    for g in found.gateways:
        found.first[g.name] = first_requests(g)
    body = work / "chat.json"
    body.write_bytes(json.dumps(CHAT_BODY).encode())
    for g in found.gateways:
        load(g, body, args.connections, 2)  # warm-up, not reported
    for i in range(args.runs):
        for g in found.gateways:
            sample = load(g, body, args.connections, args.duration)
            g.samples.append(sample)
            print(f"  run {i + 1} {g.name}: {sample.rps:,.0f} req/s, "
                  f"{sample.gateway_cpu_us:,.0f} µs CPU/req", file=sys.stderr)  # fmt: skip
    found.ledger_lines = [ledger_check(g) for g in found.gateways]
    for g in found.gateways:
        g.fake.stop()
    found.problems = [
        f"- {s.name}: `{line}`"
        for g in found.gateways
        for s in (g.server, g.fake)
        for line in s.problems()
    ]


def main() -> int:
    args = parse_args()
    started = datetime.now(UTC)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-ledger-"))
    found = Findings()
    ok = False
    try:
        load_start = loadavg()
        run(args, work, found)
        text, ok = report(args, found, started, f"{load_start} at start, {loadavg()} at end")
        RESULTS.write_text(text + "\n")
        print(text)
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
    finally:
        for g in found.gateways:
            g.kill()
        if args.keep_logs:
            print(f"logs and ledgers kept in {work}", file=sys.stderr)
        elif ok:
            shutil.rmtree(work, ignore_errors=True)
        else:  # keep the logs, not the (large) ledgers
            for db in work.glob("*.db*"):
                db.unlink()
            print(f"server logs kept in {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
