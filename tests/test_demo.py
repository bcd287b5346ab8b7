"""`spendgate demo`: a newcomer's first run, with its own fake upstream, key and admin token."""

import asyncio
import os
import re
import signal
import sys
from decimal import Decimal

import httpx
import openai

from tests.test_shutdown import free_port


async def test_the_demo_serves_its_printed_key_and_shows_budget_credits_and_limits(tmp_path):
    port = free_port()
    env = {
        key: value for key, value in os.environ.items() if not key.upper().startswith(
            ("SPENDGATE_", "UPSTREAM_", "OPENAI_", "ADMIN_TOKEN", "DATABASE_", "MODEL_")
        )
    }  # fmt: skip
    env["SPENDGATE_DATABASE_URL"] = f"sqlite:///{tmp_path}/demo.db"
    env["COLUMNS"] = "400"  # rich wraps long lines at the terminal width
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spendgate", "demo", "--port", str(port), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    printed = ""
    try:
        assert process.stdout is not None
        while "Ctrl-C" not in printed:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, f"the demo exited early:\n{printed}"
            printed += line.decode()
        key = re.search(r"demo key\s+:\s+(sg-\S+)", printed)
        admin = re.search(r"admin token\s+:\s+(\S+)", printed)
        assert key and admin, printed
        url = f"http://127.0.0.1:{port}"
        assert f"web console : {url}/ui/" in printed, printed
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key[1], max_retries=0)
        async with client:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]
            )
        assert reply.choices[0].message.content
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            me = (await http.get("/me", headers={"Authorization": f"Bearer {key[1]}"})).json()
            usage = await http.get("/admin/usage", headers={"Authorization": f"Bearer {admin[1]}"})
            login = await http.get("/ui/login")
        assert me["budget"]["period"] == "daily"
        assert Decimal(str(me["balance_usd"])) < 5  # the request was charged to the credit
        assert me["limits"]["requests_per_minute"]["remaining"] == 59
        assert usage.status_code == 200
        assert login.status_code == 200 and 'id="admin-login"' in login.text
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) in (0, 1, -signal.SIGINT, 130)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
