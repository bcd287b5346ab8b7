"""`make soak`: spendgate under 10 minutes of mixed load: no memory growth, no fd or task leaks.

Targets: RSS <= 120 MB per worker after 100,000 requests (issue 4), then a soak of mixed load
with flat memory, file descriptors and event-loop tasks (issue 9).

1. Starts the `spendgate` target exactly as bench/run.py does (`spendgate serve`, one worker,
   SQLite ledger in a temp dir, its own fake upstream).
2. Load: wrk at 50 connections in slices rotating `chat`, `stream`, `embeddings` and `mixed`
   (10 % upstream 500s) until at least `--requests` (100,000) responses completed and each
   of the four ran once (its first slice is warm-up: see `load_phase`); during
   every slice the chaos client (bench/chaos.py) abandons streams, sends wrong keys, bad JSON
   and heads in two parts, a few times a second.
3. Soak: `--soak-seconds` (600) more of the same in `--slice-seconds` (15) slices.
4. After each slice: SETTLE_S, then /metrics is polled until no request is in flight, no
   stream drain active and the write queue empty (at most QUIET_TIMEOUT_S); then the sample:
   VmRSS and RssAnon (/proc/PID/status), open fds (/proc/PID/fd) and event-loop tasks
   (`spendgate_event_loop_tasks`). Flat: the RSS least-squares slope and first-to-last
   growth within FLAT_SLOPE_MB_PER_MIN and FLAT_GROWTH_MB; fds and tasks grown by at most
   FLAT_FDS and FLAT_TASKS from the first soak sample to the last; the three gauges 0 at the
   end; every chaos answer as expected and no address refused by the auth throttle.
5. SIGTERM, then the harness's ledger check: every request the fake received is in the ledger
   (the chaos client's abandoned streams and slow heads counted with wrk's responses).
6. Writes bench/RESULTS-soak.md (`--output`) and prints it; exits 1 if the ledger check or a
   verdict fails. `--quick` is a ~1 minute smoke test that writes /tmp/soak-quick.md unless
   told otherwise (never the committed results); too short for the verdicts (the RSS still
   grows while caches fill), its exit status is the ledger check's alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from chaos import Chaos, Counts
from procs import BenchError, Server, loopback_request
from run import check_statuses, loadavg, machine
from scenarios import SCENARIOS, Scenario
from targets import Check, Running, start_spendgate
from wrk import run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS-soak.md"
QUICK_RESULTS = Path("/tmp/soak-quick.md")
RSS_TARGET_MB = 120.0  # VmRSS of the worker after the load phase
FLAT_SLOPE_MB_PER_MIN = 0.5  # least-squares slope of VmRSS over the soak samples
FLAT_GROWTH_MB = 3.0  # last soak sample minus the first
FLAT_FDS = 5  # open file descriptors: last soak sample minus the first
FLAT_TASKS = 5  # event-loop tasks: last soak sample minus the first
SETTLE_S = 0.5  # after wrk ends: in-flight streams finish, the ledger writer flushes
QUIET_TIMEOUT_S = 10.0  # then at most this long for in-flight, drains and queue to reach 0
ROTATION = ("chat", "stream", "embeddings", "mixed")  # the scenarios of successive slices
TASKS = "spendgate_event_loop_tasks"
QUIET = (  # gauges that must be back to 0 once the load stops
    "spendgate_requests_in_flight",
    "spendgate_stream_drains_active",
    "spendgate_write_queue_depth",
)
AUTH_FAILURES, AUTH_REFUSED = "spendgate_auth_failures_total", "spendgate_auth_refused_total"
_LOG_MARKS = ("Traceback", "ERROR", "Error", "WARNING", "Exception", "CRITICAL")  # procs.py's
_UPSTREAM_500 = re.compile(r"WARNING spendgate\.proxy: \S+: upstream \S+ failed \(http_5xx\)$")
_LOG_LINES_SHOWN = 8
DEFAULTS = {"requests": 100_000, "soak_seconds": 600, "slice_seconds": 15, "load_slice": 10}
QUICK = {"requests": 5_000, "soak_seconds": 40, "slice_seconds": 5, "load_slice": 5}


@dataclass(frozen=True)
class Sample:
    """The gateway after one wrk slice, once quiet."""

    phase: str  # "load" or "soak"
    scenario: str
    seconds: int  # wrk's -d of the slice
    elapsed_s: float  # since the first slice began
    requests: int  # completed responses so far (wrk, and the chaos requests sent upstream)
    rps: float  # of this slice (wrk)
    rss_mb: float  # VmRSS
    anon_mb: float  # RssAnon: the heap; the rest is mapped files and shared memory
    fds: int  # entries of /proc/PID/fd
    tasks: int  # spendgate_event_loop_tasks
    chaos: int  # the chaos client's actions during the slice
    quiet_s: float | None  # after SETTLE_S, until the QUIET gauges were 0 (None: never)


@dataclass
class Soak:
    """The running target, its request bodies, the chaos client and the samples so far."""

    running: Running
    bodies: dict[str, Path]
    connections: int
    chaos: Chaos
    began: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    gauges: dict[str, float] = field(default_factory=dict)  # the last /metrics scrape

    @property
    def gateway(self) -> Server:
        assert self.running.gateway is not None
        return self.running.gateway

    @property
    def requests(self) -> int:
        return self.running.completed

    def next_scenario(self) -> Scenario:
        name = ROTATION[len(self.samples) % len(ROTATION)]
        return next(s for s in SCENARIOS if s.name == name)

    def run_slice(self, phase: str, seconds: int) -> Sample:
        """One wrk run of the next scenario with the chaos client, then the sample."""
        scenario, running = self.next_scenario(), self.running
        with self.chaos.running() as chaos:
            result = run_wrk(
                running.url(scenario.path),
                connections=self.connections,
                duration_s=seconds,
                body_file=self.bodies[scenario.name],
                auth=running.auth,
                error_every=scenario.error_every,
            )
        time.sleep(SETTLE_S)
        for server in running.servers:
            server.check_alive()
        running.completed += result.requests + chaos.upstream
        running.cut_allowance += self.connections
        check_statuses(running.name, scenario, result, self.connections)
        if result.requests == 0:
            raise BenchError(f"{running.name}: wrk completed no request")
        check_chaos(chaos)
        quiet_s = self.wait_quiet()
        sample = Sample(
            phase,
            scenario.name,
            seconds,
            time.monotonic() - self.began,
            self.requests,
            result.rps,
            status_mb(self.gateway, "VmRSS"),
            status_mb(self.gateway, "RssAnon"),
            fd_count(self.gateway),
            int(self.gauges[TASKS]),
            chaos.total,
            quiet_s,
        )
        self.samples.append(sample)
        print(
            f"{phase} {len(self.samples):>3} {scenario.name:<10} -d{seconds}s "
            f"{result.rps:>7,.0f} req/s  {sample.requests:>9,} requests  "
            f"RSS {sample.rss_mb:6.1f} MB  fds {sample.fds:>4}  tasks {sample.tasks:>4}  "
            f"chaos {chaos.summary()}",
            file=sys.stderr,
        )
        return sample

    def wait_quiet(self) -> float | None:
        """Poll /metrics until the QUIET gauges are 0; the seconds it took, None on timeout.
        `gauges` keeps the last scrape either way."""
        started = time.monotonic()
        while True:
            self.gauges = scrape(self.running)
            waited = time.monotonic() - started
            if all(self.gauges[name] == 0 for name in QUIET):
                return waited
            if waited > QUIET_TIMEOUT_S:
                return None
            time.sleep(0.05)


def check_chaos(counts: Counts) -> None:
    """Abort on any unexpected chaos outcome: the ledger check would not be exact."""
    if counts.failed:
        raise BenchError(
            f"chaos client: {counts.failed} unexpected outcomes: " + "; ".join(counts.failures)
        )


def scrape(running: Running) -> dict[str, float]:
    """The gateway's /metrics as name (with labels, if any) -> value."""
    text = loopback_request(running.base_url + "/metrics").decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    missing = [name for name in (*QUIET, TASKS, AUTH_FAILURES, AUTH_REFUSED) if name not in values]
    if missing:
        raise BenchError(f"{running.name}: /metrics has no {', '.join(missing)}")
    return values


