"""The benchmark's report: the throughput table, the latency table, the issue's target figures.

`Results` holds every run's sample; each table row is the median over the runs. Ratios are
against (a) `direct` (the fake upstream alone) and (b) `passthrough` (the Python ceiling);
added latency is against `direct`. A figure whose reference target was not measured is "–".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hey import HeyResult
from scenarios import Scenario
from targets import TargetDef

GOAL_CONNS = 50  # the throughput and CPU figures are at 50 connections


@dataclass(frozen=True)
class Sample:
    """One wrk run against one target."""

    requests: int
    rps: float
    mean_ms: float  # wrk's, after its coordinated-omission correction
    p99_ms: float
    little_ms: float  # connections / throughput: the plain mean time per request
    gateway_cpu_us: float | None
    upstream_cpu_us: float
    rss_mb: float | None


@dataclass
class Results:
    """Samples by (scenario, connections, target) for wrk, (scenario, target) for hey."""

    load: dict[tuple[str, int, str], list[Sample]] = field(default_factory=dict)
    latency: dict[tuple[str, str], list[HeyResult]] = field(default_factory=dict)

    def load_median(
        self, scenario: str, conns: int, target: str, pick: Callable[[Sample], float | None]
    ) -> float | None:
        return median([pick(s) for s in self.load.get((scenario, conns, target), [])])

    def latency_median(
        self, scenario: str, target: str, pick: Callable[[HeyResult], float]
    ) -> float | None:
        return median([pick(s) for s in self.latency.get((scenario, target), [])])


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def _rows(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 2) -> list[str]:
    align = [":---"] * left + ["---:"] * (len(head) - left)  # names left, numbers right
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def load_table(
    results: Results, scenarios: Sequence[Scenario], conns: Sequence[int], targets: Sequence[str]
) -> list[str]:
    """wrk: throughput, latency, CPU and RSS per target, scenario and connection count."""
    head = (
        "target", "scenario", "conns", "req/s", "spread", "wrk mean ms", "wrk p99 ms",
        "conns÷req/s ms", "gateway CPU µs/req", "upstream CPU µs/req", "gateway peak RSS MB",
        "req/s vs direct", "req/s vs passthrough", "CPU vs passthrough",
    )  # fmt: skip
    rows = [
        _load_row(results, scenario.name, c, target)
        for scenario in scenarios
        for c in conns
        for target in targets
        if (scenario.name, c, target) in results.load
    ]
    return _rows(head, rows)


def _load_row(results: Results, scenario: str, conns: int, target: str) -> tuple[str, ...]:
    samples = results.load[(scenario, conns, target)]

    def rps(name: str) -> float | None:
        return results.load_median(scenario, conns, name, lambda x: x.rps)

    def cpu(name: str) -> float | None:
        return results.load_median(scenario, conns, name, lambda x: x.gateway_cpu_us)

    each = [x.rps for x in samples]
    mid = statistics.median(each)
    spread = f"±{(max(each) - min(each)) / 2 / mid * 100:.1f}%" if len(each) > 1 else "–"
    return (
        target,
        scenario,
        str(conns),
        fmt(mid),
        spread,
        fmt(median([x.mean_ms for x in samples]), 2),
        fmt(median([x.p99_ms for x in samples]), 2),
        fmt(median([x.little_ms for x in samples]), 2),
        fmt(cpu(target)),
        fmt(median([x.upstream_cpu_us for x in samples])),
        fmt(median([x.rss_mb for x in samples]), 1),
        _times(ratio(mid, rps("direct"))),
        _times(ratio(mid, rps("passthrough"))),
        _times(ratio(cpu(target), cpu("passthrough"))),
    )


def latency_table(
    results: Results, scenarios: Sequence[Scenario], targets: Sequence[str]
) -> list[str]:
    """hey: latency at a fixed rate over one connection, and what each target adds to direct."""
    head = (
        "target", "scenario", "requests", "mean ms", "p50 ms", "p99 ms", "TTFB mean ms",
        "TTFB p50 ms", "TTFB p99 ms", "added mean ms", "added p99 ms", "added TTFB ms",
    )  # fmt: skip
    rows = [
        _latency_row(results, scenario, target)
        for scenario in scenarios
        for target in targets
        if (scenario.name, target) in results.latency
    ]
    return _rows(head, rows)


def _latency_row(results: Results, scenario: Scenario, target: str) -> tuple[str, ...]:
    def at(name: str, pick: Callable[[HeyResult], float]) -> float | None:
        return results.latency_median(scenario.name, name, pick)

    def ms(pick: Callable[[HeyResult], float], streamed_only: bool = False) -> str:
        return "–" if streamed_only and not scenario.streamed else fmt(at(target, pick), 2)

    def added(pick: Callable[[HeyResult], float], streamed_only: bool = False) -> str:
        if streamed_only and not scenario.streamed:
            return "–"
        return _signed(difference(at(target, pick), at("direct", pick)))

    return (
        target,
        scenario.name,
        fmt(at(target, lambda h: h.requests)),
        ms(lambda h: h.mean_ms),
        ms(lambda h: h.p50_ms),
        ms(lambda h: h.p99_ms),
        ms(lambda h: h.ttfb_mean_ms, streamed_only=True),
        ms(lambda h: h.ttfb_p50_ms, streamed_only=True),
        ms(lambda h: h.ttfb_p99_ms, streamed_only=True),
        added(lambda h: h.mean_ms),
        added(lambda h: h.p99_ms),
        added(lambda h: h.ttfb_mean_ms, streamed_only=True),
    )


@dataclass(frozen=True)
class Goal:
    """One of the issue's target figures: `figure` of a spendgate vs `reference`, in `scenario`."""

    figure: str  # "req/s" and "CPU/req" are ratios at 50 conns (wrk); the others added ms (hey)
    scenario: str
    reference: str
    limit: float

    @property
    def at_least(self) -> bool:
        return self.figure == "req/s"

    @property
    def unit(self) -> str:
        return "×" if self.figure in ("req/s", "CPU/req") else " ms"

    @property
    def label(self) -> str:
        where = f"{GOAL_CONNS} conns (wrk)" if self.unit == "×" else "1 conn, fixed rate (hey)"
        return f"{self.figure} vs {self.reference}, {self.scenario}, {where}"

    def value(self, results: Results, target: str) -> float | None:
        """The figure for `target`, None when it or its reference was not measured."""
        if self.unit == "×":
            cpu = self.figure == "CPU/req"

            def sample(x: Sample) -> float | None:
                return x.gateway_cpu_us if cpu else x.rps

            mine = results.load_median(self.scenario, GOAL_CONNS, target, sample)
            other = results.load_median(self.scenario, GOAL_CONNS, self.reference, sample)
            return ratio(mine, other)

        def hey(h: HeyResult) -> float:
            return h.ttfb_mean_ms if self.figure == "added mean TTFB" else h.mean_ms

        mine_ms = results.latency_median(self.scenario, target, hey)
        return difference(mine_ms, results.latency_median(self.scenario, self.reference, hey))


