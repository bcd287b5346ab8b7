"""The console's charts: Plotly figures built here, sent as JSON, drawn by console.js.

Money on axes and in hovers is USD; hovers show the exact amount (the ledger's digits),
axes a rounded scale. Figures carry their own small template instead of Plotly's default
one, which would add kilobytes to every page. Charts of many users show the largest ones
and sum the rest as "(others)"; the tables under each chart have every row.
"""

import importlib
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from spendgate.web.formats import usd

MAX_USERS_BAR = 25
MAX_USERS_STACKED = 10
OTHERS = "(others)"
COLORWAY = (
    "#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6",
    "#06b6d4", "#ec4899", "#84cc16", "#f97316", "#64748b", "#94a3b8",
)  # fmt: skip
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
USD_AXIS: dict[str, Any] = {"tickprefix": "$", "tickformat": ",.6~f", "rangemode": "tozero"}
TOKENS_AXIS: dict[str, Any] = {"tickformat": "~s", "rangemode": "tozero"}
# A second y axis gets ticks of its own (Plotly would sync them to the first's grid lines,
# which puts ticks at odd values like $0.203007).
SECOND_AXIS: dict[str, Any] = {
    "overlaying": "y",
    "side": "right",
    "showgrid": False,
    "tickmode": "auto",
}
DAY_MS = 86_400_000
BAR_WIDTH_MS = DAY_MS * 0.8  # a day's bar, with a gap to the next
DAILY_TICKS_UP_TO = 14  # days: up to this span every day gets its tick


def _plotly() -> Any:
    """`plotly.graph_objects`, imported with the first chart drawn: with what it pulls in
    (narwhals) it is ~19 MB of memory that a gateway nobody opens the console of never
    carries."""
    return importlib.import_module("plotly.graph_objects")


def _figure(traces: Sequence[Any], empty: bool, **layout: Any) -> str:
    go = _plotly()
    template = go.layout.Template(
        layout={
            "font": {"family": FONT, "size": 13, "color": "#1f2937"},
            "colorway": list(COLORWAY),
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "rgba(0,0,0,0)",
            "xaxis": {"gridcolor": "#e5e7eb", "zerolinecolor": "#d1d5db", "automargin": True},
            "yaxis": {"gridcolor": "#e5e7eb", "zerolinecolor": "#d1d5db", "automargin": True},
            "hoverlabel": {"font": {"family": FONT}},
        }
    )
    figure = go.Figure(
        data=list(traces),
        layout=go.Layout(
            template=template,
            height=layout.pop("height", 360),
            margin={"l": 16, "r": 16, "t": 48, "b": 16},
            legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
            showlegend=True,
            **layout,
        ),
    )
    if empty:
        figure.add_annotation(
            text="No usage in this range", showarrow=False, xref="paper", yref="paper",
            x=0.5, y=0.5, font={"size": 15, "color": "#6b7280"},
        )  # fmt: skip
    text: str = figure.to_json()
    return text


def _day_axis(start: str, end: str) -> dict[str, Any]:
    """A UTC date axis over the whole range `start`..`end`, days without usage too.

    Bars sit at noon (`_noon`) and labels mid-day (`ticklabelmode: period`), so each bar
    stands over its day's label.
    """
    axis: dict[str, Any] = {
        "title": {"text": "Day (UTC)"},
        "type": "date",
        "tickformat": "%b %d",
        "ticklabelmode": "period",
        "range": [f"{start} 00:00:00", f"{end} 23:59:59.999"],
    }
    if (date.fromisoformat(end) - date.fromisoformat(start)).days < DAILY_TICKS_UP_TO:
        axis |= {"dtick": DAY_MS, "tick0": f"{start} 00:00:00"}
    return axis


def _noon(days: Sequence[str]) -> list[str]:
    return [f"{day} 12:00" for day in days]


def _money(values: Sequence[Decimal]) -> tuple[list[float], list[str]]:
    """Values for the axis (floats: a chart is a picture) and the exact hover texts."""
    return [float(value) for value in values], [usd(value) for value in values]


def _top_users(rows: Sequence[dict[str, Any]], limit: int) -> tuple[list[str], bool]:
    """The `limit` users of largest cost (all if there are no more), and whether any are left."""
    totals: dict[str, Decimal] = {}
    for row in rows:
        totals[row["user"]] = totals.get(row["user"], Decimal(0)) + row["cost_usd"]
    ranked = sorted(totals, key=lambda user: (-totals[user], user))
    if len(ranked) <= limit:
        return ranked, False
    return ranked[: limit - 1], True


