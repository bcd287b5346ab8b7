"""The `spendgate` command line against a temporary SQLite ledger.

The commands run their own event loop, so these tests are plain (sync) functions.
"""

import csv
import io
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import AliasChoices
from typer.testing import CliRunner

from spendgate.cli import COMMAND_DOCS, app, run_async
from spendgate.config import Settings, load_settings
from spendgate.keys.material import hash_key
from spendgate.ledger.engine import create_engine, upgrade
from spendgate.ledger.events import UsageEvent
from spendgate.ledger.store import Store
from spendgate.ledger.writer import write_events
from tests.processes import clean_environment, free_port, serve
from tests.support import ADMIN_TOKEN

KEY_IN_TEXT = re.compile(r"\bsg-[A-Za-z0-9_-]{32,}")


@pytest.fixture(autouse=True)
def ledger_url(monkeypatch, tmp_path):
    """A fresh SQLite ledger in tmp_path, and no other setting from the machine."""
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        for name in alias.choices if isinstance(alias, AliasChoices) else []:
            monkeypatch.delenv(str(name), raising=False)
    monkeypatch.delenv("SPENDGATE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setenv("SPENDGATE_DATABASE_URL", url)
    monkeypatch.setenv("COLUMNS", "80")
    return url


def invoke(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.stderr)
    return result.stdout


def with_store(url, action):
    async def run():
        engine = create_engine(url)
        try:
            await upgrade(engine)
            return await action(Store(engine), engine)
        finally:
            await engine.dispose()

    return run_async(run)


def create_key(user, *options):
    out = ok("keys", "create", user, *options)
    [key] = KEY_IN_TEXT.findall(out)
    key_id = int(re.search(r"key (\d+) for", out).group(1))
    return key_id, key


def display_of(key):
    return f"sg-{key[3:7]}…{key[-4:]}"


# --help


def test_help_lists_every_command():
    top = ok("--help")
    groups = {}
    for command in COMMAND_DOCS:
        group, _, sub = command.partition(" ")
        assert re.search(rf"\b{group}\b", top), group
        if sub:
            groups.setdefault(group, []).append(sub)
    for group, subs in groups.items():
        text = ok(group, "--help")
        for sub in subs:
            assert re.search(rf"\b{sub}\b", text), f"{group} {sub}"


# users


def test_users_create_and_list(ledger_url):
    assert "created user alice" in ok("users", "create", "alice", "--email", "a@example.com")
    ok("users", "create", "bob")
    listing = ok("users", "list")
    assert "alice" in listing and "a@example.com" in listing and "bob" in listing
    users = with_store(ledger_url, lambda store, _: store.list_users())
    assert [(user.name, user.email) for user in users] == [
        ("alice", "a@example.com"),
        ("bob", None),
    ]


def test_creating_an_existing_user_fails_with_one_line():
    ok("users", "create", "carol")
    result = invoke("users", "create", "carol")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "already exists" in result.stderr


@pytest.mark.parametrize("command", ["users", "keys"])
@pytest.mark.parametrize("name", ["team/a", "", "x" * 201, "tab\there"])
def test_a_name_the_admin_api_cannot_address_is_refused(ledger_url, command, name):
    result = invoke(command, "create", name)
    assert result.exit_code == 2
    assert "invalid user name" in result.stderr and result.stderr.count("\n") == 1
    assert with_store(ledger_url, lambda store, _: store.list_users()) == []


# keys


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(ledger_url, tmp_path):
    out = ok("keys", "create", "dave", "--note", "ci", "--models", "gpt-4o*, text-*")
    [key] = KEY_IN_TEXT.findall(out)
    assert len(key) >= 3 + 32
    found = with_store(ledger_url, lambda store, _: store.find_key_by_hash(hash_key(key)))
    record, user = found
    assert user.name == "dave"
    assert record.note == "ci"
    assert record.models == ["gpt-4o*", "text-*"]
    assert record.display == display_of(key)
    assert key.encode() not in (tmp_path / "cli.db").read_bytes()


def test_keys_create_with_an_expiry():
    create_key("erin", "--expires", "2099-01-02T03:04:05")
    listing = ok("keys", "list")
    assert "2099-01-02 03:04" in listing


def test_keys_list_shows_the_display_form_never_the_key():
    _, alice_key = create_key("alice", "--note", "laptop")
    _, bob_key = create_key("bob")
    everything = ok("keys", "list")
    for key in (alice_key, bob_key):
        assert display_of(key) in everything
        assert key not in everything and key[3:] not in everything
    assert not KEY_IN_TEXT.search(everything)
    assert "laptop" in everything
    only_bob = ok("keys", "list", "--user", "bob")
    assert display_of(bob_key) in only_bob and display_of(alice_key) not in only_bob


@pytest.mark.parametrize("by", ["id", "key"])
def test_keys_revoke_by_id_or_key(ledger_url, by):
    key_id, key = create_key("fay")
    _, other = create_key("fay")
    out = ok("keys", "revoke", str(key_id) if by == "id" else key)
    assert f"revoked key {key_id}" in out and display_of(key) in out
    assert key not in out

    async def lookup(store, _):
        return [await store.find_key_by_hash(hash_key(k)) for k in (key, other)]

    (revoked, _), (kept, _) = with_store(ledger_url, lookup)
    assert revoked.revoked_at is not None and kept.revoked_at is None
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    listing = ok("keys", "list", "--user", "fay")
    assert today in listing.split(display_of(key), 1)[1].split("\n", 1)[0]


@pytest.mark.parametrize("target", ["4242", "sg-" + "z" * 43, "nonsense", "9" * 30, "²"])
def test_revoking_an_unknown_key_fails(target):
    create_key("gus")
    result = invoke("keys", "revoke", target)
    assert result.exit_code == 2
    assert "no such key" in result.stderr


# usage


def event(request_id, user, key_id, model, prompt, completion, cost, **extra):
    return UsageEvent(
        request_id=request_id,
        timestamp=datetime.now(UTC),
        user=user,
        key_id=key_id,
        model=model,
        endpoint="chat/completions",
        method="POST",
        status=200,
        stream=False,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=extra.pop("cached", 0),
        reasoning_tokens=0,
        total_tokens=prompt + completion,
        cost_usd=cost,
        latency_ms=12,
        **extra,
    )


@pytest.fixture
def usage_events(ledger_url):
    alice_key, _ = create_key("alice")
    bob_key, _ = create_key("bob")
    events = [
        event("req_a1", "alice", alice_key, "gpt-4o-mini", 10, 5, Decimal("0.0000045")),
        event("req_a2", "alice", alice_key, "gpt-4o", 100, 20, Decimal("0.00045"), cached=40),
        event("req_b1", "bob", bob_key, "gpt-4o-mini", 7, 3, Decimal("0.00000285")),
        event("req_b2", "bob", bob_key, "house-model", 1, 1, None),
    ]

    async def write(_, engine):
        return await write_events(engine, events)

    assert len(with_store(ledger_url, write)) == len(events)
    return events


def totals_of(events):
    return {
        "requests": len(events),
        "prompt_tokens": sum(e.prompt_tokens for e in events),
        "completion_tokens": sum(e.completion_tokens for e in events),
        "cached_tokens": sum(e.cached_tokens for e in events),
        "reasoning_tokens": 0,
        "total_tokens": sum(e.total_tokens for e in events),
        "cost_usd": sum((e.cost_usd or Decimal(0) for e in events), Decimal(0)),
    }


def test_usage_as_json_is_exact(usage_events):
    report = json.loads(ok("usage", "--format", "json"), parse_float=Decimal)
    assert report["totals"] == totals_of(usage_events)
    assert report["totals"]["cost_usd"] == Decimal("0.00045735")
    groups = {group["user"]: group for group in report["groups"]}
    for user in ("alice", "bob"):
        mine = [e for e in usage_events if e.user == user]
        assert {k: groups[user][k] for k in totals_of(mine)} == totals_of(mine)


def test_usage_as_json_by_model_and_for_one_user(usage_events):
    report = json.loads(
        ok("usage", "--format", "json", "--group-by", "model", "--user", "bob"),
        parse_float=Decimal,
    )
    bobs = [e for e in usage_events if e.user == "bob"]
    assert report["totals"] == totals_of(bobs)
    assert {group["model"] for group in report["groups"]} == {"gpt-4o-mini", "house-model"}


def test_usage_as_csv_has_a_row_per_group_and_a_total(usage_events):
    rows = list(csv.reader(io.StringIO(ok("usage", "--format", "csv"))))
    header, *body = rows
    assert header[0] == "user"
    assert header[1:] == list(totals_of([]))
    by_name = {row[0]: row for row in body}
    assert set(by_name) == {"alice", "bob", "TOTAL"}
    for name, events in (
        ("alice", [e for e in usage_events if e.user == "alice"]),
        ("bob", [e for e in usage_events if e.user == "bob"]),
        ("TOTAL", usage_events),
    ):
        expected = totals_of(events)
        row = dict(zip(header[1:], by_name[name][1:], strict=True))
        assert Decimal(row.pop("cost_usd")) == expected.pop("cost_usd")
        assert {k: int(v) for k, v in row.items()} == expected
    assert "0.00045735" in by_name["TOTAL"]


def test_usage_as_a_table_shows_users_and_exact_totals(usage_events):
    out = ok("usage", "--group-by", "model")
    for model in ("gpt-4o-mini", "gpt-4o", "house-model"):
        assert model in out
    assert "0.00045735" in out
    assert "0.00000735" in out  # gpt-4o-mini: 0.0000045 + 0.00000285
    assert "requests" in out and "completion tokens" in out  # no column cut at 80 wide


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--format", "xml"), "--format"),
        (("--group-by", "colour"), "group_by"),
        (("--start", "yesterday"), "start"),
        (("--start", "2024-02-10", "--end", "2024-02-01"), "start"),
    ],
)
def test_usage_refuses_bad_options_with_one_line(args, says):
    result = invoke("usage", *args)
    assert result.exit_code == 2
    assert says in result.stderr
    assert result.stderr.count("\n") == 1


