"""Settings: env names and aliases, file precedence, validation, and how `serve` refuses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import AliasChoices

from spendgate.config import ConfigError, Settings, load_settings


def every_env_name():
    names = {"SPENDGATE_CONFIG"}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.update(alias.choices if isinstance(alias, AliasChoices) else [])
        names.add(f"SPENDGATE_{name.upper()}")
    return sorted(name for name in names if isinstance(name, str))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No setting from the machine running the tests, and no .env files but the test's own."""
    for name in every_env_name():
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.chdir(tmp_path)


def secret(value):
    return value.get_secret_value() if value is not None else None


ENV_TABLE = [
    (
        "SPENDGATE_UPSTREAM_BASE",
        "http://up.example:9/v1/",
        "upstream_base",
        "http://up.example:9/v1",
    ),
    ("UPSTREAM_BASE", "https://proxy.example/v1", "upstream_base", "https://proxy.example/v1"),
    ("SPENDGATE_UPSTREAM_API_KEY", "sk-one", "upstream_api_key", "sk-one"),
    ("UPSTREAM_API_KEY", "sk-two", "upstream_api_key", "sk-two"),
    ("OPENAI_API_KEY", "sk-three", "upstream_api_key", "sk-three"),
    ("SPENDGATE_UPSTREAM_API_VERSION", "2024-10-21", "upstream_api_version", "2024-10-21"),
    ("UPSTREAM_API_VERSION", "2024-06-01", "upstream_api_version", "2024-06-01"),
    ("SPENDGATE_ADMIN_TOKEN", "admin-a", "admin_token", "admin-a"),
    ("ADMIN_TOKEN", "admin-b", "admin_token", "admin-b"),
    (
        "SPENDGATE_DATABASE_URL",
        "postgresql://u:p@db/ledger",
        "database",
        "postgresql://u:p@db/ledger",
    ),
    ("SPENDGATE_DATABASE_URL", "mysql://u@db/ledger", "database", "mysql://u@db/ledger"),
    ("DATABASE_PATH", "/srv/spendgate/ledger.db", "database", "sqlite:////srv/spendgate/ledger.db"),
    ("DATABASE_PATH", "ledger.db", "database", "sqlite:///ledger.db"),
    ("SPENDGATE_REDIS_URL", "redis://cache:6379/0", "redis_url", "redis://cache:6379/0"),
    ("SPENDGATE_PRICING_FILE", "prices.toml", "pricing_file", Path("prices.toml")),
    (
        "MODEL_PRICING_JSON",
        '{"my-model": {"input": 0.001, "output": 0.002}}',
        "model_pricing_json",
        '{"my-model": {"input": 0.001, "output": 0.002}}',
    ),
    ("SPENDGATE_DEFAULT_MODEL", "gpt-4o-mini", "default_model", "gpt-4o-mini"),
    ("MODEL_NAME", "gpt-4.1", "default_model", "gpt-4.1"),
    ("SPENDGATE_LOG_PATH", "logs/gw.log", "log_path", Path("logs/gw.log")),
    ("PROXY_LOG_PATH", "proxy.log", "log_path", Path("proxy.log")),
    ("SPENDGATE_PORT", "9123", "port", 9123),
    ("PORT", "8081", "port", 8081),
    ("SPENDGATE_INGEST_KEY", "ingest-a", "ingest_key", "ingest-a"),
    ("INGEST_KEY", "ingest-b", "ingest_key", "ingest-b"),
    ("SPENDGATE_SELF_SERVICE", "true", "self_service", True),
    ("SPENDGATE_SELF_SERVICE", "false", "self_service", False),
    (
        "SPENDGATE_CORS_ORIGINS",
        "https://a.example, https://b.example",
        "cors_origins",
        ["https://a.example", "https://b.example"],
    ),
    ("ALLOWED_ORIGINS", "https://c.example", "cors_origins", ["https://c.example"]),
]


def read(settings, field):
    value = getattr(settings, field)
    return secret(value) if field in ("upstream_api_key", "admin_token", "ingest_key") else value


@pytest.mark.parametrize(("env", "value", "field", "expected"), ENV_TABLE)
def test_each_env_name_and_alias_sets_its_setting(monkeypatch, env, value, field, expected):
    monkeypatch.setenv(env, value)
    assert read(load_settings(), field) == expected


@pytest.mark.parametrize(("env", "value", "field", "expected"), ENV_TABLE)
def test_each_env_name_and_alias_is_read_from_dotenv(tmp_path, env, value, field, expected):
    (tmp_path / ".env").write_text(f"{env}='{value}'\n", encoding="utf-8")
    assert read(load_settings(), field) == expected


