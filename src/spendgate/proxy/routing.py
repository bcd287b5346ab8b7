"""Routing by model: which upstreams may serve a request, in the order to try them.

An upstream serves the models its globs match. The matching upstreams are tried by
priority (by default their order in the file, so the first one is the primary and the rest
its fallbacks, contract §7); upstreams sharing a priority split the traffic by weight.
After `failures` consecutive failures an upstream cools down for `cooldown` seconds: it is
tried only when no other upstream serving the model is available, then half-open (one
success closes it again). Orders are computed once per model and cached.
"""

import random
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from itertools import groupby

from spendgate.errors import ModelNotFound
from spendgate.proxy.upstream import UpstreamTarget

_ORDER_CACHE = 4096


class Breaker:
    """Counts an upstream's consecutive failures and opens after too many."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float]) -> None:
        self._threshold = failures
        self._cooldown = cooldown
        self._clock = clock
        self.consecutive = 0
        self.open_until = 0.0

    def available(self) -> bool:
        """Closed, or cooled down (half-open: the next result decides)."""
        return self.open_until <= self._clock()

    def failed(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self._threshold:
            self.open_until = self._clock() + self._cooldown

    def succeeded(self) -> None:
        self.consecutive = 0
        self.open_until = 0.0


class Upstream:
    """One configured upstream and its breaker."""

    def __init__(self, target: UpstreamTarget, breaker: Breaker) -> None:
        self.target = target
        self.breaker = breaker
        self.name = target.name

    def serves(self, model: str) -> bool:
        """Whether one of its globs matches `model`."""
        return any(fnmatchcase(model, glob) for glob in self.target.models)


class Router:
    """The upstreams to try for a model, best first."""

    def __init__(
        self,
        targets: Sequence[UpstreamTarget],
        *,
        failures: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not targets:
            raise ValueError("at least one upstream is needed")
        self.upstreams = [Upstream(t, Breaker(failures, cooldown, clock)) for t in targets]
        self._rng = rng or random.Random()
        self._orders: dict[str | None, list[list[Upstream]]] = {}

    @property
    def default(self) -> Upstream:
        """The first upstream: it serves requests that name no model."""
        return self.upstreams[0]

    def route(self, model: str | None) -> list[Upstream]:
        """The upstreams to try, in order; `ModelNotFound` when none serves `model`."""
        groups = self._orders.get(model)
        if groups is None:
            groups = self._groups(model)
            if len(self._orders) >= _ORDER_CACHE:
                self._orders.clear()
            self._orders[model] = groups
        if len(groups) == 1 and len(groups[0]) == 1:  # the common case: one upstream
            return groups[0]
        ordered: list[Upstream] = []
        for group in groups:
            ordered.extend(group if len(group) == 1 else self._weighted_shuffle(group))
        usable = [u for u in ordered if u.breaker.available()]
        if len(usable) == len(ordered):
            return ordered
        # Cooling upstreams go last: better a slow answer than none.
        return usable + [u for u in ordered if u not in usable]

    def _groups(self, model: str | None) -> list[list[Upstream]]:
        if model is None:
            return [[self.default]]
        matching = [u for u in self.upstreams if u.serves(model)]
        if not matching:
            raise ModelNotFound(
                f"The model '{model}' is not served by any upstream of this gateway.",
                param="model",
            )
        ranked = sorted(matching, key=lambda u: u.target.priority)  # stable: file order kept
        return [list(group) for _, group in groupby(ranked, key=lambda u: u.target.priority)]

    def _weighted_shuffle(self, group: list[Upstream]) -> list[Upstream]:
        """`group` in a random order where heavier upstreams tend to come first."""
        keyed = [(self._rng.random() ** (1 / u.target.weight), u) for u in group]
        return [u for _, u in sorted(keyed, key=lambda pair: pair[0], reverse=True)]

    def states(self) -> dict[str, bool]:
        """Each upstream's name and whether it is in use (not cooling down)."""
        return {u.name: u.breaker.available() for u in self.upstreams}