def fd_count(server: Server) -> int:
    """Open file descriptors of the process (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{server.pid}/fd"))


def status_mb(server: Server, name: str) -> float:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in MiB."""
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"{server.name}: no {name} in /proc/{server.pid}/status")


def load_phase(soak: Soak, target: int, slice_s: int) -> None:
    """Slices until `target` responses completed and every scenario of the rotation ran once.

    A scenario's first slice fills what its code paths keep (error paths, price and usage
    caches, the allocator's pools at its request sizes): warm-up, not growth, so it belongs
    before the soak measures flatness. The last slice is shortened to fit the target, unless
    a scenario is still to run.
    """
    while soak.requests < target or len(soak.samples) < len(ROTATION):
        seconds = slice_s
        left = target - soak.requests
        if soak.samples and left > 0 and len(soak.samples) >= len(ROTATION) - 1:
            rate = max(soak.samples[-1].rps, 1.0)  # from the last slice, with 10 % to spare
            seconds = min(slice_s, max(1, math.ceil(left * 1.1 / rate)))
        soak.run_slice("load", seconds)


def soak_phase(soak: Soak, total_s: int, slice_s: int) -> list[Sample]:
    """`total_s` seconds of wrk in slices of `slice_s` (the last one may be shorter)."""
    samples: list[Sample] = []
    left = total_s
    while left > 0:
        seconds = min(slice_s, left)
        samples.append(soak.run_slice("soak", seconds))
        left -= seconds
    return samples


