"""`spendgate usage`: reading the ledger's rollups and printing them."""

import csv
import sys
from typing import Any

import typer
from rich.table import Table

from spendgate.api.usage_query import check_group_by, usage_filter
from spendgate.config import Settings
from spendgate.errors import InvalidRequest
from spendgate.exact_json import dumps_exact
from spendgate.money import format_usd

_COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens",
            "reasoning_tokens", "total_tokens", "cost_usd")  # fmt: skip


def print_usage(
    settings: Settings,
    start: str | None,
    end: str | None,
    user: str | None,
    model: str | None,
    group_by: str,
    output: str,
) -> None:
    """Print usage as a Rich table, CSV or JSON."""
    from spendgate.cli import run_async, table_console, with_store
    from spendgate.ledger.reports import usage_report

    if output not in ("table", "csv", "json"):
        raise ValueError("--format must be table, csv or json")
    try:
        grouping = check_group_by(group_by)
        flt = usage_filter(start, end, user=user, model=model)
    except InvalidRequest as exc:
        raise ValueError(exc.message) from None

    async def action(store: Any) -> dict[str, Any]:
        return await usage_report(store.engine, flt, grouping)

    report = run_async(lambda: with_store(settings, action))
    field = "key" if grouping == "key" else grouping
    if output == "json":
        typer.echo(dumps_exact(report).decode())
    elif output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow([field or "group", *_COLUMNS])
        for group in report["groups"]:
            writer.writerow([group.get(field or "", ""), *(_cell(group[c]) for c in _COLUMNS)])
        writer.writerow(["TOTAL", *(_cell(report["totals"][c]) for c in _COLUMNS)])
    else:
        table = Table(title=f"usage {report['start']} … {report['end']} (UTC)")
        table.add_column(field or "")
        for column in _COLUMNS:
            table.add_column(column.replace("_", " "), justify="right")
        for group in report["groups"]:
            table.add_row(str(group.get(field or "", "")), *(_cell(group[c]) for c in _COLUMNS))
        table.add_row("[bold]total[/bold]", *(_cell(report["totals"][c]) for c in _COLUMNS))
        table_console().print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return format_usd(value)
