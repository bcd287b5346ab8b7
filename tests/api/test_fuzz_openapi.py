"""schemathesis fuzzes every operation of the gateway's own OpenAPI spec over a real socket.

The gateway (the `make_gateway` fixture: admin token, ingest key, self-service on) serves
`/openapi.json`; schemathesis loads it from there and generates requests for each operation:
- hypothesis-driven ones, valid (positive) and breaking the schema (negative), each sent four
  times: with the admin token, a gateway key (the self API), the ingest key, and nothing;
- schemathesis' deterministic coverage cases (boundary values, wrong types, missing and
  extra fields, empty strings...), sent with the credentials that reach the handler.

Whatever is sent, the gateway never answers a 5xx, every 4xx is an OpenAI-shaped error (never
FastAPI's own 422), and the answer conforms to the spec: its status is documented, its content
type too, and its body matches the documented schema.

schemathesis' API is synchronous (requests) and the gateway runs on the test's event loop, so
the requests are sent from a worker thread (`asyncio.to_thread`) while the loop serves them.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Gateway, GatewayFactory
from tests.support import ADMIN_TOKEN

INGEST_KEY = "ingest-key-for-the-fuzzer-0123456789"
# Per operation, mode and set of credentials; SPENDGATE_FUZZ_EXAMPLES=100 for a longer run.
EXAMPLES = int(os.environ.get("SPENDGATE_FUZZ_EXAMPLES", "6"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Purging usage as admin is the one operation whose success changes what every later case
# sees; there is nothing to purge here, but it is not sent with the admin token anyway.
# (Revoking the fuzzer's own key cannot happen: a generated path never is that key or its id,
# the only key made before the run is id 1 and `revoke` paths are random strings.)
DESTRUCTIVE = {"DELETE /admin/usage"}
# The console's /reports/data (src/spendgate/web/, included by web/console.py without the
# API's documented errors) documents only its 200: its 400/401 bodies are OpenAI-shaped like
# every other route's (checked below), but their statuses are not in the spec.
UNDOCUMENTED_ERRORS = {"GET /reports/data"}
Credentials = dict[str, dict[str, str]]


def assert_openai_shaped(response: Response, where: str) -> None:
    """A 4xx body is `{"error": {"message": str, "type": str, "code": str, "param": ...}}`."""
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), where
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, where
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}, where
    for field in ("message", "type", "code"):
        assert isinstance(error[field], str) and error[field], f"{where}: {field}"
    assert error["param"] is None or isinstance(error["param"], str), where


class Fuzzer:
    """Sends cases to the gateway and checks every answer; collects what answered."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.seen: set[tuple[str, str, int]] = set()  # (operation, credentials, status class)
        self.statuses: set[tuple[str, str, int]] = set()  # (operation, credentials, status)
        self.failures: list[str] = []

    def operations(self) -> list[Any]:
        schema = schemathesis.openapi.from_url(f"{self.url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        labels = {op.label for op in operations}
        # The spec really is there, with the routes the contract names.
        assert {"POST /admin/keys", "GET /me", "POST /ingest", "POST /public/keys"} <= labels
        return operations

    def send(self, case: Any, credentials: Credentials) -> None:
        label = case.operation.label
        for who, headers in credentials.items():
            if label in DESTRUCTIVE and who == "admin":
                continue
            response = case.call(base_url=self.url, session=self.session, headers=headers)
            self.seen.add((label, who, response.status_code // 100))
            self.statuses.add((label, who, response.status_code))
            excluded = [status_code_conformance] if label in UNDOCUMENTED_ERRORS else []
            case.validate_response(
                response, checks=CHECKS, excluded_checks=excluded, headers=headers
            )
            if 400 <= response.status_code < 500:
                where = f"{label} as {who} -> {response.status_code}: {response.text[:300]}"
                assert_openai_shaped(response, where)

    def attempt(self, what: str, run: Callable[[], None]) -> None:
        """Run one operation's cases; a failure is collected so every operation gets its run."""
        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:
            self.failures.append(f"{what}: {exc}"[:3000])


@contextlib.asynccontextmanager
async def fuzzed_gateway(make_gateway: GatewayFactory) -> AsyncIterator[tuple[Gateway, str]]:
    """A gateway with every API on, and a gateway key of user `fuzz`."""
    async with make_gateway(
        ingest_key=INGEST_KEY,
        self_service=True,
        auth_failures_per_minute=0,  # wrong credentials on purpose, by the thousand
        request_log=False,
    ) as gateway:
        yield gateway, await gateway.new_key("fuzz")


def every_credential(key: str) -> Credentials:
    return {
        "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
        "key": {"Authorization": f"Bearer {key}"},
        "ingest": {"X-Ingest-Key": INGEST_KEY},
        "none": {},
    }


def hypothesis_run(fuzzer: Fuzzer, credentials: Credentials) -> None:
    for operation in fuzzer.operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                # No shrinking: a failure is reported as found (shrinking resends for minutes).
                phases=[Phase.explicit, Phase.generate],
            )
            def run(case: Any) -> None:
                fuzzer.send(case, credentials)

            def run_unless_unsatisfiable(mode: GenerationMode = mode) -> None:
                try:
                    run()
                except Unsatisfiable:
                    # Nothing to break: the operation takes no parameters and no body.
                    assert mode is GenerationMode.NEGATIVE, "no valid request generated"

            fuzzer.attempt(f"{operation.label} ({mode.value})", run_unless_unsatisfiable)


async def test_fuzzed_requests_with_any_credentials_get_no_5xx_and_documented_answers(
    make_gateway: GatewayFactory,
) -> None:
    async with fuzzed_gateway(make_gateway) as (gateway, key):
        fuzzer = Fuzzer(gateway.url)
        await asyncio.to_thread(hypothesis_run, fuzzer, every_credential(key))
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    # The credentials really counted: the admin and the key got in, the others did not.
    seen = fuzzer.seen
    assert {("GET /admin/users", "admin", 2), ("GET /admin/users", "none", 4)} <= seen
    assert {("GET /me", "key", 2), ("GET /me", "ingest", 4), ("GET /me", "admin", 4)} <= seen
    assert ("POST /ingest", "none", 4) in seen


def reaching(label: str, credentials: Credentials) -> Credentials:
    """The credentials that get `label`'s request past authentication, to its handler."""
    path = label.split(" ", 1)[1]
    if path.startswith(("/admin", "/reports")):
        who = "admin"
    elif path.startswith("/me"):
        who = "key"
    elif path == "/ingest":
        who = "ingest"
    else:
        who = "none"
    return {who: credentials[who]}


def coverage_run(fuzzer: Fuzzer, credentials: Credentials) -> int:
    """Send every coverage case of every operation; how many were sent."""
    sent = 0
    for operation in fuzzer.operations():
        schema = operation.schema
        cases: Iterable[Any] = schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=schema.config.generation_for(operation=operation, phase="coverage"),
        )

        def run(cases: Iterable[Any] = cases, label: str = operation.label) -> None:
            nonlocal sent
            for case in cases:
                fuzzer.send(case, reaching(label, credentials))
                sent += 1

        fuzzer.attempt(f"{operation.label} (coverage)", run)
    return sent


async def test_coverage_cases_reaching_each_handler_get_no_5xx_and_documented_answers(
    make_gateway: GatewayFactory,
) -> None:
    async with fuzzed_gateway(make_gateway) as (gateway, key):
        fuzzer = Fuzzer(gateway.url)
        sent = await asyncio.to_thread(coverage_run, fuzzer, every_credential(key))
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    assert sent > 500  # the boundary cases of ~30 operations
    # The handlers were reached: valid cases succeeded with the matching credentials.
    seen = fuzzer.seen
    assert {("POST /admin/users", "admin", 2), ("GET /me/usage", "key", 2)} <= seen
    assert ("POST /ingest", "ingest", 4) in seen
    # A key was issued, or refused by the handler because the user exists (403): the
    # coverage cases' usernames are few ("0", ...), and `POST /admin/users` may have made them.
    issued = {("POST /public/keys", "none", status) for status in (201, 403)}
    assert issued & fuzzer.statuses, sorted(s for s in fuzzer.statuses if "public" in s[0])