def test_defaults_follow_the_contract():
    settings = load_settings()
    assert settings.database == "sqlite:///./data/spendgate.db"
    assert settings.port == 8000
    assert settings.upstream_base == "https://api.openai.com/v1"
    assert settings.upstream_api_key is None
    assert settings.upstream_api_version is None
    assert settings.admin_token is None
    assert settings.redis_url is None
    assert settings.pricing_file is None and settings.model_pricing_json is None
    assert settings.default_model is None
    assert settings.log_path is None
    assert settings.ingest_key is None
    assert settings.self_service is False
    assert settings.cors_origins == []


def test_the_spendgate_name_wins_over_its_alias(monkeypatch):
    monkeypatch.setenv("PORT", "1111")
    monkeypatch.setenv("SPENDGATE_PORT", "2222")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-alias")
    monkeypatch.setenv("SPENDGATE_UPSTREAM_API_KEY", "sk-primary")
    settings = load_settings()
    assert settings.port == 2222
    assert secret(settings.upstream_api_key) == "sk-primary"


def test_a_database_url_wins_over_a_database_path(monkeypatch):
    monkeypatch.setenv("DATABASE_PATH", "old.db")
    monkeypatch.setenv("SPENDGATE_DATABASE_URL", "sqlite:///new.db")
    assert load_settings().database == "sqlite:///new.db"


def test_env_wins_over_env_local_over_env_file_over_toml(monkeypatch, tmp_path):
    toml = tmp_path / "spendgate.toml"
    toml.write_text(
        'port = 1111\ndefault_model = "toml-model"\nadmin_token = "toml-token"\n'
        'redis_url = "redis://toml:6379/0"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SPENDGATE_CONFIG", str(toml))
    settings = load_settings()
    assert (settings.port, settings.default_model) == (1111, "toml-model")
    assert secret(settings.admin_token) == "toml-token"

    (tmp_path / ".env").write_text(
        "PORT=2222\nSPENDGATE_DEFAULT_MODEL=dotenv-model\nSPENDGATE_ADMIN_TOKEN=dotenv-token\n",
        encoding="utf-8",
    )
    settings = load_settings()
    assert (settings.port, settings.default_model) == (2222, "dotenv-model")
    assert secret(settings.admin_token) == "dotenv-token"

    (tmp_path / ".env.local").write_text(
        "SPENDGATE_PORT=3333\nMODEL_NAME=local-model\n", encoding="utf-8"
    )
    settings = load_settings()
    assert (settings.port, settings.default_model) == (3333, "local-model")
    assert secret(settings.admin_token) == "dotenv-token"

    monkeypatch.setenv("PORT", "4444")
    settings = load_settings()
    assert (settings.port, settings.default_model) == (4444, "local-model")
    assert secret(settings.admin_token) == "dotenv-token"
    assert settings.redis_url == "redis://toml:6379/0"


def test_env_local_wins_over_env_whichever_name_each_uses(tmp_path):
    (tmp_path / ".env").write_text(
        "SPENDGATE_DEFAULT_MODEL=from-env\nSPENDGATE_UPSTREAM_API_KEY=sk-env\n", encoding="utf-8"
    )
    (tmp_path / ".env.local").write_text(
        "MODEL_NAME=from-local\nOPENAI_API_KEY=sk-local\n", encoding="utf-8"
    )
    settings = load_settings()
    assert settings.default_model == "from-local"
    assert secret(settings.upstream_api_key) == "sk-local"


def test_an_empty_value_means_unset(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(
        "SPENDGATE_UPSTREAM_API_KEY=\nSPENDGATE_ADMIN_TOKEN=\nSPENDGATE_PORT=\n", encoding="utf-8"
    )
    settings = load_settings()
    assert settings.upstream_api_key is None
    assert settings.admin_token is None
    assert settings.port == 8000
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert secret(load_settings().upstream_api_key) == "sk-from-env"


def test_toml_file_sets_settings_by_field_name(monkeypatch, tmp_path):
    toml = tmp_path / "conf.toml"
    toml.write_text(
        'upstream_base = "https://llm.internal/v1"\nself_service = true\n'
        'cors_origins = ["https://x.example"]\ndatabase_url = "sqlite:///toml.db"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("SPENDGATE_CONFIG", str(toml))
    settings = load_settings()
    assert settings.upstream_base == "https://llm.internal/v1"
    assert settings.self_service is True
    assert settings.cors_origins == ["https://x.example"]
    assert settings.database == "sqlite:///toml.db"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("port = 8000\nprot = 8001\n", "prot"),
        ("[server]\nport = 1\n", "server"),
        ("port = \n", "SPENDGATE_CONFIG"),
        ("port = -1\n", "SPENDGATE_PORT"),
        ('database_url = "oracle://scott:tiger@db"\n', "SPENDGATE_DATABASE_URL"),
    ],
    ids=["unknown-key", "unknown-table", "syntax", "bad-value", "bad-scheme"],
)
def test_a_bad_toml_file_is_a_config_error(monkeypatch, tmp_path, text, named):
    toml = tmp_path / "bad.toml"
    toml.write_text(text, encoding="utf-8")
    monkeypatch.setenv("SPENDGATE_CONFIG", str(toml))
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert named in message and "\n" not in message
    assert "tiger" not in message


def test_a_missing_toml_file_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SPENDGATE_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="SPENDGATE_CONFIG"):
        load_settings()


