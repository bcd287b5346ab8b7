"""`make bench`: throughput, latency, CPU per request and RSS of spendgate vs the fake upstream.

Every target in `targets.TARGETS` is started once; each (scenario, connections) pair is then
loaded with wrk `--runs` times, the targets interleaved (a, c, a, c, ...), and the medians are
printed as a markdown table and written to bench/RESULTS.md. Finally the spendgate ledger is
checked against the fake upstream's request counter. See bench/README.md.
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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import admission
from procs import BenchError
from targets import TARGETS, Check, Running
from wrk import run_wrk, wrk_version

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
SETTLE_S = 0.3  # after wrk ends, let the writer flush before reading CPU times
_MESSAGES = [{"role": "user", "content": "Say hello to the benchmark in a few words."}]


@dataclass(frozen=True)
class Scenario:
    name: str
    body: dict[str, Any]


SCENARIOS = [
    Scenario("chat", {"model": "gpt-4o-mini", "messages": _MESSAGES, "max_tokens": 16}),
    Scenario(
        "stream",
        {
            "model": "gpt-4o-mini",
            "messages": _MESSAGES,
            "max_tokens": 16,  # 16 content chunks, then finish, usage and [DONE]
            "stream": True,
            "stream_options": {"include_usage": True},  # spendgate adds it anyway: same work
        },
    ),
]


@dataclass(frozen=True)
class Sample:
    requests: int
    rps: float
    mean_ms: float  # wrk's, after its coordinated-omission correction
    p99_ms: float
    little_ms: float  # connections / throughput: the plain mean time per request
    gateway_cpu_us: float | None
    upstream_cpu_us: float
    rss_mb: float | None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--runs", type=int, default=3, help="runs per target and scenario")
    parser.add_argument("--connections", default="50,1", help="comma list (default 50,1)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per scenario")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs' dir")
    parser.add_argument("--quick", action="store_true", help="smoke: 1 run of 1 s, 50 conns")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.runs, args.connections, args.warmup = 1, 1, "50", 0
    args.conns = [int(c) for c in str(args.connections).split(",") if c.strip()]
    if args.duration < 1 or args.runs < 1 or not args.conns or min(args.conns) < 1:
        parser.error("--duration, --runs and --connections must be positive")
    return args


def load(target: Running, body: Path, conns: int, seconds: int) -> Sample:
    """One wrk run against a target, with the CPU and peak RSS of its processes."""
    gateway, upstream = target.gateway, target.upstream
    if gateway is not None:
        gateway.reset_peak_rss()
    cpu_before = [p.cpu_seconds() for p in (gateway, upstream) if p is not None]
    result = run_wrk(
        target.url, connections=conns, duration_s=seconds, body_file=body, auth=target.auth
    )
    time.sleep(SETTLE_S)
    cpu_after = [p.cpu_seconds() for p in (gateway, upstream) if p is not None]
    for server in target.servers:
        server.check_alive()
    target.completed += result.requests
    target.cut_allowance += conns
    if result.status or result.socket_errors:
        raise BenchError(
            f"{target.name}: {result.status} non-2xx responses and {result.socket_errors} socket "
            f"errors (connect {result.connect}, read {result.read}, write {result.write}, "
            f"timeout {result.timeout}) in {result.requests} requests"
        )
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


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def table(results: dict[tuple[str, int, str], list[Sample]], conns: list[int]) -> list[str]:
    head = (
        "target",
        "scenario",
        "conns",
        "req/s",
        "spread",
        "wrk mean ms",
        "wrk p99 ms",
        "conns÷req/s ms",
        "gateway CPU µs/req",
        "upstream CPU µs/req",
        "gateway peak RSS MB",
        "req/s vs direct",
    )
    align = [":---", ":---"] + ["---:"] * (len(head) - 2)  # names left, numbers right
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for scenario in SCENARIOS:
        for c in conns:
            direct = median([s.rps for s in results.get((scenario.name, c, "direct"), [])])
            for target in TARGETS:
                samples = results.get((scenario.name, c, target.name))
                if not samples:
                    continue
                rps = [s.rps for s in samples]
                mid = statistics.median(rps)
                spread = f"±{(max(rps) - min(rps)) / 2 / mid * 100:.1f}%" if len(rps) > 1 else "–"
                ratio = f"{mid / direct:.2f}×" if direct else "–"
                row = (
                    target.name,
                    scenario.name,
                    str(c),
                    fmt(mid),
                    spread,
                    fmt(median([s.mean_ms for s in samples]), 2),
                    fmt(median([s.p99_ms for s in samples]), 2),
                    fmt(median([s.little_ms for s in samples]), 2),
                    fmt(median([s.gateway_cpu_us for s in samples])),
                    fmt(median([s.upstream_cpu_us for s in samples])),
                    fmt(median([s.rss_mb for s in samples]), 1),
                    "1.00×" if target.name == "direct" else ratio,
                )
                lines.append("| " + " | ".join(row) + " |")
    return lines


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{len(os.sched_getaffinity(0))} cores (nproc), {model}, Linux {platform.release()}"


def report(
    args: argparse.Namespace,
    results: dict[tuple[str, int, str], list[Sample]],
    checks: list[tuple[str, Check]],
    logs: list[str],
    wrk: str,
    started: datetime,
    loads: tuple[str, str],
    admission_lines: list[str],
) -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        exe = exe.relative_to(Path.cwd())
    warmup = "no warm-up"
    if args.warmup:
        warmup = f"after a {args.warmup} s warm-up per target and scenario"
    threads = ", ".join(f"-t{min(2, c)} -c{c}" for c in args.conns)
    out = [
        "# spendgate benchmark",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}; load average (1, 5, 15 min) {loads[0]} at start, "
        f"{loads[1]} at end (other processes may share the machine)",
        f"- Python {platform.python_version()}, {wrk}",
        f"- command: `{shlex.join([str(exe), *sys.argv])}`",
        f"- load: wrk {threads} -d{args.duration}s, POST /v1/chat/completions; median of "
        f"{args.runs} interleaved run(s) per row, {warmup}; wrk shares the cores with the servers",
        "- targets: " + "; ".join(t.description for t in TARGETS),
        "- scenarios: chat = non-streamed, max_tokens 16; stream = stream true, 16 SSE chunks "
        "(+ finish, usage, [DONE])",
        "",
        *table(results, args.conns),
        "",
        "CPU µs/req = (utime+stime of the process during the run) / wrk's completed requests; "
        "upstream = the fake upstream behind the target (for direct, the fake itself). "
        "Peak RSS = VmHWM of the gateway during the run (reset before each run). "
        "Spread = half the min–max range of req/s over the runs. "
        "wrk corrects its latency histogram for coordinated omission (`stats_correct`: each "
        "response slower than the mean interval adds synthetic samples), so its mean and p99 "
        "grow with every stall; conns÷req/s is the uncorrected mean time per request "
        "(Little's law, closed loop).",
        "",
    ]
    for name, check in checks:
        out += [f"## ledger check: {name} — {'PASS' if check.ok else 'FAIL'}", ""]
        out += [f"- {line}" for line in check.lines]
        out += [
            "",
            "wrk stops at its deadline without waiting for responses in flight, so it does not "
            "count them, but those requests did reach the gateway and the upstream (a cut "
            "stream is drained for its usage) and belong in the ledger. The exact check is "
            "therefore against the fake upstream's `received` counter (spendgate's fake serves "
            "only spendgate); wrk's count must be within one request per connection per run.",
            "",
        ]
    out += ["## limit and budget checks, in process", "", *admission_lines, ""]
    out += ["## server logs", "", *(logs or ["- no errors or warnings in any server log"]), ""]
    return "\n".join(out)


def main() -> int:
    args = parse_args()
    started, load_start = datetime.now(UTC), loadavg()
    wrk = wrk_version()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below

    signal.signal(signal.SIGTERM, on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-"))
    running: list[Running] = []
    ok = False
    try:
        for scenario in SCENARIOS:
            (work / f"{scenario.name}.json").write_bytes(json.dumps(scenario.body).encode())
        for target in TARGETS:
            print(f"starting {target.description} ...", file=sys.stderr)
            running.append(target.start(work))
        if args.warmup:
            for scenario in SCENARIOS:
                for r in running:
                    load(r, work / f"{scenario.name}.json", max(args.conns), args.warmup)
        results: dict[tuple[str, int, str], list[Sample]] = {}
        total, step = len(SCENARIOS) * len(args.conns) * args.runs * len(running), 0
        for scenario in SCENARIOS:
            for conns in args.conns:
                for i in range(args.runs):
                    for r in running:
                        step += 1
                        sample = load(r, work / f"{scenario.name}.json", conns, args.duration)
                        results.setdefault((scenario.name, conns, r.name), []).append(sample)
                        print(
                            f"[{step}/{total}] {r.name:<10} {scenario.name:<6} c={conns:<3} "
                            f"run {i + 1}: {sample.rps:,.0f} req/s",
                            file=sys.stderr,
                        )
        checks: list[tuple[str, Check]] = []
        for r in running:
            check = r.finish()
            if check is not None:
                checks.append((r.name, check))
        logs = [
            f"- {s.name}: `{line}`" for r in running for s in r.servers for line in s.problems()
        ]
        loads = (load_start, loadavg())
        print("measuring the limit and budget checks in process ...", file=sys.stderr)
        requests = 10_000 if args.quick else 100_000
        admission_lines = admission.report_lines(admission.measure(requests), requests)
        text = report(args, results, checks, logs, wrk, started, loads, admission_lines)
        RESULTS.write_text(text + "\n")
        print(text)
        ok = all(check.ok for _, check in checks)
        if not ok:
            print("\nLEDGER CHECK FAILED (see above)", file=sys.stderr)
    except BenchError as exc:
        print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
    finally:
        for r in running:
            r.kill()
        if ok and not args.keep_logs:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"server logs kept in {work}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
