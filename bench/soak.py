"""`make bench-soak`: spendgate's memory under sustained load (issue 4).

Target: RSS <= 120 MB per worker after 100,000 requests, flat over a 5-minute soak.

1. Starts the `spendgate` target exactly as bench/run.py does (`spendgate serve`, one worker,
   SQLite ledger in a temp dir, its own fake upstream).
2. Load: wrk at 50 connections in slices alternating `chat` and `stream` until at least
   `--requests` (100,000) responses completed; VmRSS and VmHWM are read after it.
3. Soak: `--soak-seconds` (300) more of the same in `--slice-seconds` (15) slices, VmRSS read
   after each slice; the soak is flat when the least-squares slope and the growth from the
   first to the last sample stay within FLAT_SLOPE_MB_PER_MIN and FLAT_GROWTH_MB.
4. SIGTERM, then the harness's ledger check: every request the fake received is in the ledger.
5. Writes bench/RESULTS-soak.md (`--output`) and prints it. `--quick` is a ~1 minute smoke test
   that writes /tmp/soak-quick.md unless told otherwise (never the committed results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
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

from procs import BenchError, Server
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
SETTLE_S = 0.5  # after wrk ends: in-flight streams finish, the ledger writer flushes
ROTATION = ("chat", "stream")  # the scenarios of successive slices, in turn
DEFAULTS = {"requests": 100_000, "soak_seconds": 300, "slice_seconds": 15, "load_slice": 10}
QUICK = {"requests": 5_000, "soak_seconds": 20, "slice_seconds": 5, "load_slice": 5}


@dataclass(frozen=True)
class Sample:
    """The gateway's memory after one wrk slice."""

    phase: str  # "load" or "soak"
    scenario: str
    seconds: int  # wrk's -d of the slice
    elapsed_s: float  # since the first slice began
    requests: int  # completed responses so far (wrk, every slice)
    rps: float  # of this slice
    rss_mb: float  # VmRSS
    anon_mb: float  # RssAnon: the heap; the rest is mapped files and shared memory


@dataclass
class Soak:
    """The running target, its request bodies and the samples taken so far."""

    running: Running
    bodies: dict[str, Path]
    connections: int
    began: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)

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
        """One wrk run of the next scenario, then the gateway's VmRSS."""
        scenario, running = self.next_scenario(), self.running
        result = run_wrk(
            running.url(scenario.path),
            connections=self.connections,
            duration_s=seconds,
            body_file=self.bodies[scenario.name],
            auth=running.auth,
        )
        time.sleep(SETTLE_S)
        for server in running.servers:
            server.check_alive()
        running.completed += result.requests
        running.cut_allowance += self.connections
        check_statuses(running.name, scenario, result, self.connections)
        if result.requests == 0:
            raise BenchError(f"{running.name}: wrk completed no request")
        sample = Sample(
            phase,
            scenario.name,
            seconds,
            time.monotonic() - self.began,
            self.requests,
            result.rps,
            status_mb(self.gateway, "VmRSS"),
            status_mb(self.gateway, "RssAnon"),
        )
        self.samples.append(sample)
        print(
            f"{phase} {len(self.samples):>3} {scenario.name:<6} -d{seconds}s "
            f"{result.rps:>7,.0f} req/s  {sample.requests:>9,} requests  "
            f"RSS {sample.rss_mb:6.1f} MB",
            file=sys.stderr,
        )
        return sample


