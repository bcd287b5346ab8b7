"""schemathesis fuzzes every route of the OpenAPI spec on a real `spendgate serve`.

Each operation gets generated requests (valid and invalid parameters and bodies) with four
sets of credentials: the admin token, a gateway key (the self API), the ingest key, and
none. Whatever is sent, the gateway never answers a 5xx, and every 4xx is an OpenAI-shaped
error (`{"error": {"message", "type", "code", "param"}}`).
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from tests.processes import clean_environment, free_port
from tests.support import ADMIN_TOKEN

INGEST_KEY = "ingest-key-for-the-fuzzer-0123456789"
# Revoking or deleting the fuzzer's own key, or purging, would only make later cases 401s.
DESTRUCTIVE = {("DELETE", "/admin/usage")}
EXAMPLES = int(os.environ.get("SPENDGATE_FUZZ_EXAMPLES", "10"))


class Served:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.credentials = {
            "admin": {"Authorization": f"Bearer {ADMIN_TOKEN}"},
            "key": {"Authorization": f"Bearer {key}"},
            "ingest": {"X-Ingest-Key": INGEST_KEY},
            "none": {},
        }
        self.seen: set[tuple[str, int]] = set()  # (credentials, status class) answered


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = clean_environment(
        tmp,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp}/ledger.db",
        SPENDGATE_UPSTREAM_BASE="http://127.0.0.1:9/v1",  # never called: /v1 is not in the spec
        SPENDGATE_UPSTREAM_API_KEY="sk-fuzz",
        SPENDGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        SPENDGATE_INGEST_KEY=INGEST_KEY,
        SPENDGATE_SELF_SERVICE="true",
        SPENDGATE_AUTH_FAILURES_PER_MINUTE="0",  # wrong credentials on purpose, thousands
        SPENDGATE_REQUEST_LOG="false",
        SPENDGATE_PORT=str(port),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "serve"],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "the gateway exited"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        made = httpx.post(f"{url}/admin/keys", json={"user": "fuzz"}, headers=admin)
        assert made.status_code == 201, made.text
        yield Served(url, made.json()["key"])
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode in (0, -15), process.returncode


def operations(url: str) -> list:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 20, [op.label for op in found]  # the spec is really there
    return found


def check(case, served: Served) -> None:
    """Send `case` with every set of credentials; no 5xx, every 4xx OpenAI-shaped."""
    for who, credentials in served.credentials.items():
        if (case.method.upper(), case.path) in DESTRUCTIVE and who == "admin":
            continue
        response = case.call(base_url=served.url, headers=credentials, timeout=30)
        served.seen.add((who, response.status_code // 100))
        where = f"{case.method.upper()} {case.formatted_path} as {who}: {response.status_code}"
        assert response.status_code < 500, f"{where}\n{response.text[:500]}"
        if response.status_code >= 400 and not case.path.startswith("/ui"):
            body = response.json()
            assert set(body) == {"error"}, where
            error = body["error"]
            assert set(error) >= {"message", "type", "code", "param"}, where
            assert isinstance(error["message"], str) and error["message"], where
            assert isinstance(error["code"], str) and error["code"], where


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error_and_every_error_is_openai_shaped(served, mode):
    """Valid inputs (positive) and inputs that break the schema (negative), per operation."""
    for operation in operations(served.url):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:
            check(case, served)

        try:
            fuzz()
        except Unsatisfiable:
            # An operation that takes nothing (GET /health): no input can break its schema.
            assert mode is GenerationMode.NEGATIVE, operation.label
    # The requests were really answered, and the credentials really counted.
    assert {("admin", 2), ("key", 2), ("none", 4)} <= served.seen, served.seen
