"""The `spendgate` command line: serve, demo, init, keys, users, usage, prices, db."""

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import uvloop
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spendgate import cli_accounts as accounts
from spendgate.config import ConfigError, Settings, load_settings

T = TypeVar("T")
_PIPED_WIDTH = 10_000


MIN_ADMIN_TOKEN_LENGTH = 24
MIN_ADMIN_TOKEN_DISTINCT = 10
app = typer.Typer(
    help="spendgate: a self-hosted, OpenAI-compatible LLM gateway with an exact usage ledger.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Create, list, update and revoke gateway keys.", no_args_is_help=True)
users_app = typer.Typer(
    help="Create, list and update users; add and show prepaid credit.", no_args_is_help=True
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")

# Command path → one-line documentation; the README test checks each is documented.
COMMAND_DOCS = {
    "serve": "Start the gateway.",
    "demo": "Start the gateway with a built-in fake upstream, a demo admin token and key.",
    "run": "`serve` when an upstream key is configured, else `demo` (what `make run` calls).",
    "init": "Write a commented .env for a new install.",
    "keys create": "Create a key for a user (shown once).",
    "keys list": "List keys in display form.",
    "keys revoke": "Revoke a key by id or full key.",
    "keys update": "Change a key's note, models, expiry, budget or limits.",
    "users create": "Create a user.",
    "users list": "List users with their budget, credit balance and limits.",
    "users update": "Change a user's email, budget, limits or disabled flag.",
    "users credit": "Add prepaid credit to a user (negative: refund or correction).",
    "users credits": "Show a user's credit transactions and balance.",
    "usage": "Usage totals and groups (table, csv or json).",
    "prices": "Show the price in effect for a model and where it comes from.",
    "db upgrade": "Create or migrate the database schema.",
}


def fail(message: str) -> NoReturn:
    """Print one clear line and exit with status 2."""
    # soft_wrap: never break the line at the console width (80 columns when piped).
    # escape: the message may quote user input holding Rich markup such as "[/x]".
    Console(stderr=True).print(
        f"[red]spendgate:[/red] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(2)


def table_console() -> Console:
    """A console for tables: the terminal's width, or unbounded when the output is piped."""
    console = Console()
    # Piped output has no width; Rich's default of 80 columns would cut keys and amounts.
    return console if console.is_terminal else Console(width=_PIPED_WIDTH)


def check_user_name(name: str) -> None:
    """Refuse a user name the admin API could not address (it forbids '/' and controls)."""
    from pydantic import TypeAdapter, ValidationError

    from spendgate.api.schemas import Name

    try:
        TypeAdapter(Name).validate_python(name)
    except ValidationError:
        fail(f"invalid user name {name!r}: 1-200 characters, no '/' or control characters.")


def flags_or_exit(parse: Callable[[], T]) -> T:
    """Run a flag parser; a `FlagError` becomes the command's one-line error."""
    try:
        return parse()
    except accounts.FlagError as exc:
        fail(str(exc))


def settings_or_exit(**overrides: Any) -> Settings:
    """Load settings, or print the bad one and exit."""
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc))
        raise AssertionError("unreachable") from exc


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on uvloop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(factory())


async def with_store(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    """Open the ledger (migrated), run `action(store)`, close it."""
    from sqlalchemy.exc import DBAPIError

    from spendgate.ledger.engine import create_engine, normalize_database_url, upgrade
    from spendgate.ledger.store import Store
    from spendgate.runtime import account_defaults

    try:
        engine = create_engine(normalize_database_url(settings.database))
    except OSError as exc:  # the SQLite file's directory cannot be created
        fail(f"cannot open the database (SPENDGATE_DATABASE_URL): {exc.strerror}: {exc.filename}")
    try:
        try:
            await upgrade(engine)
        except (OSError, DBAPIError) as exc:
            # Name the cause, never the URL: it may hold a password.
            cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            fail(f"cannot open the database (SPENDGATE_DATABASE_URL): {cause}")
        return await action(Store(engine, account_defaults(settings)))
    finally:
        await engine.dispose()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (more than 1 needs SPENDGATE_REDIS_URL).")
    ] = 1,
) -> None:
    """Start the gateway."""
    settings = settings_or_exit()
    if workers > 1 and settings.redis_url is None:
        # Without Redis, budgets, credits and rate limits are counted in process: several
        # workers would each admit up to the full budget.
        fail(
            f"--workers {workers}: worker processes share budgets and rate limits through "
            "Redis; set SPENDGATE_REDIS_URL, or run one worker."
        )
    if settings.upstream_api_key is None and not settings.upstreams:
        fail("no upstream key: set SPENDGATE_UPSTREAM_API_KEY (or run `spendgate demo`).")
    _serve(settings, host or settings.host, port if port is not None else settings.port, workers)


