"""Users and keys on the command line: budget, limit and credit flags, changes, listings.

The Typer commands themselves are declared in `cli.py`, next to the helpers every command
uses (`fail`, `with_store`, ...). This module never prints or exits, so it imports nothing
from `cli.py`: a value that cannot be used raises `FlagError`, whose message names the flag
and becomes the command's one-line error.
"""

import getpass
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import Field, TypeAdapter, ValidationError
from rich.table import Table

from spendgate.api.schemas import Money
from spendgate.ledger.records import CreditRecord, KeyRecord, UserRecord
from spendgate.limits.names import LIMIT_WINDOWS, Limits
from spendgate.money import format_usd, pico_to_usd
from spendgate.periods import PERIODS, Period

if TYPE_CHECKING:  # the store pulls in SQLAlchemy; commands that never open it stay quick
    from spendgate.ledger.store import Store

# Listings show each limit by a short name; `--limit` takes the contract's full names.
LIMIT_SHORT_NAMES = {
    "requests_per_minute": "rpm",
    "requests_per_hour": "rph",
    "requests_per_day": "rpd",
    "tokens_per_minute": "tpm",
    "tokens_per_hour": "tph",
    "tokens_per_day": "tpd",
}
_ACTOR_MAX = 200  # the width of credit_transactions.actor
_BUDGET = TypeAdapter(Money)
_CREDIT = TypeAdapter(Annotated[Decimal, Field(max_digits=20, decimal_places=12)])

# Options shared by `users create|update` and `keys create|update`.
BudgetOption = Annotated[
    str | None, typer.Option("--budget", metavar="USD", help="Budget in USD for each period.")
]
PeriodOption = Annotated[
    str | None,
    typer.Option(
        "--period", metavar="PERIOD", help="Budget period: daily, weekly, monthly, total."
    ),
]
LimitOption = Annotated[
    list[str] | None,
    typer.Option(
        "--limit",
        metavar="NAME=VALUE",
        help="A limit such as requests_per_minute=60 or tokens_per_day=100000 (repeatable).",
    ),
]
NoBudgetOption = Annotated[
    bool, typer.Option("--no-budget", help="Remove the budget (and its period).")
]
ClearLimitsOption = Annotated[
    bool, typer.Option("--clear-limits", help="Remove every limit (then apply any --limit).")
]


class FlagError(ValueError):
    """A command-line value that cannot be used; the message names the flag."""


# reading flags


def parse_budget(text: str | None) -> Decimal | None:
    """`--budget`: a non-negative USD amount with at most 12 decimals."""
    if text is None:
        return None
    try:
        return _BUDGET.validate_python(text)
    except ValidationError:
        raise FlagError(
            f"--budget {text!r}: expected a USD amount ≥ 0 with at most 12 decimals."
        ) from None


def parse_period(text: str | None) -> Period | None:
    """`--period`: daily, weekly, monthly or total."""
    if text is None:
        return None
    for period in PERIODS:
        if text == period:
            return period
    raise FlagError(f"--period {text!r}: expected one of {', '.join(PERIODS)}.")


def parse_limits(items: Sequence[str] | None) -> dict[str, int] | None:
    """`--limit NAME=VALUE` flags as a limits dict (None when none was given)."""
    if not items:
        return None
    given: dict[str, Any] = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals:
            raise FlagError(f"--limit {item!r}: expected NAME=VALUE, e.g. requests_per_minute=60.")
        # Only plain digits become numbers; anything else reaches the model as text and fails.
        digits = value.removeprefix("-")
        given[name] = int(value) if digits.isascii() and digits.isdigit() else value
    try:
        return Limits.model_validate(given, strict=True).as_dict()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0])
        if error["type"] == "extra_forbidden":
            raise FlagError(
                f"--limit {name}={given[name]}: unknown limit name; "
                f"use one of {', '.join(LIMIT_WINDOWS)}."
            ) from None
        raise FlagError(
            f"--limit {name}={given[name]}: expected a whole number from 0 to 10^12."
        ) from None


def parse_models(text: str) -> list[str]:
    """`--models`: a comma list of model globs, at least one."""
    globs = [item.strip() for item in text.split(",") if item.strip()]
    if not globs:
        raise FlagError("--models: give at least one model glob (or --all-models).")
    return globs


