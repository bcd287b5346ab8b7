"""Exact money: USD as `Decimal` in memory, integer picodollars (10⁻¹² USD) in the ledger.

Every price any provider publishes has at most six decimals per million tokens, so a
per-token price times a token count is exact at twelve decimals: storing integers keeps
SQLite, PostgreSQL and MySQL sums exact without relying on each engine's decimal type.
"""

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal

PICO_PER_USD = 10**12
_PICO = Decimal(1).scaleb(-12)


def usd_to_pico(usd: Decimal) -> int:
    """Convert USD to integer picodollars (banker's rounding past the 12th decimal)."""
    return int(usd.quantize(_PICO, rounding=ROUND_HALF_EVEN).scaleb(12))


def usd_to_pico_ceil(usd: Decimal) -> int:
    """Convert USD to integer picodollars, rounding up (for prices used as upper bounds)."""
    return int(usd.scaleb(12).to_integral_value(rounding=ROUND_CEILING))


def pico_to_usd(pico: int) -> Decimal:
    """Convert integer picodollars to an exact USD `Decimal`."""
    return Decimal(pico).scaleb(-12).normalize() if pico else Decimal(0)


def format_usd(usd: Decimal) -> str:
    """Plain decimal text with every significant digit and no exponent ("0.000435")."""
    text = format(usd.normalize(), "f")
    return text if text != "-0" else "0"