def _serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    from spendgate.app import create_app
    from spendgate.logs import configure_logging
    from spendgate.server import serve_app, serve_workers

    try:
        configure_logging(settings)
    except OSError as exc:
        fail(f"invalid setting SPENDGATE_LOG_PATH: cannot open {settings.log_path}: {exc.strerror}")
    console = Console(stderr=True)
    processes = f" ({workers} worker processes)" if workers > 1 else ""

    def announce() -> None:
        # Once it serves: a setting that stops the start is then the only line printed.
        if settings.admin_token is None:
            console.print(
                "[yellow]spendgate: no admin token (SPENDGATE_ADMIN_TOKEN): "
                "the admin API answers 401 to everyone.[/yellow]"
            )
        else:
            weakness = token_weakness(settings.admin_token.get_secret_value())
            if weakness:
                console.print(
                    f"[yellow]spendgate: the admin token (SPENDGATE_ADMIN_TOKEN) is weak: "
                    f"{weakness}. Use 32 or more random characters "
                    "(`spendgate init` writes one).[/yellow]"
                )
        console.print(f"spendgate listening on http://{host}:{port}{processes}", highlight=False)

    if workers > 1:
        try:
            status = serve_workers(settings, host, port, workers, announce)
        except ConfigError as exc:
            fail(str(exc))
        if status:
            raise typer.Exit(status)
        return
    try:
        gateway = create_app(settings)
    except ConfigError as exc:
        fail(str(exc))

    async def started() -> None:
        announce()

    run_async(lambda: serve_app(gateway, host, port, started))


def token_weakness(token: str) -> str | None:
    """Why an admin token is easy to guess, or None when it looks random enough."""
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        return f"{len(token)} characters"
    if len(set(token)) < MIN_ADMIN_TOKEN_DISTINCT:
        return f"only {len(set(token))} different characters"
    return None


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Gateway port.")] = 8000,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
) -> None:
    """Start the gateway with a built-in fake upstream, a demo admin token and key."""
    from spendgate.demo import run_demo

    settings = settings_or_exit()
    run_demo(settings, host, port)


@app.command("run")
def run_command() -> None:
    """`serve` when an upstream key is configured, else `demo`."""
    settings = settings_or_exit()
    if settings.upstream_api_key is None and not settings.upstreams:
        demo(port=settings.port, host=settings.host)
    else:
        serve(None, None)


@app.command()
def init(
    path: Annotated[Path, typer.Option(help="Where to write.")] = Path(".env"),
) -> None:
    """Write a commented .env for a new install (never overwrites)."""
    from spendgate.envfile import write_env_file

    if path.exists():
        fail(f"{path} exists; not overwriting it.")
    try:
        write_env_file(path)
    except FileExistsError:  # created since the check above
        fail(f"{path} exists; not overwriting it.")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror}")
    typer.echo(f"wrote {path}: set SPENDGATE_UPSTREAM_API_KEY, then run `spendgate serve`.")


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Argument(help="The user the key belongs to (created if absent).")],
    note: Annotated[str | None, typer.Option(help="A note shown in listings.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma list of model globs.")] = None,
    expires: Annotated[datetime | None, typer.Option(help="Expiry, ISO-8601.")] = None,
    budget: accounts.BudgetOption = None,
    period: accounts.PeriodOption = None,
    limit: accounts.LimitOption = None,
) -> None:
    """Create a key for a user; it is shown once."""
    from spendgate.keys.material import display_key, hash_key, new_key

    check_user_name(user)
    fields = flags_or_exit(lambda: accounts.create_fields(budget, period, limit))
    settings = settings_or_exit()
    key = new_key()
    globs = [item.strip() for item in models.split(",") if item.strip()] if models else None

    async def action(store: Any) -> Any:
        return await store.create_key(
            user, hash_key(key), display_key(key), note=note, models=globs, expires_at=expires,
            **fields,
        )  # fmt: skip

    record = run_async(lambda: with_store(settings, action))
    typer.echo(f"key {record.id} for {user}: {key}")
    typer.echo("Store it now: it is not shown again.")