def slope_mb_per_min(samples: list[Sample]) -> float | None:
    """Least-squares slope of VmRSS over elapsed time, MB per minute (None below 2 samples)."""
    if len(samples) < 2:
        return None
    xs = [s.elapsed_s / 60 for s in samples]
    ys = [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


@dataclass(frozen=True)
class Figures:
    """The figures the verdicts are made of."""

    idle_mb: float  # VmRSS once started, before any request
    idle_fds: int
    idle_tasks: int
    after_load_mb: float
    after_load_hwm_mb: float
    peak_mb: float  # VmHWM at the end of the soak
    soak: list[Sample]
    end_gauges: dict[str, float]  # the /metrics scrape after the last slice
    chaos: Counts  # over the whole run
    upstream_errors: int  # error answers of the fake (the 500s of `mixed`), after the last slice

    @property
    def growth_mb(self) -> float | None:
        return self.soak[-1].rss_mb - self.soak[0].rss_mb if self.soak else None

    @property
    def slope(self) -> float | None:
        return slope_mb_per_min(self.soak)

    def growth(self, what: str) -> int | None:
        """Last soak sample minus the first of an int field (fds, tasks)."""
        if not self.soak:
            return None
        last: int = getattr(self.soak[-1], what)
        first: int = getattr(self.soak[0], what)
        return last - first

    def verdicts(self, requests: int) -> list[tuple[str, str, bool | None]]:
        """(what, measured, passed); passed is None when not measurable."""
        growth, slope = self.growth_mb, self.slope
        flat = None
        if growth is not None and slope is not None:
            flat = slope <= FLAT_SLOPE_MB_PER_MIN and growth <= FLAT_GROWTH_MB
        slope_text = "–" if slope is None else f"{slope:+.2f} MB/min"
        growth_text = "–" if growth is None else f"{growth:+.1f} MB"
        gauges = self.end_gauges
        chaos = self.chaos
        failures, refused = gauges[AUTH_FAILURES], gauges[AUTH_REFUSED]
        return [
            (
                f"RSS after {requests:,} requests ≤ {RSS_TARGET_MB:.0f} MB",
                f"{self.after_load_mb:.1f} MB",
                self.after_load_mb <= RSS_TARGET_MB,
            ),
            (
                f"RSS flat over the soak: slope ≤ {FLAT_SLOPE_MB_PER_MIN} MB/min and last − "
                f"first ≤ {FLAT_GROWTH_MB:.0f} MB",
                f"slope {slope_text}, last − first {growth_text}",
                flat,
            ),
            self._flat("fds", "open file descriptors", FLAT_FDS),
            self._flat("tasks", "event-loop tasks", FLAT_TASKS),
            (
                "after the last slice: requests in flight, stream drains, write queue all 0",
                " / ".join(f"{gauges[name]:.0f}" for name in QUIET),
                all(gauges[name] == 0 for name in QUIET),
            ),
            (
                "chaos client: every answer as expected; wrong keys all counted as auth "
                "failures, none refused by the throttle",
                f"{chaos.total:,} actions, {chaos.failed} failed; auth failures "
                f"{failures:.0f} of {chaos.wrong_key} wrong keys, refused {refused:.0f}",
                chaos.failed == 0 and failures == chaos.wrong_key and refused == 0,
            ),
        ]

    def _flat(self, what: str, label: str, bound: int) -> tuple[str, str, bool | None]:
        growth = self.growth(what)
        if growth is None:
            return (f"{label} flat over the soak", "–", None)
        values = [getattr(s, what) for s in self.soak]
        measured = (
            f"first {values[0]}, last {values[-1]} ({growth:+d}); min {min(values)}, "
            f"max {max(values)}"
        )
        return (f"{label} flat over the soak: last − first ≤ {bound}", measured, growth <= bound)


def verdict(passed: bool | None) -> str:
    return "not measured" if passed is None else "PASS" if passed else "FAIL"


@dataclass(frozen=True)
class Report:
    args: argparse.Namespace
    began: datetime
    loads: tuple[str, str]
    wrk: str
    samples: list[Sample]
    figures: Figures
    check: Check
    logs: list[str]

    def verdicts(self) -> list[tuple[str, str, bool | None]]:
        return self.figures.verdicts(self.args.requests)


def render(report: Report) -> str:
    args, figures = report.args, report.figures
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    load_s = sum(s.seconds for s in report.samples if s.phase == "load")
    soak, chaos = figures.soak, figures.chaos
    out = [
        "# spendgate soak: memory, file descriptors and tasks under sustained mixed load"
        + (" (quick smoke run)" if args.quick else ""),
        "",
        f"- date: {report.began:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average (1, 5, 15 min) {report.loads[0]} at start, "
        f"{report.loads[1]} at end (other processes may share the machine)",
        f"- Python {platform.python_version()}, {report.wrk}",
        f"- command: `{shlex.join([str(exe), *sys.argv])}`",
        "- target: (c) `spendgate serve`, one worker (one process), SQLite ledger in a temp "
        "dir, in-process limits, its own fake upstream",
        f"- load: wrk -t2 -c{args.connections}, slices rotating chat (non-streamed), stream "
        "(16 SSE chunks), embeddings and mixed (chat, 10 % upstream 500s); load phase in "
        f"slices of up to {args.load_slice} s until {args.requests:,} responses completed "
        f"and every scenario ran once ({load_s} s of wrk), then a soak of "
        f"{args.soak_seconds} s in slices of "
        f"{args.slice_seconds} s",
        "- chaos client (bench/chaos.py) during every slice, one action every 0.25 s in turn: "
        "a stream (50 ms between chunks) abandoned after its first event (FIN or RST, in "
        "turn), a wrong key (401; at most one every 2 s, under the auth throttle's 60 a "
        "minute), a body that is not JSON (400), a head sent in two parts 0.3 s apart (200); "
        "the abandoned streams and slow heads reached the upstream and count in the ledger "
        "check",
        f"- after each slice: {SETTLE_S} s, then /metrics polled until requests in flight, "
        f"stream drains and write queue are 0 (at most {QUIET_TIMEOUT_S:.0f} s; the 'quiet' "
        "column), then the sample: RSS = VmRSS and anon = RssAnon (the heap; the rest is "
        "mapped files) from /proc/PID/status, fds = entries of /proc/PID/fd, tasks = "
        "`spendgate_event_loop_tasks`; peak = VmHWM, never reset",
        f"- thresholds: RSS_TARGET_MB = {RSS_TARGET_MB:.0f}, FLAT_SLOPE_MB_PER_MIN = "
        f"{FLAT_SLOPE_MB_PER_MIN} (least squares over the soak samples), FLAT_GROWTH_MB = "
        f"{FLAT_GROWTH_MB:.0f}, FLAT_FDS = {FLAT_FDS}, FLAT_TASKS = {FLAT_TASKS} (last soak "
        "sample − first)",
        "",
        "## verdicts",
        "",
        "| target figure | measured | verdict |",
        "|:---|---:|:---|",
        *(f"| {what} | {measured} | {verdict(ok)} |" for what, measured, ok in report.verdicts()),
        "",
        f"- once started, before any request: RSS {figures.idle_mb:.1f} MB, "
        f"{figures.idle_fds} fds, {figures.idle_tasks} tasks",
        f"- after the load phase ({_load_end(report.samples):,} requests): "
        f"RSS {figures.after_load_mb:.1f} MB, peak (VmHWM) {figures.after_load_hwm_mb:.1f} MB",
    ]
    if soak:
        rss = [s.rss_mb for s in soak]
        out.append(
            f"- soak ({len(soak)} samples): RSS first {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, "
            f"min {min(rss):.1f} MB, max {max(rss):.1f} MB"
        )
    out += [
        f"- peak RSS over the whole run (VmHWM before SIGTERM): {figures.peak_mb:.1f} MB",
        f"- chaos client over the whole run: {chaos.summary()}; {chaos.upstream:,} of them "
        "reached the upstream",
        "",
        "## samples",
        "",
        "| # | phase | scenario | elapsed s | requests so far | slice req/s | chaos | quiet s "
        "| RSS MB | anon MB | fds | tasks |",
        "|---:|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {i} | {s.phase} | {s.scenario} | {s.elapsed_s:.0f} | {s.requests:,} | "
            f"{s.rps:,.0f} | {s.chaos} | {_quiet(s.quiet_s)} | {s.rss_mb:.1f} | "
            f"{s.anon_mb:.1f} | {s.fds} | {s.tasks} |"
            for i, s in enumerate(report.samples, 1)
        ),
        "",
        f"## ledger check: spendgate — {'PASS' if report.check.ok else 'FAIL'}",
        "",
        *(f"- {line}" for line in report.check.lines),
        f"- of the completed responses, {chaos.upstream:,} are the chaos client's requests that "
        "reached the upstream (abandoned streams, slow heads); the bound allows one request "
        "cut in flight per wrk connection and slice",
        "",
        "## server logs",
        "",
        f"- the gateway's warning for each upstream 500 of `mixed` is expected and not listed "
        f"({figures.upstream_errors:,} errors answered by the fake); other lines with errors or "
        "warnings:",
        *(report.logs or ["- none"]),
    ]
    return "\n".join([*out, ""])


