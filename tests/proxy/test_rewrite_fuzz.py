"""Fuzzing the request reading and rewriting: any body, only the owned fields change.

The gateway owns two fields (contract section 4): `stream_options.include_usage`, set on
streamed `chat/completions` and `completions` requests, and `model`, set to the default model
on metered requests that name none. Everything else must reach the upstream as the client
wrote it, and any body must give either a prepared request or a clean 400.
"""

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.errors import GatewayError, InvalidRequest
from spendgate.proxy.rewrite import PreparedRequest, prepare_request
from tests.conftest import Gateway
from tests.support import assert_openai_error

FUZZ = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ENDPOINTS = [
    "chat/completions",
    "completions",
    "embeddings",
    "responses",
    "models",
    "files",
    "audio/speech",
]
USAGE_STREAM_ENDPOINTS = {"chat/completions", "completions"}
METERED = {"chat/completions", "completions", "embeddings", "responses"}
DEFAULT_MODEL = "gpt-default"

TEXT = st.text(max_size=10)  # lone surrogates included: not valid JSON text once escaped
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=15,
)
OWNED_LOOKING = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["gpt-4o-mini", "", None, 3]) | JSON,
        "stream": st.sampled_from([True, False, None, "true", 1]),
        "stream_options": st.sampled_from([None, {}, "x", [], {"include_usage": False}])
        | st.fixed_dictionaries(
            {}, optional={"include_usage": st.sampled_from([True, False, None, 1, "yes"])}
        ).flatmap(lambda d: st.dictionaries(TEXT, JSON, max_size=2).map(lambda e: {**e, **d})),
        "user": TEXT | JSON,
        "max_tokens": JSON,
        "max_completion_tokens": st.integers(min_value=-5, max_value=2**70),
    },
)
BODIES = st.tuples(OWNED_LOOKING, st.dictionaries(TEXT, JSON, max_size=5)).map(
    lambda parts: {**parts[1], **parts[0]}
)


def json_text(document: Any) -> bytes:
    """JSON as a client may write it: ints beyond 64 bits and escaped surrogates included."""
    return json.dumps(document).encode()


def prepare(
    endpoint: str, body: bytes, content_type: bytes | None = b"application/json"
) -> PreparedRequest:
    return prepare_request(
        endpoint, "POST", content_type, body, default_model=DEFAULT_MODEL, end_user_header=None
    )


def prepare_or_400(endpoint: str, body: bytes) -> PreparedRequest | None:
    """Prepare the request; None when it is refused, which must be a clean 400."""
    try:
        return prepare(endpoint, body)
    except GatewayError as exc:
        assert type(exc) is InvalidRequest and exc.status == 400
        assert endpoint in METERED  # other endpoints' bodies are passed on unread
        return None


def expected_upstream(endpoint: str, document: dict[str, Any]) -> dict[str, Any]:
    """The body the contract says the upstream gets for `document`."""
    expected = dict(document)
    model = document.get("model")
    if endpoint in METERED and (not isinstance(model, str) or not model):
        expected["model"] = DEFAULT_MODEL
    if document.get("stream") is True and endpoint in USAGE_STREAM_ENDPOINTS:
        options = document.get("stream_options")
        if isinstance(options, dict):
            expected["stream_options"] = {**options, "include_usage": True}
        else:
            expected["stream_options"] = {"include_usage": True}
    return expected


