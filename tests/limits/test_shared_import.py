"""Redis is imported only by a gateway that uses it (redis-py and its OpenTelemetry SDK: ~9 MB).

Each case builds the app in a fresh interpreter (this one has imported Redis long ago) and
reports which modules got imported.
"""

import json
import subprocess
import sys

import pytest

BUILD = """
import json, sys
from spendgate.app import create_app
from spendgate.config import Settings
settings = Settings(
    database_url=sys.argv[1], upstream_api_key="sk-test", redis_url=sys.argv[2] or None
)
app = create_app(settings)
runtime = app.runtime
print(json.dumps({
    "redis": "redis" in sys.modules,
    "otel_sdk": "opentelemetry.sdk" in sys.modules,
    "backend": type(runtime.limits.backend).__name__,
    "channel": runtime.key_changes is not None,
}))
"""


def build(tmp_path, redis_url: str) -> dict[str, object]:
    url = f"sqlite:///{tmp_path}/ledger.db"
    done = subprocess.run(
        [sys.executable, "-c", BUILD, url, redis_url],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no stray .env
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("redis_url", "expected"),
    [
        ("", {"redis": False, "otel_sdk": False, "backend": "MemoryBackend", "channel": False}),
        (
            "redis://127.0.0.1:6379/0",  # built, not connected: nothing is sent before start
            {"redis": True, "otel_sdk": True, "backend": "OutageGuard", "channel": True},
        ),
    ],
)
def test_redis_is_imported_only_when_configured(tmp_path, redis_url, expected):
    assert build(tmp_path, redis_url) == expected
