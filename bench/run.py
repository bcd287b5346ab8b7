"""`make bench`: throughput, latency, CPU per request and RSS of spendgate and its references.

Every selected target in `targets.TARGETS` is started once; each (scenario, connections) pair
is then loaded with wrk `--runs` times, the targets interleaved (a, b, c, a, b, c, ...); then
chat and stream are timed with hey at a fixed rate over one connection, interleaved the same
way. The medians are printed as markdown tables and written to bench/RESULTS.md (`--output`).
Finally every target is checked: spendgate's ledger against the fake upstream's request
counter, the others' request counts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Protocol, TypeVar

import admission
from hey import HeyResult, require_hey, run_hey
from procs import BenchError, TargetUnavailable
from report import Results, Sample, goals_table, latency_table, load_table
from scenarios import SCENARIOS, Scenario
from targets import TARGETS, Check, Running, TargetDef
from wrk import WrkResult, run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
SETTLE_S = 0.3  # after wrk ends, let the writer flush before reading CPU times
PEER_MIN_SECONDS = 5  # LiteLLM takes over a second per stream at 50 connections


class _HasName(Protocol):
    @property
    def name(self) -> str: ...


Named = TypeVar("Named", bound=_HasName)


@dataclass(frozen=True)
class Started:
    """A target definition and its running processes."""

    target: TargetDef
    running: Running

    def runs(self, args: argparse.Namespace) -> int:
        runs: int = min(args.runs, args.peer_runs) if self.target.peer else args.runs
        return runs

    def seconds(self, wanted: int) -> int:
        """A wrk run's length: peers get at least PEER_MIN_SECONDS, to complete anything."""
        return max(wanted, PEER_MIN_SECONDS) if self.target.peer else wanted

    def serves(self, scenario: Scenario) -> bool:
        return scenario.name not in self.target.skips


@dataclass(frozen=True)
class Job:
    """One measured run: wrk at `conns` connections, or hey when `conns` is None."""

    started: Started
    scenario: Scenario
    conns: int | None
    round: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    add("--runs", type=int, default=3, help="runs per target and scenario (default 3)")
    add("--connections", default="50,1", help="wrk connections, comma list (default 50,1)")
    add("--warmup", type=int, default=2, help="warm-up seconds per target and scenario")
    add("--targets", help="comma list of target names (default: all but the peers)")
    add("--scenarios", help="comma list of scenario names (default: all)")
    add("--peers", action="store_true", help="add the peer targets (LiteLLM) to the default")
    add("--peer-runs", type=int, default=1, help="runs per scenario for peers (default 1)")
    add("--no-hey", action="store_true", help="skip the fixed-rate latency runs")
    add("--hey-rate", type=int, default=200, help="hey requests per second (default 200)")
    add("--hey-seconds", type=int, default=10, help="seconds per hey run (default 10)")
    add("--output", type=Path, default=RESULTS, help="report file (default bench/RESULTS.md)")
    add("--keep-logs", action="store_true", help="keep the server logs' dir")
    add("--quick", action="store_true", help="smoke: 1 run of 1 s, 50 conns, no warm-up")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.runs, args.connections, args.warmup = 1, 1, "50", 0
        args.hey_seconds = 1
    args.conns = [int(c) for c in str(args.connections).split(",") if c.strip()]
    numbers = (args.duration, args.runs, args.peer_runs, args.hey_rate, args.hey_seconds)
    if min(numbers) < 1 or not args.conns or min(args.conns) < 1:
        parser.error("durations, runs, rates and connections must be positive")
    try:
        args.targets = select(TARGETS, args.targets, lambda t: args.peers or not t.peer)
        args.scenarios = select(SCENARIOS, args.scenarios, lambda s: True)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def select(
    items: Sequence[Named], wanted: str | None, default: Callable[[Named], bool]
) -> list[Named]:
    """The items named in the comma list `wanted`, in their listed order; `default` if None."""
    if wanted is None:
        return [item for item in items if default(item)]
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    known = {item.name for item in items}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ValueError(f"unknown or no names {unknown or wanted!r}; choose from {sorted(known)}")
    return [item for item in items if item.name in names]