# prices


def test_prices_shows_the_builtin_price_and_its_source():
    out = ok("prices", "gpt-4o-mini")
    assert "$0.15" in out and "$0.6" in out
    assert "$0.150" not in out
    assert "genai-prices" in out


def test_prices_shows_overrides_and_where_they_come_from(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_PRICING_JSON", '{"my-model": {"input": 0.001, "output": 0.002}}')
    out = ok("prices", "my-model")
    assert "$1" in out and "$2" in out and "MODEL_PRICING_JSON" in out
    prices = tmp_path / "prices.json"
    prices.write_text('{"my-model": {"input_per_1m": 3, "output_per_1m": 4}}', encoding="utf-8")
    monkeypatch.setenv("SPENDGATE_PRICING_FILE", str(prices))
    out = ok("prices", "my-model")
    assert "$3" in out and "$4" in out and "pricing file" in out


def test_prices_of_an_unknown_model_fails_with_one_line():
    result = invoke("prices", "no-such-model-anywhere")
    assert result.exit_code != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "no-such-model-anywhere" in result.stderr and "no price" in result.stderr


def test_prices_with_a_bad_pricing_file_names_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("SPENDGATE_PRICING_FILE", str(tmp_path / "absent.json"))
    result = invoke("prices", "gpt-4o-mini")
    assert result.exit_code == 2
    assert "SPENDGATE_PRICING_FILE" in result.stderr


# db and init


def test_db_upgrade_creates_the_schema_and_is_repeatable(tmp_path):
    database = tmp_path / "cli.db"
    assert not database.exists()
    assert "up to date" in ok("db", "upgrade")
    assert "up to date" in ok("db", "upgrade")
    with sqlite3.connect(database) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        [(revision,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"alembic_version", "users", "api_keys"} <= tables
    assert revision


def test_db_upgrade_with_a_bad_database_url_names_the_setting(monkeypatch):
    monkeypatch.setenv("SPENDGATE_DATABASE_URL", "oracle://scott:tiger@db/x")
    result = invoke("db", "upgrade")
    assert result.exit_code == 2
    assert "SPENDGATE_DATABASE_URL" in result.stderr and "tiger" not in result.stderr


@pytest.mark.parametrize(
    "url", ["postgresql://scott:tiger@127.0.0.1:1/ledger", "sqlite:////proc/no-such-dir/x.db"]
)
@pytest.mark.parametrize("command", [("db", "upgrade"), ("users", "list"), ("keys", "list")])
def test_an_unreachable_database_is_one_line_without_the_password(monkeypatch, url, command):
    monkeypatch.setenv("SPENDGATE_DATABASE_URL", url)
    result = invoke(*command)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "SPENDGATE_DATABASE_URL" in result.stderr and "tiger" not in result.stderr


def read_admin_token(path):
    [token] = re.findall(r"^SPENDGATE_ADMIN_TOKEN=(\S+)$", path.read_text(encoding="utf-8"), re.M)
    return token


def test_init_writes_an_env_file_with_a_strong_admin_token(tmp_path, monkeypatch):
    out = ok("init")
    env = tmp_path / ".env"
    assert ".env" in out
    token = read_admin_token(env)
    assert len(token) >= 32 and len(set(token)) >= 16
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text(encoding="utf-8")
    assert "SPENDGATE_DATABASE_URL=" in text and "SPENDGATE_UPSTREAM_API_KEY" in text
    assert any(line.startswith("#") for line in text.splitlines())
    other = tmp_path / "other.env"
    ok("init", "--path", str(other))
    assert read_admin_token(other) != token
    monkeypatch.delenv("SPENDGATE_DATABASE_URL")
    settings = load_settings()
    assert settings.admin_token.get_secret_value() == token
    assert settings.database == "sqlite:///./data/spendgate.db"
    assert settings.upstream_api_key is None


def test_init_refuses_to_overwrite_an_existing_env_file(tmp_path):
    env = tmp_path / ".env"
    env.write_text("SPENDGATE_ADMIN_TOKEN=keep-me\n", encoding="utf-8")
    result = invoke("init")
    assert result.exit_code == 2
    assert ".env" in result.stderr and "overwrit" in result.stderr
    assert env.read_text(encoding="utf-8") == "SPENDGATE_ADMIN_TOKEN=keep-me\n"


def test_init_into_a_missing_directory_fails_with_one_line(tmp_path):
    result = invoke("init", "--path", str(tmp_path / "absent" / ".env"))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "cannot write" in result.stderr


def test_serve_after_init_asks_for_the_upstream_key(tmp_path):
    ok("init")
    environment = {name: os.environ[name] for name in ("PATH",) if name in os.environ}
    result = subprocess.run(
        [sys.executable, "-m", "spendgate", "serve", "--port", "1"],
        cwd=tmp_path,
        env=environment | {"HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip().count("\n") == 0
    assert "SPENDGATE_UPSTREAM_API_KEY" in result.stderr


def test_serve_with_several_workers_refuses_until_limits_are_shared():
    result = invoke("serve", "--workers", "2")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--workers 2" in result.stderr and "Redis" in result.stderr


def test_serve_refuses_zero_workers():
    result = invoke("serve", "--workers", "0")
    assert result.exit_code == 2
    assert "workers" in result.stderr


async def test_serve_starts_with_upstreams_that_carry_their_own_keys(tmp_path, upstream):
    """[[upstreams]] with `api_key_env` and no SPENDGATE_UPSTREAM_API_KEY: that is a key."""
    upstreams = [{"name": "main", "base_url": upstream.base_url, "api_key_env": "MAIN_KEY"}]
    env = clean_environment(
        tmp_path,
        SPENDGATE_UPSTREAMS=json.dumps(upstreams),
        SPENDGATE_PORT=str(free_port()),
        SPENDGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        MAIN_KEY="sk-main",
    )
    async with serve(tmp_path, env) as served:
        await served.wait_for_output("listening")
