"""spendgate: a self-hosted, OpenAI-compatible LLM gateway with an exact usage ledger."""

__version__ = "0.1.0"
