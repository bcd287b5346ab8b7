"""Constants and assertions shared by the tests."""

from datetime import datetime
from typing import Any

ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-secret-never-leaks-42"


def assert_openai_error(response: Any, status: int, code: str, param: str | None = None) -> Any:
    """Assert an OpenAI-shaped error with this status and code (and param); return its body."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def parse_time(text: str | None) -> datetime | None:
    """An ISO-8601 timestamp from the API ("Z" or an offset); None stays None."""
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))