def check_statuses(name: str, scenario: Scenario, result: WrkResult, conns: int) -> None:
    """Abort on socket errors and unexpected non-2xx; in `mixed`, check the injected 500s."""
    if result.socket_errors:
        raise BenchError(
            f"{name}: {result.socket_errors} socket errors (connect {result.connect}, read "
            f"{result.read}, write {result.write}, timeout {result.timeout}) in "
            f"{result.requests} requests"
        )
    unexpected = result.status - result.injected
    if unexpected:
        raise BenchError(f"{name}: {unexpected} unexpected non-2xx in {result.requests} requests")
    if scenario.error_every:
        # each wrk thread sends exactly every Nth request as an error; the completed ones
        # differ from that by the requests cut in flight (one per connection at most)
        expected, bound = result.requests / scenario.error_every, conns + result.threads
        if abs(result.injected - expected) > bound:
            raise BenchError(
                f"{name}: {result.injected} upstream errors in {result.requests} requests, "
                f"expected {expected:.0f} ± {bound}"
            )


def load(target: Running, scenario: Scenario, body: Path, conns: int, seconds: int) -> Sample:
    """One wrk run against a target, with the CPU and peak RSS of its processes."""
    gateway, upstream = target.gateway, target.upstream
    if gateway is not None:
        gateway.reset_peak_rss()
    cpu_before = [p.cpu_seconds() for p in (gateway, upstream) if p is not None]
    result = run_wrk(
        target.url(scenario.path),
        connections=conns,
        duration_s=seconds,
        body_file=body,
        auth=target.auth,
        error_every=scenario.error_every,
    )
    time.sleep(SETTLE_S)
    cpu_after = [p.cpu_seconds() for p in (gateway, upstream) if p is not None]
    for server in target.servers:
        server.check_alive()
    target.completed += result.requests
    target.cut_allowance += conns
    check_statuses(target.name, scenario, result, conns)
    if result.requests == 0:
        raise BenchError(f"{target.name}: wrk completed no request")
    per_request = [
        (after - before) * 1e6 / result.requests
        for before, after in zip(cpu_before, cpu_after, strict=True)
    ]
    return Sample(
        requests=result.requests,
        rps=result.rps,
        mean_ms=result.mean_us / 1000,
        p99_ms=result.p99_us / 1000,
        little_ms=conns / result.rps * 1000,
        gateway_cpu_us=per_request[0] if gateway is not None else None,
        upstream_cpu_us=per_request[-1],
        rss_mb=gateway.peak_rss_mb() if gateway is not None else None,
    )


def time_requests(
    target: Running, scenario: Scenario, body: Path, rate: int, seconds: int
) -> HeyResult:
    """One hey run at a fixed rate over one connection."""
    result = run_hey(
        target.url(scenario.path), rate=rate, seconds=seconds, body_file=body, auth=target.auth
    )
    for server in target.servers:
        server.check_alive()
    target.completed += result.requests
    target.cut_allowance += 1  # a request that failed is not in hey's CSV
    return result


def plan(args: argparse.Namespace, started: list[Started]) -> list[Job]:
    """Every measured run in order: per scenario and connection count, rounds of all targets."""
    jobs = [
        Job(s, scenario, conns, i)
        for scenario in args.scenarios
        for conns in args.conns
        for i in range(args.runs)
        for s in started
        if s.serves(scenario) and i < s.runs(args)
    ]
    if not args.no_hey:
        jobs += [
            Job(s, scenario, None, i)
            for scenario in args.scenarios
            if scenario.latency
            for i in range(args.runs)
            for s in started
            if s.serves(scenario) and i < s.runs(args)
        ]
    return jobs


