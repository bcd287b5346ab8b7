"""Budgets, limits and credits of users and keys from the command line (temporary SQLite ledger)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendgate.cli_accounts import LIMIT_SHORT_NAMES
from spendgate.ledger.writer import write_events
from spendgate.limits.names import LIMIT_WINDOWS
from tests import test_cli
from tests.test_cli import create_key, event, invoke, ok, with_store

ledger_url = test_cli.ledger_url  # autouse: a fresh ledger and no settings from the machine


def user_named(url, name):
    return with_store(url, lambda store, _: store.get_user(name))


def key_with_id(url, key_id):
    return with_store(url, lambda store, _: store.get_key(key_id))


def refused(*args):
    """Run a command that must fail with one line on stderr and exit status 2."""
    result = invoke(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def row_of(listing, first_cell):
    """The cells of the table row whose first cell is `first_cell`."""
    for line in listing.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{listing}")


def column(listing, name):
    header = next(line for line in listing.splitlines() if "┃" in line)
    return [cell.strip() for cell in header.split("┃")[1:-1]].index(name)


def spend(url, user, key_id, cost):
    """Write one usage event costing `cost` to the ledger."""
    usage = event(f"req_{user}_{cost}", user, key_id, "gpt-4o-mini", 10, 5, cost)

    async def write(_, engine):
        return await write_events(engine, [usage])

    assert len(with_store(url, write)) == 1


# create: budget, period and limits


def test_users_create_stores_budget_period_and_limits(ledger_url):
    ok("users", "create", "alice", "--budget", "12.5", "--period", "weekly",
       "--limit", "requests_per_minute=60", "--limit", "tokens_per_day=100000")  # fmt: skip
    user = user_named(ledger_url, "alice")
    assert user.budget_usd == Decimal("12.5")
    assert user.budget_period == "weekly"
    assert user.limits == {"requests_per_minute": 60, "tokens_per_day": 100000}


def test_keys_create_stores_budget_period_and_limits(ledger_url):
    key_id, _ = create_key("bob", "--budget", "0.000001", "--period", "total",
                           "--limit", "requests_per_hour=0")  # fmt: skip
    key = key_with_id(ledger_url, key_id)
    assert key.budget_usd == Decimal("0.000001")
    assert key.budget_period == "total"
    assert key.limits == {"requests_per_hour": 0}


def test_create_without_the_flags_leaves_the_configured_defaults(ledger_url, monkeypatch):
    monkeypatch.setenv("SPENDGATE_DEFAULT_USER_BUDGET_USD", "5")
    monkeypatch.setenv("SPENDGATE_DEFAULT_USER_LIMITS", '{"requests_per_minute": 9}')
    ok("users", "create", "plain")
    ok("users", "create", "own", "--budget", "7", "--limit", "tokens_per_hour=3")
    plain, own = user_named(ledger_url, "plain"), user_named(ledger_url, "own")
    assert (plain.budget_usd, plain.budget_period, plain.limits) == (
        Decimal(5),
        "monthly",
        {"requests_per_minute": 9},
    )
    assert (own.budget_usd, own.limits) == (Decimal(7), {"tokens_per_hour": 3})


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--limit", "requests_per_fortnight=1"), "--limit requests_per_fortnight=1: unknown"),
        (("--limit", "tokens_per_day=-1"), "--limit tokens_per_day=-1: expected a whole"),
        (("--limit", "tokens_per_day=1.5"), "--limit tokens_per_day=1.5: expected a whole"),
        (("--limit", "tokens_per_day=10000000000001"), "expected a whole number from 0"),
        (("--limit", "requests_per_minute"), "--limit 'requests_per_minute': expected NAME=VALUE"),
        (("--period", "yearly"), "--period 'yearly': expected one of daily"),
        (("--budget", "-1"), "--budget '-1'"),
        (("--budget", "ten"), "--budget 'ten'"),
        (("--budget", "0.0000000000001"), "at most 12 decimals"),
    ],
)
@pytest.mark.parametrize("command", ["users", "keys"])
def test_create_refuses_a_bad_flag_with_one_line(ledger_url, command, flags, says):
    assert says in refused(command, "create", "carol", *flags)
    assert with_store(ledger_url, lambda store, _: store.list_users()) == []


# users update


def test_users_update_merges_limits_into_the_existing_ones(ledger_url):
    ok("users", "create", "dora", "--limit", "requests_per_minute=60",
       "--limit", "tokens_per_day=1000")  # fmt: skip
    out = ok("users", "update", "dora", "--limit", "tokens_per_day=5000",
             "--limit", "requests_per_hour=100")  # fmt: skip
    assert user_named(ledger_url, "dora").limits == {
        "requests_per_minute": 60,
        "requests_per_hour": 100,
        "tokens_per_day": 5000,
    }
    assert out == (
        "updated user dora: email none; budget none; limits rpm=60, rph=100, tpd=5000; enabled\n"
    )


def test_users_update_clear_limits_drops_them_before_any_new_one(ledger_url):
    ok("users", "create", "ed", "--limit", "requests_per_minute=60")
    ok("users", "update", "ed", "--clear-limits", "--limit", "tokens_per_minute=7")
    assert user_named(ledger_url, "ed").limits == {"tokens_per_minute": 7}
    ok("users", "update", "ed", "--clear-limits")
    assert user_named(ledger_url, "ed").limits == {}


def test_users_update_changes_email_budget_and_period(ledger_url):
    ok("users", "create", "fay", "--email", "old@example.com", "--budget", "1")
    out = ok("users", "update", "fay", "--email", "new@example.com", "--budget", "10",
             "--period", "daily")  # fmt: skip
    user = user_named(ledger_url, "fay")
    assert (user.email, user.budget_usd, user.budget_period) == (
        "new@example.com",
        Decimal(10),
        "daily",
    )
    assert "email new@example.com; budget $10 daily;" in out


def test_users_update_leaves_what_is_not_named(ledger_url):
    ok("users", "create", "gil", "--email", "g@example.com", "--budget", "3",
       "--limit", "requests_per_day=9")  # fmt: skip
    ok("users", "update", "gil", "--period", "total")
    user = user_named(ledger_url, "gil")
    assert (user.email, user.budget_usd, user.limits) == (
        "g@example.com",
        Decimal(3),
        {"requests_per_day": 9},
    )


def test_users_update_no_budget_removes_the_budget_and_its_period(ledger_url):
    ok("users", "create", "hal", "--budget", "3", "--period", "weekly")
    assert "budget none" in ok("users", "update", "hal", "--no-budget")
    user = user_named(ledger_url, "hal")
    assert (user.budget_usd, user.budget_period) == (None, None)


def test_users_update_empty_email_clears_it(ledger_url):
    ok("users", "create", "ian", "--email", "i@example.com")
    ok("users", "update", "ian", "--email", "")
    assert user_named(ledger_url, "ian").email is None


def test_users_update_disables_and_enables(ledger_url):
    ok("users", "create", "jo")
    assert ok("users", "update", "jo", "--disable").rstrip().endswith("; disabled")
    assert user_named(ledger_url, "jo").disabled
    assert ok("users", "update", "jo", "--enable").rstrip().endswith("; enabled")
    assert not user_named(ledger_url, "jo").disabled


def test_users_update_of_an_unknown_user_fails():
    assert "no user named 'nobody'" in refused("users", "update", "nobody", "--disable")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ((), "nothing to change"),
        (("--budget", "1", "--no-budget"), "--budget and --no-budget contradict"),
        (("--limit", "tokens_per_day=-5"), "--limit tokens_per_day=-5"),
        (("--limit", "bogus=1"), "unknown limit name"),
        (("--period", "hourly"), "--period 'hourly'"),
    ],
)
def test_users_update_refuses_bad_flags_and_changes_nothing(ledger_url, flags, says):
    ok("users", "create", "kim", "--limit", "requests_per_minute=1")
    before = user_named(ledger_url, "kim")
    assert says in refused("users", "update", "kim", *flags)
    assert user_named(ledger_url, "kim") == before


# keys update


def test_keys_update_merges_limits_into_the_existing_ones(ledger_url):
    key_id, _ = create_key("lee", "--limit", "requests_per_minute=5")
    ok("keys", "update", str(key_id), "--limit", "tokens_per_minute=50")
    assert key_with_id(ledger_url, key_id).limits == {
        "requests_per_minute": 5,
        "tokens_per_minute": 50,
    }


def test_keys_update_changes_note_models_expiry_and_budget(ledger_url):
    key_id, key = create_key("max")
    out = ok("keys", "update", str(key_id), "--note", "ci", "--models", "gpt-4o*, o3",
             "--expires", "2099-01-02T03:04:05", "--budget", "2.5",
             "--period", "daily")  # fmt: skip
    record = key_with_id(ledger_url, key_id)
    assert (record.note, record.models, record.expires_at) == (
        "ci",
        ["gpt-4o*", "o3"],
        datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    assert (record.budget_usd, record.budget_period) == (Decimal("2.5"), "daily")
    assert out.startswith(f"updated key {key_id} (sg-{key[3:7]}…{key[-4:]}) of max: note ci;")
    assert "models gpt-4o*, o3; expires 2099-01-02 03:04; budget $2.5 daily" in out
    assert key not in out


def test_keys_update_clears_models_expiry_budget_and_limits(ledger_url):
    key_id, _ = create_key("ned", "--note", "x", "--models", "gpt-*", "--expires", "2099-01-01",
                           "--budget", "1", "--limit", "requests_per_day=1")  # fmt: skip
    ok("keys", "update", str(key_id), "--note", "", "--all-models", "--no-expiry",
       "--no-budget", "--clear-limits")  # fmt: skip
    record = key_with_id(ledger_url, key_id)
    assert (record.note, record.models, record.expires_at) == (None, None, None)
    assert (record.budget_usd, record.budget_period, record.limits) == (None, None, {})


@pytest.mark.parametrize("target", ["4242", "abc", "1.5", "9" * 30])
def test_keys_update_of_an_unknown_key_fails(target):
    create_key("oz")
    assert "no key with id" in refused("keys", "update", target, "--note", "x")


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ((), "nothing to change"),
        (("--models", "gpt-*", "--all-models"), "--models and --all-models contradict"),
        (("--models", " , "), "--models: give at least one"),
        (("--expires", "2099-01-01", "--no-expiry"), "--expires and --no-expiry contradict"),
        (("--budget", "1", "--no-budget"), "--budget and --no-budget contradict"),
        (("--limit", "requests_per_minute=-1"), "--limit requests_per_minute=-1"),
        (("--period", "fortnightly"), "--period 'fortnightly'"),
    ],
)
def test_keys_update_refuses_bad_flags_and_changes_nothing(ledger_url, flags, says):
    key_id, _ = create_key("pat", "--models", "gpt-*")
    before = key_with_id(ledger_url, key_id)
    assert says in refused("keys", "update", str(key_id), *flags)
    assert key_with_id(ledger_url, key_id) == before


# credits


def test_credit_prints_the_new_balance_and_records_who_and_why(ledger_url, monkeypatch):
    monkeypatch.setenv("LOGNAME", "robin")
    ok("users", "create", "quinn")
    assert ok("users", "credit", "quinn", "20", "--note", "invoice 17") == (
        "balance of quinn: $20\n"
    )
    [credit] = with_store(ledger_url, lambda store, _: store.list_credits("quinn"))
    assert (credit.amount_usd, credit.actor, credit.note) == (
        Decimal(20),
        "cli:robin",
        "invoice 17",
    )


@pytest.mark.parametrize("form", [("-5",), ("--", "-5"), ("-5", "--note", "refund")])
def test_a_negative_credit_takes_away_as_the_readme_shows(ledger_url, form):
    ok("users", "create", "rae")
    ok("users", "credit", "rae", "20")
    assert ok("users", "credit", "rae", *form) == "balance of rae: $15\n"
    assert user_named(ledger_url, "rae").credit_usd == Decimal(15)


def test_a_credit_below_zero_leaves_a_negative_balance():
    ok("users", "create", "sam")
    assert ok("users", "credit", "sam", "-0.5") == "balance of sam: -$0.5\n"


def test_a_credit_changes_the_balance_by_exactly_the_amount(ledger_url):
    ok("users", "create", "tia")
    ok("users", "credit", "tia", "10")
    assert ok("users", "credit", "tia", "0.000000000001") == "balance of tia: $10.000000000001\n"
    assert ok("users", "credit", "tia", "-0.000000000002") == "balance of tia: $9.999999999999\n"
    assert user_named(ledger_url, "tia").credit_usd == Decimal("9.999999999999")


def test_the_balance_is_credit_minus_everything_the_ledger_charged(ledger_url):
    key_id, _ = create_key("uma")
    spend(ledger_url, "uma", key_id, Decimal("0.00045735"))
    spend(ledger_url, "uma", key_id, Decimal("0.000000000001"))
    assert ok("users", "credit", "uma", "1") == "balance of uma: $0.999542649999\n"


@pytest.mark.parametrize(
    ("amount", "says"),
    [
        ("0", "AMOUNT must not be 0"),
        ("-0.000", "AMOUNT must not be 0"),
        ("ten", "AMOUNT 'ten'"),
        ("NaN", "AMOUNT 'NaN'"),
        ("0.0000000000001", "at most 12 decimals"),
    ],
)
def test_credit_refuses_a_bad_amount_with_one_line(ledger_url, amount, says):
    ok("users", "create", "vic")
    assert says in refused("users", "credit", "vic", amount)
    assert with_store(ledger_url, lambda store, _: store.list_credits("vic")) == []


def test_credit_for_an_unknown_user_fails():
    assert "no user named 'nobody'" in refused("users", "credit", "nobody", "5")


def test_credits_lists_the_history_and_the_balance(ledger_url, monkeypatch):
    monkeypatch.setenv("LOGNAME", "robin")
    key_id, _ = create_key("wes")
    ok("users", "credit", "wes", "20", "--note", "top-up")
    ok("users", "credit", "wes", "-5", "--note", "refund")
    spend(ledger_url, "wes", key_id, Decimal("0.25"))
    out = ok("users", "credits", "wes")
    created, amount, actor, note = (
        column(out, name) for name in ("created", "amount", "actor", "note")
    )
    lines = [line for line in out.splitlines() if "cli:robin" in line]
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
    assert [(row[amount], row[actor], row[note]) for row in cells] == [
        ("$20", "cli:robin", "top-up"),
        ("-$5", "cli:robin", "refund"),
    ]
    assert all(row[created] for row in cells)
    assert out.endswith("balance of wes: $14.75\n")


def test_credits_of_a_user_without_a_credit_account_says_so():
    ok("users", "create", "xan")
    assert ok("users", "credits", "xan").endswith("balance of xan: no credit account\n")


def test_credits_of_an_unknown_user_fails():
    assert "no user named 'nobody'" in refused("users", "credits", "nobody")


# listings


def test_users_list_shows_balance_and_limits(ledger_url):
    key_id, _ = create_key("yan")
    ok("users", "update", "yan", "--limit", "tokens_per_day=100000",
       "--limit", "requests_per_minute=60")  # fmt: skip
    ok("users", "credit", "yan", "3")
    spend(ledger_url, "yan", key_id, Decimal("0.5"))
    ok("users", "create", "zed")
    listing = ok("users", "list")
    balance, limits = column(listing, "balance"), column(listing, "limits")
    assert row_of(listing, "yan")[balance] == "$2.5"
    assert row_of(listing, "yan")[limits] == "rpm=60, tpd=100000"
    assert row_of(listing, "zed")[balance] == row_of(listing, "zed")[limits] == ""


def test_users_list_shows_budgets_as_plain_decimals():
    ok("users", "create", "amy", "--budget", "10")
    listing = ok("users", "list")
    row = row_of(listing, "amy")
    assert row[column(listing, "budget")] == "$10"
    assert row[column(listing, "period")] == "monthly"
    assert "E+" not in listing


def test_keys_list_shows_budget_models_and_limits():
    limited, _ = create_key("bea", "--budget", "1.25", "--period", "daily", "--models",
                            "gpt-4o*,o3", "--limit", "requests_per_hour=30")  # fmt: skip
    open_key, _ = create_key("bea")
    listing = ok("keys", "list")
    budget, period, models, limits = (
        column(listing, name) for name in ("budget", "period", "models", "limits")
    )
    row = row_of(listing, str(limited))
    assert (row[budget], row[period], row[models], row[limits]) == (
        "$1.25",
        "daily",
        "gpt-4o*, o3",
        "rph=30",
    )
    row = row_of(listing, str(open_key))
    assert (row[budget], row[period], row[models], row[limits]) == ("", "", "all", "")


def test_every_limit_has_a_short_name_for_listings():
    assert list(LIMIT_SHORT_NAMES) == list(LIMIT_WINDOWS)