def parse_credit(text: str) -> Decimal:
    """`users credit` AMOUNT: non-zero USD with at most 12 decimals; negative takes away."""
    try:
        amount = _CREDIT.validate_python(text)
    except ValidationError:
        raise FlagError(
            f"AMOUNT {text!r}: expected a USD amount with at most 12 decimals, e.g. 10 or -2.5."
        ) from None
    if not amount:
        raise FlagError("AMOUNT must not be 0.")
    return amount


def cli_actor() -> str:
    """Who a credit transaction made here is recorded as: `cli:<login name>`."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment or the password database
        return "cli"
    return f"cli:{login}"[:_ACTOR_MAX]


def user_fields(email: str | None, disable: bool | None) -> dict[str, Any]:
    """The user's own fields `users update` changes ('' clears the email)."""
    fields: dict[str, Any] = {}
    if email is not None:
        fields["email"] = email or None
    if disable is not None:
        fields["disabled"] = disable
    return fields


def key_fields(
    note: str | None,
    models: str | None,
    all_models: bool,
    expires: datetime | None,
    no_expiry: bool,
) -> dict[str, Any]:
    """The key's own fields `keys update` changes ('' clears the note)."""
    if models is not None and all_models:
        raise FlagError("--models and --all-models contradict each other.")
    if expires is not None and no_expiry:
        raise FlagError("--expires and --no-expiry contradict each other.")
    fields: dict[str, Any] = {}
    if note is not None:
        fields["note"] = note or None
    if models is not None or all_models:
        fields["models"] = parse_models(models) if models is not None else None
    if expires is not None or no_expiry:
        fields["expires_at"] = expires
    return fields


def create_fields(
    budget: str | None, period: str | None, limits: Sequence[str] | None
) -> dict[str, Any]:
    """Budget, period and limits for `Store.create_*`; None leaves the configured default."""
    return {
        "budget_usd": parse_budget(budget),
        "budget_period": parse_period(period),
        "limits": parse_limits(limits),
    }


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """What `update` changes on a user or key: plain fields, and limits merged into the old."""

    fields: dict[str, Any]
    limits: dict[str, int]
    clear_limits: bool

    @classmethod
    def parse(
        cls,
        fields: dict[str, Any],
        *,
        budget: str | None,
        no_budget: bool,
        period: str | None,
        limits: Sequence[str] | None,
        clear_limits: bool,
    ) -> "AccountUpdate":
        """Validate the shared flags and add them to the command's own `fields`."""
        if budget is not None and no_budget:
            raise FlagError("--budget and --no-budget contradict each other.")
        changes = dict(fields)
        if budget is not None:
            changes["budget_usd"] = parse_budget(budget)
        if no_budget:  # a period without a budget means nothing: it goes too
            changes |= {"budget_usd": None, "budget_period": None}
        if period is not None:
            changes["budget_period"] = parse_period(period)
        update = cls(changes, parse_limits(limits) or {}, clear_limits)
        if not (update.fields or update.limits or update.clear_limits):
            raise FlagError("nothing to change: give at least one option (see --help).")
        return update

    def store_fields(self, current_limits: Mapping[str, int]) -> dict[str, Any]:
        """The fields for `Store.update_*`, given the limits in effect now."""
        if not (self.limits or self.clear_limits):
            return self.fields
        kept = {} if self.clear_limits else dict(current_limits)
        return {**self.fields, "limits": kept | self.limits}


# changing and reading the ledger


async def update_user(store: "Store", name: str, update: AccountUpdate) -> UserRecord | None:
    """Apply `update` to the user called `name`; None if there is none."""
    # Read, merge, write: a concurrent change to the same user's limits can be lost.
    current = await store.get_user(name)
    if current is None:
        return None
    return await store.update_user(name, **update.store_fields(current.limits))


async def update_key(store: "Store", key_id: int, update: AccountUpdate) -> KeyRecord | None:
    """Apply `update` to the key with id `key_id`; None if there is none."""
    current = await store.get_key(key_id)
    if current is None:
        return None
    return await store.update_key(key_id, **update.store_fields(current.limits))


async def balance_of(store: "Store", user: UserRecord) -> Decimal | None:
    """Credits minus every cost in the ledger, or None if the user has no credit account."""
    from spendgate.ledger.spend import spent_before

    if user.credit_usd is None:
        return None
    return user.credit_usd - pico_to_usd(await spent_before(store.engine, user=user.name))


async def add_credit(
    store: "Store", name: str, amount: Decimal, note: str | None
) -> Decimal | None:
    """Record a credit transaction by this login; the new balance, or None if no such user."""
    user = await store.add_credit(name, amount, note=note, actor=cli_actor())
    return None if user is None else await balance_of(store, user)