def start_targets(args: argparse.Namespace, work: Path) -> tuple[list[Started], dict[str, str]]:
    """Start every selected target; those unavailable here are skipped, with the reason."""
    started: list[Started] = []
    skipped: dict[str, str] = {}
    try:
        for target in args.targets:
            print(f"starting {target.description} ...", file=sys.stderr)
            try:
                started.append(Started(target, target.start(work)))
            except TargetUnavailable as exc:
                print(f"SKIPPING {target.name}: {exc}", file=sys.stderr)
                skipped[target.name] = str(exc)
    except BaseException:
        for s in started:
            s.running.kill()
        raise
    return started, skipped


def measure(args: argparse.Namespace, started: list[Started], work: Path) -> Results:
    """The warm-up, then every planned run."""
    results = Results()
    if args.warmup:
        for scenario in args.scenarios:
            for s in started:
                if s.serves(scenario):
                    body = work / f"{scenario.name}.json"
                    load(s.running, scenario, body, max(args.conns), s.seconds(args.warmup))
    jobs = plan(args, started)
    for step, job in enumerate(jobs, 1):
        r, scenario, body = job.started.running, job.scenario, work / f"{job.scenario.name}.json"
        if job.conns is None:
            timed = time_requests(r, scenario, body, args.hey_rate, args.hey_seconds)
            results.latency.setdefault((scenario.name, r.name), []).append(timed)
            figure, how = f"mean {timed.mean_ms:.2f} ms", f"hey q={args.hey_rate}"
        else:
            sample = load(r, scenario, body, job.conns, job.started.seconds(args.duration))
            results.load.setdefault((scenario.name, job.conns, r.name), []).append(sample)
            figure, how = f"{sample.rps:,.0f} req/s", f"c={job.conns}"
        print(
            f"[{step}/{len(jobs)}] {r.name:<17} {scenario.name:<10} {how:<9} "
            f"run {job.round + 1}: {figure}",
            file=sys.stderr,
        )
    return results


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{len(os.sched_getaffinity(0))} cores (nproc), {model}, Linux {platform.release()}"


@dataclass(frozen=True)
class RunInfo:
    """What the report says about the run besides the numbers."""

    started: datetime
    loads: tuple[str, str]
    wrk: str
    measured: list[TargetDef]
    skipped: dict[str, str]  # target name -> why
    checks: list[tuple[str, Check]]
    logs: list[str]
    admission: list[str]


def header(args: argparse.Namespace, info: RunInfo) -> list[str]:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    warmup = f"after a {args.warmup} s warm-up per target and scenario" if args.warmup else ""
    threads = ", ".join(f"-t{min(2, c)} -c{c}" for c in args.conns)
    peers = ""
    if any(t.peer for t in info.measured):
        runs = min(args.runs, args.peer_runs)
        peers = f" ({runs} for peers, each at least {PEER_MIN_SECONDS} s)"
    lines = [
        "# spendgate benchmark",
        "",
        f"- date: {info.started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average (1, 5, 15 min) {info.loads[0]} at start, "
        f"{info.loads[1]} at end (other processes may share the machine)",
        f"- Python {platform.python_version()}, {info.wrk}",
        f"- command: `{shlex.join([str(exe), *sys.argv])}`",
        f"- load: wrk {threads} -d{args.duration}s; median of {args.runs} interleaved run(s) "
        f"per row{peers}{', ' + warmup if warmup else ''}; wrk shares the cores with the servers",
        "- targets: " + "; ".join(t.description for t in info.measured),
        "- scenarios: " + "; ".join(f"{s.name} = {s.description}" for s in args.scenarios),
    ]
    lines += [f"- skipped {name}: {why}" for name, why in info.skipped.items()]
    return [*lines, ""]