GOALS = [
    Goal("req/s", "chat", "passthrough", 0.8),
    Goal("req/s", "stream", "passthrough", 0.8),
    Goal("CPU/req", "chat", "passthrough", 1.25),
    Goal("CPU/req", "stream", "passthrough", 1.25),
    Goal("req/s", "chat", "litellm", 50),
    Goal("req/s", "stream", "litellm", 50),
    Goal("added mean latency", "chat", "direct", 0.4),
    Goal("added mean TTFB", "stream", "direct", 1.0),
]


def goals_table(results: Results, judged: Sequence[TargetDef]) -> list[str]:
    """Each target figure of the issue, with PASS/FAIL per spendgate target measured."""
    head = ["figure", "goal", *(t.name for t in judged)]
    rows: list[Sequence[str]] = []
    for goal in GOALS:
        cells = []
        for target in judged:
            value = goal.value(results, target.name)
            if value is None:
                cells.append("not measured")
                continue
            ok = value >= goal.limit if goal.at_least else value <= goal.limit
            shown = _signed(value) if goal.unit == " ms" else f"{value:.2f}"
            cells.append(f"{shown}{goal.unit} {'PASS' if ok else 'FAIL'}")
        bound = f"{'≥' if goal.at_least else '≤'} {goal.limit:g}{goal.unit}"
        rows.append((goal.label, bound, *cells))
    return _rows(head, rows)


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"