async def credit_history(
    store: "Store", name: str
) -> tuple[list[CreditRecord], Decimal | None] | None:
    """The user's credit transactions and balance, or None if no such user."""
    user = await store.get_user(name)
    if user is None:
        return None
    return await store.list_credits(name), await balance_of(store, user)


async def users_with_balances(store: "Store") -> list[tuple[UserRecord, Decimal | None]]:
    """Every user with its credit balance."""
    return [(user, await balance_of(store, user)) for user in await store.list_users()]


# rendering


def usd(amount: Decimal) -> str:
    """`$` and every significant digit: "$0.000435", "-$5"."""
    return f"-${format_usd(-amount)}" if amount < 0 else f"${format_usd(amount)}"


def limits_text(limits: Mapping[str, int]) -> str:
    """Limits by short name in the contract's order: "rpm=60, tpd=100000"."""
    return ", ".join(
        f"{short}={limits[name]}" for name, short in LIMIT_SHORT_NAMES.items() if name in limits
    )


def models_text(models: Sequence[str] | None) -> str:
    """The model globs a key may use: "all" when it has no allow-list."""
    if models is None:
        return "all"
    return ", ".join(models) or "none"


def period_text(budget_usd: Decimal | None, period: str | None) -> str:
    """The budget period in effect (monthly when a budget has none of its own)."""
    return period or ("monthly" if budget_usd is not None else "")


def user_summary(user: UserRecord) -> str:
    """One line: the user's email, budget, limits and state."""
    budget = (
        f"{usd(user.budget_usd)} {period_text(user.budget_usd, user.budget_period)}"
        if user.budget_usd is not None
        else "none"
    )
    return (
        f"user {user.name}: email {user.email or 'none'}; budget {budget}; "
        f"limits {limits_text(user.limits) or 'none'}; "
        f"{'disabled' if user.disabled else 'enabled'}"
    )


def key_summary(key: KeyRecord) -> str:
    """One line: the key's note, models, expiry, budget and limits (never the key)."""
    budget = (
        f"{usd(key.budget_usd)} {period_text(key.budget_usd, key.budget_period)}"
        if key.budget_usd is not None
        else "none"
    )
    return (
        f"key {key.id} ({key.display}) of {key.user}: note {key.note or 'none'}; "
        f"models {models_text(key.models)}; "
        f"expires {when(key.expires_at) or 'never'}; budget {budget}; "
        f"limits {limits_text(key.limits) or 'none'}"
    )


def users_table(rows: Sequence[tuple[UserRecord, Decimal | None]]) -> Table:
    """`users list`: one row per user."""
    table = Table("name", "email", "budget", "period", "balance", "limits", "disabled", "created")
    for user, balance in rows:
        table.add_row(
            user.name, user.email or "", _optional_usd(user.budget_usd),
            period_text(user.budget_usd, user.budget_period), _optional_usd(balance),
            limits_text(user.limits), "yes" if user.disabled else "", when(user.created_at),
        )  # fmt: skip
    return table


def keys_table(keys: Sequence[KeyRecord]) -> Table:
    """`keys list`: one row per key, in display form."""
    table = Table(
        "id", "user", "key", "note", "models", "budget", "period", "limits",
        "created", "revoked", "expires", "last used",
    )  # fmt: skip
    for key in keys:
        table.add_row(
            str(key.id), key.user, key.display, key.note or "",
            models_text(key.models),
            _optional_usd(key.budget_usd), period_text(key.budget_usd, key.budget_period),
            limits_text(key.limits), when(key.created_at), when(key.revoked_at),
            when(key.expires_at), when(key.last_used_at),
        )  # fmt: skip
    return table


def credits_table(credits: Sequence[CreditRecord]) -> Table:
    """`users credits`: one row per transaction, oldest first."""
    table = Table("created", "amount", "actor", "note")
    for credit in credits:
        table.add_row(when(credit.created_at), usd(credit.amount_usd), credit.actor,
                      credit.note or "")  # fmt: skip
    return table


def balance_line(name: str, balance: Decimal | None) -> str:
    """`balance of NAME: $X`, or that the user has no credit account."""
    return f"balance of {name}: {usd(balance) if balance is not None else 'no credit account'}"


def when(value: datetime | None) -> str:
    """A listing's timestamp to the minute, or empty."""
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def _optional_usd(amount: Decimal | None) -> str:
    return usd(amount) if amount is not None else ""
