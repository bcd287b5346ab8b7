"""Routing by model, breakers and upstream URL shapes, without sockets."""

import random
from collections import Counter

import pytest

from spendgate.config import ConfigError, UpstreamConfig, load_settings
from spendgate.errors import ModelNotFound
from spendgate.proxy.routing import Router
from spendgate.proxy.upstream import UpstreamTarget
from spendgate.runtime import upstream_targets


def target(name: str, *models: str, **fields) -> UpstreamTarget:
    return UpstreamTarget(
        name=name, base_url=f"http://{name}/v1", api_key="k", models=models, **fields
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def names(upstreams) -> list[str]:
    return [u.name for u in upstreams]


def test_first_matching_upstream_in_file_order_then_its_fallbacks():
    router = Router(
        [target("a", "gpt-*", priority=0), target("b", "claude-*", priority=1),
         target("c", "*", priority=2)],
        failures=3, cooldown=10,
    )  # fmt: skip
    assert names(router.route("gpt-4o")) == ["a", "c"]
    assert names(router.route("claude-3")) == ["b", "c"]
    assert names(router.route("llama")) == ["c"]
    assert names(router.route(None)) == ["a"]  # no model named: the first upstream


def test_a_model_nobody_serves_is_refused():
    router = Router([target("a", "gpt-*")], failures=3, cooldown=10)
    with pytest.raises(ModelNotFound) as refused:
        router.route("claude-3")
    assert refused.value.status == 404 and refused.value.param == "model"


def test_repeated_failures_cool_an_upstream_down_and_a_success_restores_it():
    clock = Clock()
    router = Router(
        [target("a", "*", priority=0), target("b", "*", priority=1)],
        failures=3, cooldown=10, clock=clock,
    )  # fmt: skip
    first = router.route("m")[0]
    for _ in range(2):
        first.breaker.failed()
    assert names(router.route("m")) == ["a", "b"]  # two failures: still first
    first.breaker.failed()
    assert names(router.route("m")) == ["b", "a"]  # cooling down: tried last
    assert router.states() == {"a": False, "b": True}
    clock.now += 10.5
    assert names(router.route("m")) == ["a", "b"]  # half-open after the cooldown
    first.breaker.failed()  # one more failure re-opens it at once
    assert names(router.route("m")) == ["b", "a"]
    clock.now += 11
    first.breaker.succeeded()
    assert router.states() == {"a": True, "b": True}


def test_same_priority_splits_by_weight():
    router = Router(
        [target("a", "*", priority=0, weight=3), target("b", "*", priority=0, weight=1),
         target("c", "*", priority=1)],
        failures=3, cooldown=10, rng=random.Random(7),
    )  # fmt: skip
    firsts = Counter(router.route("m")[0].name for _ in range(4000))
    assert all(names(router.route("m"))[-1] == "c" for _ in range(50))
    assert 0.70 < firsts["a"] / 4000 < 0.80  # 3:1


def test_azure_url_uses_the_deployment_and_api_version_and_api_key_header():
    azure = UpstreamTarget(
        name="az", base_url="https://res.openai.azure.com", api_key="secret", kind="azure",
        api_version="2024-10-21", deployments={"gpt-4o": "gpt4o-prod"},
    )  # fmt: skip
    url = azure.url_for("chat/completions", b"", "gpt-4o")
    assert str(url) == (
        "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert str(azure.url_for("embeddings", b"x=1", "text-embedding-3-small")) == (
        "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings"
        "?x=1&api-version=2024-10-21"
    )
    assert str(azure.url_for("files", b"", None)) == (
        "https://res.openai.azure.com/openai/files?api-version=2024-10-21"
    )
    assert azure.auth_headers == (("api-key", "secret"),)
    assert azure.provider == "azure"


def test_openrouter_gets_bearer_auth_and_its_extra_headers_and_model_map():
    router = UpstreamTarget(
        name="or", base_url="https://openrouter.ai/api/v1", api_key="k", kind="openrouter",
        headers=(("HTTP-Referer", "https://intranet"), ("X-Title", "spendgate")),
        model_map={"gpt-4o-mini": "openai/gpt-4o-mini"},
    )  # fmt: skip
    assert router.auth_headers == (
        ("Authorization", "Bearer k"), ("HTTP-Referer", "https://intranet"),
        ("X-Title", "spendgate"),
    )  # fmt: skip
    assert router.upstream_model("gpt-4o-mini") == "openai/gpt-4o-mini"
    assert str(router.url_for("chat/completions", b"", "gpt-4o-mini")) == (
        "https://openrouter.ai/api/v1/chat/completions"
    )


def test_upstreams_from_settings_read_keys_from_the_named_variables(monkeypatch):
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-one")
    settings = load_settings(
        _env_file=None,
        upstreams=[
            {"name": "one", "base_url": "http://one/v1/", "api_key_env": "TEST_OPENAI_KEY",
             "models": ["gpt-*"]},
            {"name": "two", "kind": "azure", "base_url": "http://two", "api_version": "v",
             "api_key": "inline", "deployments": {"gpt-4o": "dep"}, "priority": 0},
        ],
    )  # fmt: skip
    one, two = upstream_targets(settings)
    assert (one.name, one.base_url, one.api_key, one.priority) == (
        "one",
        "http://one/v1",
        "sk-one",
        0,
    )
    assert (two.kind, two.api_key, two.priority, two.models) == ("azure", "inline", 0, ("*",))


@pytest.mark.parametrize(
    ("upstreams", "message"),
    [
        ([{"name": "a", "base_url": "http://a"}, {"name": "a", "base_url": "http://b"}], "unique"),
        ([{"name": "a", "kind": "azure", "base_url": "http://a"}], "api_version"),
        ([{"name": "a", "base_url": "ftp://a"}], "SPENDGATE_UPSTREAMS"),
        ([{"name": "a", "base_url": "http://a", "surprise": 1}], "SPENDGATE_UPSTREAMS"),
    ],
)
def test_bad_upstream_lists_are_refused_naming_the_setting(upstreams, message):
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, upstreams=upstreams)
    assert message in str(refused.value)


def test_a_missing_key_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = UpstreamConfig(name="x", base_url="http://x", api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        config.resolved_key()