def cost_by_user(by_user: Sequence[dict[str, Any]]) -> str:
    """Horizontal bars: cost per user, the largest on top."""
    go = _plotly()
    cost_of: dict[str, Decimal] = {row["user"]: row["cost_usd"] for row in by_user}
    top, others = _top_users(by_user, MAX_USERS_BAR)
    names, costs = list(top), [cost_of[user] for user in top]
    if others:
        shown = set(top)
        names.append(OTHERS)
        costs.append(sum((cost for user, cost in cost_of.items() if user not in shown), Decimal(0)))
    axis, exact = _money(costs)
    bar = go.Bar(
        x=axis, y=names, orientation="h", name="Cost (USD)", customdata=exact,
        hovertemplate="%{y}: %{customdata}<extra></extra>",
    )  # fmt: skip
    return _figure(
        [bar],
        not by_user,
        height=max(240, 90 + 28 * len(names)),
        xaxis={"title": {"text": "Cost (USD)"}, **USD_AXIS},
        yaxis={"title": {"text": "User"}, "autorange": "reversed", "type": "category"},
    )


def daily_cost(daily: Sequence[dict[str, Any]], start: str, end: str) -> str:
    """Bars of each day's cost with the cumulative cost as a line on a second axis."""
    go = _plotly()
    days = _noon([row["day"] for row in daily])
    cost, cost_text = _money([row["cost_usd"] for row in daily])
    cumulative, cumulative_text = _money([row["cumulative_cost_usd"] for row in daily])
    bars = go.Bar(
        x=days, y=cost, width=BAR_WIDTH_MS, name="Daily cost (USD)", customdata=cost_text,
        hovertemplate="%{x|%Y-%m-%d}: %{customdata}<extra>Daily cost</extra>",
    )  # fmt: skip
    line = go.Scatter(
        x=days, y=cumulative, name="Cumulative cost (USD)", yaxis="y2", mode="lines+markers",
        customdata=cumulative_text,
        hovertemplate="%{x|%Y-%m-%d}: %{customdata}<extra>Cumulative</extra>",
    )  # fmt: skip
    return _figure(
        [bars, line],
        not daily,
        xaxis=_day_axis(start, end),
        yaxis={"title": {"text": "Daily cost (USD)"}, **USD_AXIS},
        yaxis2={"title": {"text": "Cumulative cost (USD)"}, **SECOND_AXIS, **USD_AXIS},
    )


def daily_by_user(rows: Sequence[dict[str, Any]], start: str, end: str) -> str:
    """Stacked bars: each day's cost split by user (the largest users, then the rest)."""
    go = _plotly()
    top, _ = _top_users(rows, MAX_USERS_STACKED)
    series: dict[str, dict[str, Decimal]] = {user: {} for user in top}
    for row in rows:
        name = row["user"] if row["user"] in series else OTHERS
        per_day = series.setdefault(name, {})
        per_day[row["day"]] = per_day.get(row["day"], Decimal(0)) + row["cost_usd"]
    traces = []
    for name, per_day in series.items():
        axis, exact = _money(list(per_day.values()))
        bars = go.Bar(
            x=_noon(list(per_day)), y=axis, width=BAR_WIDTH_MS, name=name, customdata=exact,
            hovertemplate="%{x|%Y-%m-%d}: %{customdata}<extra>%{fullData.name}</extra>",
        )  # fmt: skip
        traces.append(bars)
    return _figure(
        traces,
        not rows,
        barmode="stack",
        xaxis=_day_axis(start, end),
        yaxis={"title": {"text": "Cost (USD)"}, **USD_AXIS},
    )


def by_model(models: Sequence[dict[str, Any]]) -> str:
    """Grouped bars per model: cost (USD, left axis) and total tokens (right axis)."""
    go = _plotly()
    names = [row["model"] for row in models]
    cost, cost_text = _money([row["cost_usd"] for row in models])
    tokens = [row["total_tokens"] for row in models]
    cost_bars = go.Bar(
        x=names, y=cost, name="Cost (USD)", offsetgroup="cost", customdata=cost_text,
        hovertemplate="%{x}: %{customdata}<extra>Cost</extra>",
    )  # fmt: skip
    token_bars = go.Bar(
        x=names, y=tokens, name="Total tokens", offsetgroup="tokens", yaxis="y2",
        hovertemplate="%{x}: %{y:,} tokens<extra>Tokens</extra>",
    )  # fmt: skip
    return _figure(
        [cost_bars, token_bars],
        not models,
        barmode="group",
        xaxis={"title": {"text": "Model"}, "type": "category"},
        yaxis={"title": {"text": "Cost (USD)"}, **USD_AXIS},
        yaxis2={"title": {"text": "Total tokens"}, **SECOND_AXIS, **TOKENS_AXIS},
    )


def my_daily(groups: Sequence[dict[str, Any]], start: str, end: str) -> str:
    """Bars of one user's cost per day."""
    go = _plotly()
    cost, cost_text = _money([group["cost_usd"] for group in groups])
    bars = go.Bar(
        x=_noon([group["day"] for group in groups]), y=cost, width=BAR_WIDTH_MS,
        name="Cost (USD)", customdata=cost_text,
        hovertemplate="%{x|%Y-%m-%d}: %{customdata}<extra></extra>",
    )  # fmt: skip
    return _figure(
        [bars],
        not groups,
        height=300,
        xaxis=_day_axis(start, end),
        yaxis={"title": {"text": "Cost (USD)"}, **USD_AXIS},
    )