@keys_app.command("list")
def keys_list(
    user: Annotated[str | None, typer.Option(help="Only this user's keys.")] = None,
) -> None:
    """List keys in display form."""
    settings = settings_or_exit()
    records = run_async(lambda: with_store(settings, lambda store: store.list_keys(user)))
    table_console().print(accounts.keys_table(records))


@keys_app.command("revoke")
def keys_revoke(id_or_key: Annotated[str, typer.Argument(help="Key id or the full key.")]) -> None:
    """Revoke a key by id or full key."""
    from spendgate.api.admin_keys import parse_key_id
    from spendgate.keys.material import hash_key, looks_like_key

    settings = settings_or_exit()

    async def action(store: Any) -> Any:
        if looks_like_key(id_or_key):
            found = await store.find_key_by_hash(hash_key(id_or_key))
            key_id = found[0].id if found else None
        else:
            key_id = parse_key_id(id_or_key)
        return await store.revoke_key(key_id) if key_id is not None else None

    record = run_async(lambda: with_store(settings, action))
    if record is None:
        fail("no such key.")
    typer.echo(f"revoked key {record.id} ({record.display}) of {record.user}")


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id (see `keys list`).")],
    note: Annotated[str | None, typer.Option(help="A note shown in listings ('' clears).")] = None,
    models: Annotated[str | None, typer.Option(help="Comma list of model globs.")] = None,
    all_models: Annotated[bool, typer.Option("--all-models", help="Allow every model.")] = False,
    expires: Annotated[datetime | None, typer.Option(help="Expiry, ISO-8601.")] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Never expire.")] = False,
    budget: accounts.BudgetOption = None,
    no_budget: accounts.NoBudgetOption = False,
    period: accounts.PeriodOption = None,
    limit: accounts.LimitOption = None,
    clear_limits: accounts.ClearLimitsOption = False,
) -> None:
    """Change a key's note, models, expiry, budget or limits (limits merge into the old)."""
    from spendgate.api.admin_keys import parse_key_id

    update = flags_or_exit(lambda: accounts.AccountUpdate.parse(
        accounts.key_fields(note, models, all_models, expires, no_expiry), budget=budget,
        no_budget=no_budget, period=period, limits=limit, clear_limits=clear_limits,
    ))  # fmt: skip
    number = parse_key_id(key_id)
    if number is None:
        fail(f"no key with id {key_id!r}.")
    settings = settings_or_exit()
    record = run_async(
        lambda: with_store(settings, lambda s: accounts.update_key(s, number, update))
    )
    if record is None:
        fail(f"no key with id {key_id!r}.")
    typer.echo(f"updated {accounts.key_summary(record)}")


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="User name.")],
    email: Annotated[str | None, typer.Option(help="Email address.")] = None,
    budget: accounts.BudgetOption = None,
    period: accounts.PeriodOption = None,
    limit: accounts.LimitOption = None,
) -> None:
    """Create a user."""
    from spendgate.errors import Conflict

    check_user_name(name)
    fields = flags_or_exit(lambda: accounts.create_fields(budget, period, limit))
    settings = settings_or_exit()
    try:
        run_async(
            lambda: with_store(settings, lambda store: store.create_user(name, email, **fields))
        )
    except Conflict as exc:
        fail(exc.message)
    typer.echo(f"created user {name}")


@users_app.command("list")
def users_list() -> None:
    """List users with their budget, credit balance and limits."""
    settings = settings_or_exit()
    rows = run_async(lambda: with_store(settings, accounts.users_with_balances))
    table_console().print(accounts.users_table(rows))