def log_lines(servers: list[Server], gateway: Server, upstream_errors: int) -> list[str]:
    """The server logs' lines that look like trouble, for the report, read line by line (the
    request log of a full soak is about a GB). The gateway's warning for each upstream 500 of
    `mixed` is expected: counted, and listed only if there are not exactly as many as the
    errors the fake answered."""
    lines: list[str] = []
    for server in servers:
        expected, shown = 0, 0
        with server.log_path.open(errors="replace") as log:
            for raw in log:
                if not any(mark in raw for mark in _LOG_MARKS):
                    continue
                if _UPSTREAM_500.search(raw):
                    expected += 1
                    continue
                if shown < _LOG_LINES_SHOWN:
                    lines.append(f"- {server.name}: `{raw.strip()}`")
                shown += 1
        if shown > _LOG_LINES_SHOWN:
            lines.append(f"- {server.name}: … {shown - _LOG_LINES_SHOWN} more such lines")
        if server is gateway and expected != upstream_errors:
            lines.append(
                f"- {server.name}: {expected:,} warnings of a failed upstream (http_5xx), but "
                f"the fake answered {upstream_errors:,} errors"
            )
    return lines


def _quiet(seconds: float | None) -> str:
    return f"> {QUIET_TIMEOUT_S:.0f}" if seconds is None else f"{seconds:.1f}"


