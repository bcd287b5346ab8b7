"""The `x-ratelimit-*` and `Retry-After` headers, in OpenAI's format.

For each unit (requests, tokens) the headers describe the tightest applicable limit: the
one with the fewest units remaining (on a 429, the limit that refused). A unit with no
limit configured gets no headers, since there is no number to tell.
"""

from collections.abc import Sequence

from spendgate.limits.backend import RateRule, RateState

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000


def format_reset(ns: int) -> str:
    """A duration as OpenAI writes it: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    if ns <= 0:
        return "0s"
    if ns < _NS_PER_S:
        return f"{-(-ns // _NS_PER_MS)}ms"
    ms = -(-ns // _NS_PER_MS)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds = f"{ms // 1000}" if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def retry_after_seconds(ns: int) -> int:
    """Whole seconds to wait (rounded up, at least 1) for `Retry-After`."""
    return max(1, -(-ns // _NS_PER_S))


def tightest(states: Sequence[RateState], unit: str) -> RateState | None:
    """The state of `unit` with the fewest units left (the later reset on a tie)."""
    best: RateState | None = None
    for state in states:
        if state.rule.unit != unit:
            continue
        if (
            best is None
            or state.remaining < best.remaining
            or (state.remaining == best.remaining and state.reset_after_ns > best.reset_after_ns)
        ):
            best = state
    return best


_NAMES = {
    unit: tuple(f"x-ratelimit-{part}-{unit}".encode() for part in ("limit", "remaining", "reset"))
    for unit in ("requests", "tokens")
}


def rate_headers(
    states: Sequence[RateState], refused: RateRule | None = None
) -> list[tuple[bytes, bytes]]:
    """The `x-ratelimit-*` headers for these states (the refused rule wins its unit)."""
    headers: list[tuple[bytes, bytes]] = []
    for unit, (limit, left, reset) in _NAMES.items():
        state = None
        if refused is not None and refused.unit == unit:
            state = next((s for s in states if s.rule is refused), None)
        if state is None:
            state = tightest(states, unit)
        if state is None:
            continue
        headers.append((limit, b"%d" % state.rule.rate.limit))
        headers.append((left, b"%d" % state.remaining))
        headers.append((reset, format_reset(state.reset_after_ns).encode()))
    return headers