@users_app.command("update")
def users_update(
    name: Annotated[str, typer.Argument(help="User name.")],
    email: Annotated[str | None, typer.Option(help="Email address ('' clears it).")] = None,
    budget: accounts.BudgetOption = None,
    no_budget: accounts.NoBudgetOption = False,
    period: accounts.PeriodOption = None,
    limit: accounts.LimitOption = None,
    clear_limits: accounts.ClearLimitsOption = False,
    disable: Annotated[
        bool | None, typer.Option("--disable/--enable", help="Refuse (or accept) its requests.")
    ] = None,
) -> None:
    """Change a user's email, budget, limits or disabled flag (limits merge into the old)."""
    update = flags_or_exit(lambda: accounts.AccountUpdate.parse(
        accounts.user_fields(email, disable), budget=budget, no_budget=no_budget, period=period,
        limits=limit, clear_limits=clear_limits,
    ))  # fmt: skip
    settings = settings_or_exit()
    user = run_async(
        lambda: with_store(settings, lambda store: accounts.update_user(store, name, update))
    )
    if user is None:
        fail(f"no user named {name!r}.")
    typer.echo(f"updated {accounts.user_summary(user)}")


# ignore_unknown_options: a negative AMOUNT such as -5 is an argument, not an unknown option.
@users_app.command("credit", context_settings={"ignore_unknown_options": True})
def users_credit(
    name: Annotated[str, typer.Argument(help="User name.")],
    amount: Annotated[
        str, typer.Argument(metavar="AMOUNT", help="USD to add; negative (e.g. -5) takes away.")
    ],
    note: Annotated[str | None, typer.Option(help="Why, kept with the transaction.")] = None,
) -> None:
    """Add prepaid credit to a user (negative: refund or correction); print the balance."""
    value = flags_or_exit(lambda: accounts.parse_credit(amount))
    settings = settings_or_exit()
    balance = run_async(
        lambda: with_store(settings, lambda s: accounts.add_credit(s, name, value, note))
    )
    if balance is None:
        fail(f"no user named {name!r}.")
    typer.echo(accounts.balance_line(name, balance))


@users_app.command("credits")
def users_credits(name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Show a user's credit transactions and balance."""
    settings = settings_or_exit()
    history = run_async(
        lambda: with_store(settings, lambda store: accounts.credit_history(store, name))
    )
    if history is None:
        fail(f"no user named {name!r}.")
    credits, balance = history
    table_console().print(accounts.credits_table(credits))
    typer.echo(accounts.balance_line(name, balance))


@app.command()
def usage(
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (UTC).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD (UTC).")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    group_by: Annotated[
        str, typer.Option(help="user|key|model|day|end_user|upstream|source")
    ] = "user",
    output: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Usage totals and groups over a date range (default: the last 30 days)."""
    from spendgate.cli_usage import print_usage

    settings = settings_or_exit()
    try:
        print_usage(settings, start, end, user, model, group_by, output)
    except ValueError as exc:
        fail(str(exc))


@app.command()
def prices(model: Annotated[str, typer.Argument(help="Model name, e.g. gpt-4o-mini.")]) -> None:
    """Show the price in effect for a model and where it comes from."""
    from spendgate.metering.pricing import PriceBook, PricingConfigError, load_overrides
    from spendgate.money import format_usd

    settings = settings_or_exit()
    try:
        book = PriceBook(load_overrides(settings.pricing_file, settings.model_pricing_json))
    except PricingConfigError as exc:
        fail(str(exc))
    price = book.describe(model)
    if price is None:
        fail(f"no price known for {model!r}; it is metered with cost null.")
        return
    million = 10**6
    table = Table("model", "input / 1M", "cached input / 1M", "output / 1M", "source")
    table.add_row(
        model,
        f"${format_usd(price.input_per_token * million)}",
        f"${format_usd(price.cached_input_per_token * million)}",
        f"${format_usd(price.output_per_token * million)}",
        price.source,
    )
    table_console().print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest revision."""
    settings = settings_or_exit()

    async def nothing(store: Any) -> None:
        return None

    try:
        run_async(lambda: with_store(settings, nothing))
    except ValueError as exc:
        fail(str(exc))
    typer.echo("database is up to date")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as exc:
        Console(stderr=True).print(
            f"spendgate: {exc}", highlight=False, markup=False, soft_wrap=True
        )
        sys.exit(2)