def _load_end(samples: list[Sample]) -> int:
    return max(s.requests for s in samples if s.phase == "load")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--requests", type=int, help="responses of the load phase (default 100000)")
    add("--soak-seconds", type=int, help="seconds of load in the soak (default 600)")
    add("--slice-seconds", type=int, help="wrk run length in the soak (default 15)")
    add("--load-slice", type=int, help="wrk run length in the load phase (default 10)")
    add("--connections", type=int, default=50, help="wrk connections (default 50)")
    add("--output", type=Path, help="report file (default bench/RESULTS-soak.md)")
    add("--keep-logs", action="store_true", help="keep the server logs' dir")
    add("--quick", action="store_true", help=f"smoke test: {QUICK}, writes {QUICK_RESULTS}")
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.output is None:
        args.output = QUICK_RESULTS if args.quick else RESULTS
    if args.quick and args.output.resolve() == RESULTS.resolve():
        parser.error(f"--quick never writes {RESULTS}: pass another --output")
    numbers = (args.requests, args.soak_seconds, args.slice_seconds, args.load_slice)
    if min(*numbers, args.connections) < 1:
        parser.error("requests, seconds and connections must be positive")
    return args


def measure(args: argparse.Namespace, running: Running, work: Path) -> tuple[list[Sample], Figures]:
    bodies = {}
    for name in ROTATION:
        scenario = next(s for s in SCENARIOS if s.name == name)
        bodies[name] = work / f"{name}.json"
        bodies[name].write_bytes(json.dumps(scenario.body).encode())
    chaos = Chaos(running.base_url, running.auth)
    soak = Soak(running, bodies, args.connections, chaos)
    idle, idle_fds = status_mb(soak.gateway, "VmRSS"), fd_count(soak.gateway)
    idle_tasks = int(scrape(running)[TASKS])
    print(
        f"started; RSS {idle:.1f} MB, {idle_fds} fds, {idle_tasks} tasks. "
        f"load phase: {args.requests:,} requests",
        file=sys.stderr,
    )
    soak.began = time.monotonic()
    load_phase(soak, args.requests, args.load_slice)
    after, hwm = soak.samples[-1].rss_mb, status_mb(soak.gateway, "VmHWM")
    print(f"soak: {args.soak_seconds} s in {args.slice_seconds} s slices", file=sys.stderr)
    soaked = soak_phase(soak, args.soak_seconds, args.slice_seconds)
    peak = status_mb(soak.gateway, "VmHWM")
    errors = running.upstream_stats()["errors"]
    figures = Figures(
        idle, idle_fds, idle_tasks, after, hwm, peak, soaked, soak.gauges, chaos.totals, errors
    )
    return soak.samples, figures