def render(args: argparse.Namespace, results: Results, info: RunInfo) -> str:
    names = [t.name for t in info.measured]
    out = header(args, info)
    out += [*load_table(results, args.scenarios, args.conns, names), ""]
    out += [
        "CPU µs/req = (utime+stime of the process during the run) / wrk's completed requests; "
        "upstream = the fake upstream behind the target (for direct, the fake itself). "
        "Peak RSS = VmHWM of the gateway during the run (reset before each run). "
        "Spread = half the min–max range of req/s over the runs. "
        "wrk corrects its latency histogram for coordinated omission (`stats_correct`: each "
        "response slower than the mean interval adds synthetic samples), so its mean and p99 "
        "grow with every stall; conns÷req/s is the uncorrected mean time per request "
        "(Little's law, closed loop). `vs passthrough`: req/s and gateway CPU µs/req relative "
        "to (b), the bare Python proxy, same scenario and connections.",
        "",
    ]
    if results.latency:
        out += [
            f"## latency at a fixed rate: hey -c 1 -q {args.hey_rate} -z {args.hey_seconds}s",
            "",
            *latency_table(results, args.scenarios, names),
            "",
            "One connection, a fixed rate, so nothing queues: the latency is what each request "
            "costs. From hey's per-request CSV (0.1 ms resolution; medians of the runs' means "
            "and percentiles). TTFB = hey's `resp wait`, the request written to the first "
            "response byte. `added` = this target minus direct (the fake alone).",
            "",
        ]
    judged = [t for t in info.measured if t.judged]
    if judged:
        out += ["## the issue's target figures", "", *goals_table(results, judged), ""]
    for name, check in info.checks:
        kind = "ledger" if any(t.name == name and t.judged for t in info.measured) else "request"
        out += [f"## {kind} check: {name} — {'PASS' if check.ok else 'FAIL'}", ""]
        out += [f"- {line}" for line in check.lines]
        out += [""]
    if info.checks:
        out += [
            "wrk stops at its deadline without waiting for responses in flight, so it does not "
            "count them, but those requests did reach the gateway and the upstream (a cut "
            "stream is drained for its usage) and belong in the ledger. The exact check is "
            "therefore against the fake upstream's `received` counter (each target has its "
            "own fake); wrk's count must be within one request per connection per run.",
            "",
        ]
    out += ["## limit and budget checks, in process", "", *info.admission, ""]
    out += ["## server logs", "", *(info.logs or ["- no errors or warnings in any server log"])]
    return "\n".join([*out, ""])


def finish(started: list[Started]) -> tuple[list[tuple[str, Check]], list[str]]:
    """Stop every target gracefully, collecting its check and its log's trouble lines."""
    checks: list[tuple[str, Check]] = []
    for s in started:
        check = s.running.finish()
        if check is not None:
            checks.append((s.running.name, check))
    logs = [
        f"- {server.name}: `{line}`"
        for s in started
        for server in s.running.servers
        for line in server.problems()
    ]
    return checks, logs


def main() -> int:
    args = parse_args()
    begun, load_start = datetime.now(UTC), loadavg()
    wrk = wrk_version()
    if not args.no_hey:
        require_hey()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-"))
    started: list[Started] = []
    ok = False
    try:
        for scenario in args.scenarios:
            (work / f"{scenario.name}.json").write_bytes(json.dumps(scenario.body).encode())
        started, skipped = start_targets(args, work)
        if not started:
            raise BenchError("no target could be started")
        results = measure(args, started, work)
        checks, logs = finish(started)
        loads = (load_start, loadavg())
        print("measuring the limit and budget checks in process ...", file=sys.stderr)
        requests = 10_000 if args.quick else 100_000
        admission_lines = admission.report_lines(admission.measure(requests), requests)
        measured = [s.target for s in started]
        info = RunInfo(begun, loads, wrk, measured, skipped, checks, logs, admission_lines)
        text = render(args, results, info)
        args.output.write_text(text)
        print(text)
        ok = all(check.ok for _, check in checks)
        if not ok:
            print("\nA CHECK FAILED (see above)", file=sys.stderr)
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
    finally:
        for s in started:
            s.running.kill()
        if ok and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"server logs kept in {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
