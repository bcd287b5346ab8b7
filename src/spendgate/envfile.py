"""`spendgate init`: a commented .env for a new install."""

import secrets
from pathlib import Path

_TEMPLATE = """\
# spendgate settings (see README, "Configuration"). Environment variables win over this file.

# The provider spendgate forwards to, and the organisation's shared key for it.
SPENDGATE_UPSTREAM_BASE=https://api.openai.com/v1
SPENDGATE_UPSTREAM_API_KEY=

# Admin token for the admin API and CLI-less administration. Keep it secret.
SPENDGATE_ADMIN_TOKEN={admin_token}

# The ledger. SQLite by default; PostgreSQL or MySQL for several instances.
SPENDGATE_DATABASE_URL=sqlite:///./data/spendgate.db

# Listen address and port.
# SPENDGATE_HOST=127.0.0.1
# SPENDGATE_PORT=8000

# Model used when a request names none.
# SPENDGATE_DEFAULT_MODEL=gpt-4o-mini

# Price overrides (USD per 1M tokens in the file, per 1K inline).
# SPENDGATE_PRICING_FILE=./prices.toml
# MODEL_PRICING_JSON={{"my-model": {{"input": 0.001, "output": 0.002}}}}
"""


def write_env_file(path: Path) -> None:
    """Write the template with a fresh strong admin token; the caller checks it is absent."""
    token = "sga-" + secrets.token_urlsafe(32)
    with path.open("x", encoding="utf-8") as handle:
        handle.write(_TEMPLATE.format(admin_token=token))
    path.chmod(0o600)
