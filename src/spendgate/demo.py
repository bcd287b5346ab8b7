"""`spendgate demo`: the gateway plus the built-in fake upstream, ready to try."""

import secrets
import shlex
from decimal import Decimal

from pydantic import SecretStr
from rich.console import Console

from spendgate.config import Settings
from spendgate.fake_upstream import FakeUpstream
from spendgate.keys.material import display_key, hash_key, new_key


def run_demo(settings: Settings, host: str, port: int) -> None:
    """Start a fake upstream and the gateway; print an admin token, a key and a curl line."""
    from spendgate.app import create_app
    from spendgate.cli import run_async
    from spendgate.logs import configure_logging
    from spendgate.server import serve_app

    configure_logging(settings)
    console = Console()

    async def main() -> None:
        fake = FakeUpstream()
        base = await fake.start("127.0.0.1", 0)
        admin_token = (
            settings.admin_token.get_secret_value()
            if settings.admin_token
            else "demo-admin-" + secrets.token_urlsafe(16)
        )
        demo_settings = settings.model_copy(
            update={
                "upstream_base": base,
                "upstream_api_key": SecretStr("demo-upstream-key"),
                "admin_token": SecretStr(admin_token),
                "upstream_api_version": None,
            }
        )
        gateway = create_app(demo_settings)
        key = new_key()

        async def announce() -> None:
            store = gateway.runtime.store
            # A budget, a prepaid balance and a rate limit, so /me has something to show.
            if await store.get_user("demo") is None:
                await store.create_user("demo", budget_usd=Decimal(1), budget_period="daily")
                await store.add_credit("demo", Decimal(5), note="demo credit", actor="demo")
            record = await store.create_key(
                "demo", hash_key(key), display_key(key), note="demo key",
                limits={"requests_per_minute": 60, "tokens_per_minute": 100_000},
            )  # fmt: skip
            gateway.runtime.principals.invalidate()
            url = f"http://{host}:{port}"
            body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'
            console.print(f"\n[bold]spendgate demo[/bold] on {url} (fake upstream at {base})")
            console.print(f"  admin token : {admin_token}")
            console.print(f"  demo key    : {key}  (user 'demo', key id {record.id})")
            console.print(
                f"  web console : {url}/ui/  (sign in with the admin token, or the demo key)",
                highlight=False,
            )
            console.print("\nTry it:\n")
            console.print(
                f"  curl -s {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
                f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            console.print(
                f"\n  curl -s {url}/me -H 'Authorization: Bearer {key}'\n"
                f"  curl -s '{url}/admin/usage?group_by=model' "
                f"-H 'Authorization: Bearer {admin_token}'\n"
                "  spendgate usage\n\nCtrl-C stops the demo.",
                highlight=False, soft_wrap=True,
            )  # fmt: skip

        try:
            await serve_app(gateway, host, port, announce)
        finally:
            await fake.stop()

    run_async(main)