@FUZZ
@given(document=BODIES, endpoint=st.sampled_from(ENDPOINTS))
def test_only_the_owned_fields_change_and_rewriting_is_idempotent(
    document: dict[str, Any], endpoint: str
) -> None:
    body = json_text(document)
    prepared = prepare_or_400(endpoint, body)
    if prepared is None:
        return
    try:
        parsed = orjson.loads(body)  # as the gateway reads numbers (big ints become floats)
    except orjson.JSONDecodeError:
        assert prepared.json is None and prepared.body == body
        return
    expected = expected_upstream(endpoint, parsed)
    assert orjson.loads(prepared.body) == expected
    if expected == parsed:
        assert prepared.body == body  # not re-serialised when nothing changes
    options = parsed.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    assert prepared.client_wants_usage == (
        wants_usage and parsed.get("stream") is True and endpoint in USAGE_STREAM_ENDPOINTS
    )
    assert prepared.stream == (parsed.get("stream") is True)
    again = prepare(endpoint, prepared.body)
    assert again.body == prepared.body
    assert (again.model, again.stream, again.max_output_tokens, again.end_user) == (
        prepared.model,
        prepared.stream,
        prepared.max_output_tokens,
        prepared.end_user,
    )


@FUZZ
@given(
    body=st.binary(max_size=200)
    | st.lists(st.sampled_from([b"{", b"}", b"[", b'"stream":true', b",", b"1e999", b"\xff"])).map(
        b"".join
    ),
    endpoint=st.sampled_from(ENDPOINTS),
    content_type=st.sampled_from([None, b"application/json", b"text/plain", b"APPLICATION/JSON"]),
)
def test_any_bytes_give_a_request_or_a_clean_400(
    body: bytes, endpoint: str, content_type: bytes | None
) -> None:
    try:
        prepared = prepare(endpoint, body, content_type)
    except GatewayError as exc:
        assert type(exc) is InvalidRequest and exc.status == 400
        assert endpoint in METERED
        return
    if prepared.json is None:
        assert prepared.body == body


@FUZZ
@given(document=JSON.filter(lambda value: not isinstance(value, dict)))
def test_a_body_that_is_not_an_object_is_refused_on_metered_endpoints(document: Any) -> None:
    with pytest.raises(InvalidRequest):
        prepare("chat/completions", json_text(document))
    passed = prepare("files", json_text(document))
    assert passed.json is None and passed.body == json_text(document)


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


DEEP_OR_HUGE = {
    "depth-10000": b'{"model":"m","stream":true,"x":' + nested(10_000) + b"}",
    "depth-300-re-serialised": b'{"model":"m","stream":true,"x":' + nested(300) + b"}",
    "depth-300-default-model": b'{"x":' + nested(300) + b"}",
    "huge-exponent": b'{"model":"m","temperature":1e999}',
    "huge-integer": b'{"model":"m","seed":1' + b"0" * 400 + b"}",
    "huge-negative": b'{"model":"m","seed":-1' + b"0" * 400 + b"}",
}


@pytest.mark.parametrize("body", DEEP_OR_HUGE.values(), ids=DEEP_OR_HUGE.keys())
def test_deep_nesting_and_huge_numbers_are_refused_cleanly(body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        prepare("chat/completions", body)
    # A body too deep to write back (254 levels) but not rewritten is passed on as it came.
    if body != DEEP_OR_HUGE["depth-300-re-serialised"]:
        with pytest.raises(InvalidRequest):
            prepare("responses", body)
    else:
        assert prepare("responses", body).body == body


@pytest.mark.parametrize("body", DEEP_OR_HUGE.values(), ids=DEEP_OR_HUGE.keys())
def test_deep_nesting_and_huge_numbers_pass_unread_where_the_body_is_not_needed(
    body: bytes,
) -> None:
    prepared = prepare("files", body)
    assert prepared.json is None or prepared.body == body


@pytest.mark.timeout(60)
async def test_the_gateway_answers_400_to_deep_or_huge_bodies(gateway: Gateway) -> None:
    key = await gateway.new_key()
    http = gateway.http()
    for name, body in DEEP_OR_HUGE.items():
        if name == "depth-300-default-model":
            continue  # no default model here: passed on unread, the upstream answers
        response = await http.post(
            "/v1/chat/completions",
            content=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        assert response.status_code == 400, (name, response.text)
        assert_openai_error(response, 400, "invalid_request")
