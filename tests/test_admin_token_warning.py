"""`spendgate serve` warns about an admin token that is easy to guess."""

import signal

import pytest

from spendgate.cli import token_weakness
from tests.processes import clean_environment, free_port, serve


@pytest.mark.parametrize(
    ("token", "weak"),
    [
        ("admin", True),
        ("a" * 40, True),  # long but one character
        ("correct-horse-battery", True),  # 21 characters
        ("Zx8f0Qm2Lr7Vb1Nc5Hs9Tk3W", False),
    ],
)
def test_token_weakness(token, weak):
    assert (token_weakness(token) is not None) is weak


@pytest.mark.parametrize(
    ("token", "warned"), [("letmein", True), ("Zx8f0Qm2Lr7Vb1Nc5Hs9Tk3W", False)]
)
async def test_serve_warns_about_a_weak_admin_token(tmp_path, upstream, token, warned):
    env = clean_environment(
        tmp_path,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}",
        SPENDGATE_UPSTREAM_BASE=upstream.base_url,
        SPENDGATE_UPSTREAM_API_KEY="sk-test",
        SPENDGATE_ADMIN_TOKEN=token,
        SPENDGATE_PORT=str(free_port()),
    )
    async with serve(tmp_path, env) as served:
        await served.wait_for_output("listening")
        served.process.send_signal(signal.SIGTERM)
        await served.process.wait()
    printed = served.printed()
    assert ("admin token (SPENDGATE_ADMIN_TOKEN) is weak" in printed) is warned
    assert token not in printed
