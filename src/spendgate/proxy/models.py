"""`GET /v1/models`: the models the gateway's upstreams serve, as the caller may use them.

Each upstream's own list is fetched (cached for a minute) and kept where its globs match;
names an upstream is configured with literally (glob-free patterns, `model_map` and Azure
`deployments` keys) are added. The union is filtered by the caller's key allow-list. An
upstream that cannot be listed contributes only its literal names.
"""

import time
from collections.abc import Callable, Iterable

import orjson

from spendgate.keys.principals import Principal
from spendgate.limits.policy import model_allowed
from spendgate.proxy.routing import Router, Upstream
from spendgate.proxy.upstream import UpstreamClient

CACHE_SECONDS = 60.0
_GLOB_CHARS = frozenset("*?[")


class ModelList:
    """Builds the `/v1/models` answer from every upstream's models."""

    def __init__(
        self, router: Router, client: UpstreamClient, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._router = router
        self._client = client
        self._clock = clock
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def answer(self, principal: Principal) -> bytes:
        """The OpenAI-shaped model list for this caller."""
        owners: dict[str, str] = {}
        for upstream in self._router.upstreams:
            for model in await self._models_of(upstream):
                owners.setdefault(model, upstream.name)
        allowed = principal.key.models
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": owner}
            for model, owner in sorted(owners.items())
            if allowed is None or model_allowed(model, allowed)
        ]
        return orjson.dumps({"object": "list", "data": data})

    async def _models_of(self, upstream: Upstream) -> list[str]:
        cached = self._cache.get(upstream.name)
        now = self._clock()
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        target = upstream.target
        literal = [g for g in target.models if not _GLOB_CHARS & set(g)]
        literal += [*target.model_map, *target.deployments]
        listed: list[str] = []
        if target.kind != "azure":  # Azure lists base models, not what its deployments serve
            try:
                url = target.url_for("models", b"", None)
                listed = list(_ids(await self._client.get_json(target, url)))
            except Exception:  # an upstream without a usable list: its literal names only
                listed = []
        served = [m for m in listed if upstream.serves(m)]
        models = sorted(set(literal) | set(served))
        self._cache[upstream.name] = (now, models)
        return models


def _ids(document: object) -> Iterable[str]:
    """The model ids of an OpenAI-shaped list."""
    data = document.get("data") if isinstance(document, dict) else None
    if isinstance(data, list):
        for item in data:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                yield item["id"]