BAD_VALUES = [
    ("SPENDGATE_DATABASE_URL", "mongodb://admin:hunter2@db/ledger", "SPENDGATE_DATABASE_URL"),
    ("SPENDGATE_DATABASE_URL", "sqlite+pysqlite:///x.db", "SPENDGATE_DATABASE_URL"),
    ("SPENDGATE_DATABASE_URL", "ledger.db", "SPENDGATE_DATABASE_URL"),
    ("MODEL_PRICING_JSON", '{"gpt-4o": {"input": 0.1,', "MODEL_PRICING_JSON"),
    ("MODEL_PRICING_JSON", "[1, 2]", "MODEL_PRICING_JSON"),
    ("SPENDGATE_PORT", "-1", "SPENDGATE_PORT"),
    ("PORT", "-80", "SPENDGATE_PORT"),
    ("SPENDGATE_PORT", "eighty", "SPENDGATE_PORT"),
    ("PORT", "70000", "SPENDGATE_PORT"),
    ("SPENDGATE_UPSTREAM_BASE", "api.openai.com/v1", "SPENDGATE_UPSTREAM_BASE"),
    ("SPENDGATE_SELF_SERVICE", "perhaps", "SPENDGATE_SELF_SERVICE"),
    ("SPENDGATE_ON_DISCONNECT", "ignore", "SPENDGATE_ON_DISCONNECT"),
    ("SPENDGATE_MAX_BODY_BYTES", "0", "SPENDGATE_MAX_BODY_BYTES"),
]


@pytest.mark.parametrize(("env", "value", "named"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_setting(monkeypatch, env, value, named):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert named in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_a_bad_value_in_dotenv_names_the_setting(tmp_path):
    (tmp_path / ".env").write_text("SPENDGATE_PORT=-5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="SPENDGATE_PORT"):
        load_settings()


# `spendgate serve` refusing to start


def run_spendgate(tmp_path, *args, **env):
    """`python -m spendgate ARGS` in `tmp_path` with nothing but `env` configured."""
    clean = {name: value for name, value in os.environ.items() if name in ("PATH", "LANG")}
    clean |= {"HOME": str(tmp_path), "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path}/l.db"}
    clean |= env
    return subprocess.run(
        [sys.executable, "-m", "spendgate", *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SPENDGATE_PORT": "-1"}, "SPENDGATE_PORT"),
        ({"PORT": "http"}, "SPENDGATE_PORT"),
        (
            {"MODEL_PRICING_JSON": '{"gpt-4o": {"input": 0.1, "output": oops}}'},
            "MODEL_PRICING_JSON",
        ),
        ({"SPENDGATE_DATABASE_URL": "mongodb://u:hunter2@db/x"}, "SPENDGATE_DATABASE_URL"),
        ({"SPENDGATE_DATABASE_URL": "postgresql+psycopg://u@db/x"}, "SPENDGATE_DATABASE_URL"),
        ({"SPENDGATE_PRICING_FILE": "/nonexistent/prices.json"}, "SPENDGATE_PRICING_FILE"),
        ({"SPENDGATE_LOG_PATH": "/nonexistent/dir/spendgate.log"}, "SPENDGATE_LOG_PATH"),
        ({"SPENDGATE_CONFIG": "/nonexistent/spendgate.toml"}, "SPENDGATE_CONFIG"),
    ],
    ids=[
        "negative-port",
        "non-numeric-port",
        "malformed-pricing-json",
        "unknown-db-scheme",
        "unknown-db-driver",
        "missing-pricing-file",
        "unwritable-log",
        "missing-config-file",
    ],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line(tmp_path, env, named):
    result = run_spendgate(
        tmp_path, "serve", "--port", "1", SPENDGATE_UPSTREAM_API_KEY="sk-test", **env
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert named in lines[0]
    assert "hunter2" not in lines[0]
    assert "Traceback" not in result.stderr


def test_serve_without_an_upstream_key_exits_2_saying_so(tmp_path):
    result = run_spendgate(tmp_path, "serve", "--port", "1")
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "SPENDGATE_UPSTREAM_API_KEY" in lines[0]
    assert "upstream key" in lines[0]