def status_mb(server: Server, name: str) -> float:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in MiB."""
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"{server.name}: no {name} in /proc/{server.pid}/status")


def load_phase(soak: Soak, target: int, slice_s: int) -> None:
    """Slices until `target` responses completed; the last one is shortened to fit."""
    while soak.requests < target:
        seconds = slice_s
        if soak.samples:  # from the last slice's rate, with 10 % to spare
            rate = max(soak.samples[-1].rps, 1.0)
            seconds = min(slice_s, max(1, math.ceil((target - soak.requests) * 1.1 / rate)))
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
class Memory:
    """The figures the verdicts are made of."""

    idle_mb: float  # VmRSS once started, before any request
    after_load_mb: float
    after_load_hwm_mb: float
    peak_mb: float  # VmHWM at the end of the soak
    soak: list[Sample]

    @property
    def growth_mb(self) -> float | None:
        return self.soak[-1].rss_mb - self.soak[0].rss_mb if self.soak else None

    @property
    def slope(self) -> float | None:
        return slope_mb_per_min(self.soak)

    def verdicts(self, requests: int) -> list[tuple[str, str, bool | None]]:
        """(what, measured, passed); passed is None when not measurable."""
        growth, slope = self.growth_mb, self.slope
        flat = None
        if growth is not None and slope is not None:
            flat = slope <= FLAT_SLOPE_MB_PER_MIN and growth <= FLAT_GROWTH_MB
        slope_text = "–" if slope is None else f"{slope:+.2f} MB/min"
        growth_text = "–" if growth is None else f"{growth:+.1f} MB"
        return [
            (
                f"RSS after {requests:,} requests ≤ {RSS_TARGET_MB:.0f} MB",
                f"{self.after_load_mb:.1f} MB",
                self.after_load_mb <= RSS_TARGET_MB,
            ),
            (
                f"flat over the soak: slope ≤ {FLAT_SLOPE_MB_PER_MIN} MB/min and last − first "
                f"≤ {FLAT_GROWTH_MB:.0f} MB",
                f"slope {slope_text}, last − first {growth_text}",
                flat,
            ),
        ]


def verdict(passed: bool | None) -> str:
    return "not measured" if passed is None else "PASS" if passed else "FAIL"


@dataclass(frozen=True)
class Report:
    args: argparse.Namespace
    began: datetime
    loads: tuple[str, str]
    wrk: str
    samples: list[Sample]
    memory: Memory
    check: Check
    logs: list[str]


def render(report: Report) -> str:
    args, memory = report.args, report.memory
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    load_s = sum(s.seconds for s in report.samples if s.phase == "load")
    soak = memory.soak
    out = [
        "# spendgate soak: memory under sustained load"
        + (" (quick smoke run)" if args.quick else ""),
        "",
        f"- date: {report.began:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average (1, 5, 15 min) {report.loads[0]} at start, "
        f"{report.loads[1]} at end (other processes may share the machine)",
        f"- Python {platform.python_version()}, {report.wrk}",
        f"- command: `{shlex.join([str(exe), *sys.argv])}`",
        "- target: (c) `spendgate serve`, one worker (one process), SQLite ledger in a temp "
        "dir, in-process limits, its own fake upstream",
        f"- load: wrk -t2 -c{args.connections}, slices alternating chat (non-streamed) and "
        "stream (16 SSE chunks); load phase in slices of up to "
        f"{args.load_slice} s until {args.requests:,} responses completed ({load_s} s of wrk), "
        f"then a soak of {args.soak_seconds} s in slices of {args.slice_seconds} s",
        f"- RSS = VmRSS of the gateway from /proc/PID/status, read {SETTLE_S} s after each "
        "slice (the gateway idle); anon = RssAnon (the heap), the rest is mapped files "
        "(code, libraries); peak = VmHWM, never reset",
        f"- thresholds: RSS_TARGET_MB = {RSS_TARGET_MB:.0f}, FLAT_SLOPE_MB_PER_MIN = "
        f"{FLAT_SLOPE_MB_PER_MIN} (least squares over the soak samples), FLAT_GROWTH_MB = "
        f"{FLAT_GROWTH_MB:.0f} (last soak sample − first)",
        "",
        "## verdicts",
        "",
        "| target figure | measured | verdict |",
        "|:---|---:|:---|",
        *(
            f"| {what} | {measured} | {verdict(ok)} |"
            for what, measured, ok in memory.verdicts(args.requests)
        ),
        "",
        f"- RSS once started, before any request: {memory.idle_mb:.1f} MB",
        f"- after the load phase ({_load_end(report.samples):,} requests): "
        f"RSS {memory.after_load_mb:.1f} MB, peak (VmHWM) {memory.after_load_hwm_mb:.1f} MB",
    ]
    if soak:
        rss = [s.rss_mb for s in soak]
        out.append(
            f"- soak ({len(soak)} samples): first {rss[0]:.1f} MB, last {rss[-1]:.1f} MB, "
            f"min {min(rss):.1f} MB, max {max(rss):.1f} MB"
        )
    out += [
        f"- peak RSS over the whole run (VmHWM before SIGTERM): {memory.peak_mb:.1f} MB",
        "",
        "## samples",
        "",
        "| # | phase | scenario | elapsed s | requests so far | slice req/s | RSS MB | anon MB |",
        "|---:|:---|:---|---:|---:|---:|---:|---:|",
        *(
            f"| {i} | {s.phase} | {s.scenario} | {s.elapsed_s:.0f} | {s.requests:,} | "
            f"{s.rps:,.0f} | {s.rss_mb:.1f} | {s.anon_mb:.1f} |"
            for i, s in enumerate(report.samples, 1)
        ),
        "",
        f"## ledger check: spendgate — {'PASS' if report.check.ok else 'FAIL'}",
        "",
        *(f"- {line}" for line in report.check.lines),
        "",
        "## server logs",
        "",
        *(report.logs or ["- no errors or warnings in any server log"]),
    ]
    return "\n".join([*out, ""])


def _load_end(samples: list[Sample]) -> int:
    return max(s.requests for s in samples if s.phase == "load")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--requests", type=int, help="responses of the load phase (default 100000)")
    add("--soak-seconds", type=int, help="seconds of load in the soak (default 300)")
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


def measure(args: argparse.Namespace, running: Running, work: Path) -> tuple[list[Sample], Memory]:
    bodies = {}
    for name in ROTATION:
        scenario = next(s for s in SCENARIOS if s.name == name)
        bodies[name] = work / f"{name}.json"
        bodies[name].write_bytes(json.dumps(scenario.body).encode())
    soak = Soak(running, bodies, args.connections)
    idle = status_mb(soak.gateway, "VmRSS")
    print(f"started; RSS {idle:.1f} MB. load phase: {args.requests:,} requests", file=sys.stderr)
    soak.began = time.monotonic()
    load_phase(soak, args.requests, args.load_slice)
    after, hwm = soak.samples[-1].rss_mb, status_mb(soak.gateway, "VmHWM")
    print(f"soak: {args.soak_seconds} s in {args.slice_seconds} s slices", file=sys.stderr)
    soaked = soak_phase(soak, args.soak_seconds, args.slice_seconds)
    peak = status_mb(soak.gateway, "VmHWM")
    return soak.samples, Memory(idle, after, hwm, peak, soaked)


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
        samples, memory = measure(args, running, work)
        print("SIGTERM and the ledger check ...", file=sys.stderr)
        check = running.finish()
        assert check is not None
        logs = [
            f"- {server.name}: `{line}`" for server in running.servers for line in server.problems()
        ]
        report = Report(args, began, (load_start, loadavg()), wrk, samples, memory, check, logs)
        text = render(report)
        args.output.write_text(text)
        print(text)
        ok = check.ok
        if not ok:
            print("\nTHE LEDGER CHECK FAILED (see above)", file=sys.stderr)
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