def main() -> int:
    args = parse_args()
    began, load_start, wrk = datetime.now(UTC), loadavg(), wrk_version()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="spendgate-soak-"))
    running: Running | None = None
    ok = False
    try:
        print("starting spendgate serve (SQLite ledger) and its fake upstream ...", file=sys.stderr)
        running = start_spendgate(work)
        samples, figures = measure(args, running, work)
        print("SIGTERM and the ledger check ...", file=sys.stderr)
        check = running.finish()
        assert check is not None
        assert running.gateway is not None
        logs = log_lines(running.servers, running.gateway, figures.upstream_errors)
        report = Report(args, began, (load_start, loadavg()), wrk, samples, figures, check, logs)
        text = render(report)
        args.output.write_text(text)
        print(text)
        failed = [what for what, _, passed in report.verdicts() if passed is False]
        ok = check.ok and (args.quick or not failed)  # a quick run is too short to judge
        if not check.ok:
            print("\nTHE LEDGER CHECK FAILED (see above)", file=sys.stderr)
        for what in failed:
            quick = " (a quick run: not judged, the exit status ignores it)" if args.quick else ""
            print(f"\nVERDICT FAILED{quick}: {what}", file=sys.stderr)
    except BenchError as exc:
        print(f"\nSOAK FAILED: {exc}", file=sys.stderr)
    finally:
        if running is not None:
            running.kill()
        if ok and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"server logs kept in {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
