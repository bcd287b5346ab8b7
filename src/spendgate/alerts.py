"""Budget and credit alerts: a background check that records crossings and posts webhooks.

Every `alert_check_seconds` the monitor reads, off the request path, what `/me` and
`/admin/users` show: each budgeted user's and key's spend this period and each credit
account's balance. A crossing of 80% or 100% of a budget, or of the low or zero balance,
is recorded once per subject, threshold and period (the ledger's unique key decides among
instances) and then posted as JSON to `alert_webhook_url`, retried with backoff on later
ticks up to `MAX_ATTEMPTS` times. Without a URL alerts are recorded and shown, not sent.
"""

import asyncio
import contextlib
import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp

from spendgate.exact_json import dumps_exact
from spendgate.ledger.alerts import AlertRecord, AlertStore, Crossing
from spendgate.ledger.store import Store
from spendgate.limits.policy import BudgetView, LimitPolicy, key_scope, user_scope
from spendgate.money import pico_to_usd, usd_to_pico
from spendgate.periods import period_start
from spendgate.tasks import cancel_and_wait

log = logging.getLogger("spendgate.alerts")

BUDGET_THRESHOLDS = (("budget_80", Decimal("0.8")), ("budget_100", Decimal(1)))
MAX_ATTEMPTS = 10
MAX_BACKOFF = timedelta(minutes=15)
SEND_TIMEOUT_SECONDS = 10.0


def budget_period_key(period: str, today: date) -> str:
    """The period a budget's alerts belong to: `monthly:2026-11-01` (the period's first day)."""
    return f"{period}:{period_start(period, today).isoformat()}"


def budget_crossings(
    kind: str, subject_id: int, user: str, key_display: str | None, view: BudgetView | None,
    today: date,
) -> list[Crossing]:  # fmt: skip
    """The budget thresholds the spend in `view` has reached (none for a zero budget)."""
    if view is None or view.usd <= 0 or view.spent_usd <= 0:
        return []
    start = period_start(view.period, today)
    return [
        Crossing(
            subject_kind=kind,
            subject_id=subject_id,
            user_name=user,
            key_display=key_display,
            threshold=threshold,
            period=view.period,
            period_start=start,
            period_key=budget_period_key(view.period, today),
            budget_pico=usd_to_pico(view.usd),
            spend_pico=usd_to_pico(view.spent_usd),
        )
        for threshold, fraction in BUDGET_THRESHOLDS
        if view.spent_usd >= view.usd * fraction
    ]


def balance_crossings(
    user_id: int, user: str, credit_usd: Decimal, balance_usd: Decimal, low_usd: Decimal
) -> list[Crossing]:
    """The balance thresholds reached; they count again after the credit total changes."""
    reached = []
    if balance_usd < low_usd:
        reached.append("balance_low")
    if balance_usd <= 0:
        reached.append("balance_zero")
    return [
        Crossing(
            subject_kind="user",
            subject_id=user_id,
            user_name=user,
            key_display=None,
            threshold=threshold,
            period=None,
            period_start=None,
            period_key=f"credits:{usd_to_pico(credit_usd)}",
            balance_pico=usd_to_pico(balance_usd),
        )
        for threshold in reached
    ]


def alert_json(alert: AlertRecord) -> dict[str, Any]:
    """The webhook body and the admin API's view of one alert."""
    crossing = alert.crossing
    subject: dict[str, Any] = {"kind": crossing.subject_kind, "user": crossing.user_name}
    if crossing.subject_kind == "key":
        subject |= {"key_id": crossing.subject_id, "key": crossing.key_display}
    return {
        "id": alert.id,
        "alert": crossing.threshold,
        "subject": subject,
        "budget_usd": _usd(crossing.budget_pico),
        "spend_usd": _usd(crossing.spend_pico),
        "balance_usd": _usd(crossing.balance_pico),
        "period": crossing.period,
        "period_start": crossing.period_start,
        "at": alert.created_at,
    }


def delivery_json(alert: AlertRecord) -> dict[str, Any]:
    """`alert_json` with the delivery state (for /admin/alerts and the monitor)."""
    return alert_json(alert) | {
        "delivered_at": alert.delivered_at,
        "attempts": alert.attempts,
        "last_error": alert.last_error,
    }


def _usd(pico: int | None) -> Decimal | None:
    return None if pico is None else pico_to_usd(pico)


class AlertMonitor:
    """Checks budgets and balances every interval; records and posts what crossed."""

    def __init__(
        self,
        store: Store,
        policy: LimitPolicy,
        alerts: AlertStore,
        *,
        webhook_url: str | None,
        interval: float,
        low_balance_usd: Decimal,
    ) -> None:
        self.alerts = alerts
        self._store = store
        self._policy = policy
        self._url = webhook_url
        self._interval = interval
        self._low = low_balance_usd
        # the crossings of the last pass, known to be recorded (by this or another instance)
        self.known: set[tuple[str, int, str, str]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.passes = 0  # checks completed (tests wait on it instead of sleeping)

    async def start(self) -> None:
        """Open the webhook client (if a URL is set) and start the periodic check."""
        if self._url is not None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_SECONDS),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        self._task = asyncio.create_task(self._run(), name="spendgate-alerts")

    async def stop(self) -> None:
        """Let a running pass finish (cancelled after the send timeout), close the client."""
        self._stopping.set()
        if self._task is not None:
            # a pass cut short mid-statement would leave its connection to the engine's dispose
            done, _ = await asyncio.wait({self._task}, timeout=SEND_TIMEOUT_SECONDS)
            if not done:
                await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def check(self) -> None:
        """One pass: record new crossings, then send every delivery that is due."""
        crossings = await self.crossings()
        now = self._policy.now()
        send_at = now if self._url is not None else None
        seen = set()
        for crossing in crossings:
            identity = crossing.identity
            if identity not in self.known:
                await self.alerts.record(crossing, now, send_at=send_at)
            seen.add(identity)
        self.known = seen  # only this pass's crossings: older periods are not met again
        if self._session is not None:
            await self._deliver_due()
        self.passes += 1

    async def crossings(self) -> list[Crossing]:
        """Every threshold users and keys have reached now, read as /me reads them."""
        policy = self._policy
        now = policy.now()
        today = now.date()
        found: list[Crossing] = []
        for user in await self._store.list_users():
            if user.disabled:
                continue
            view = await policy.budget_view(
                user_scope(user.name), user.budget_usd, user.budget_period
            )
            found += budget_crossings("user", user.id, user.name, None, view, today)
            balance = await policy.balance(user)
            if user.credit_usd is not None and balance is not None:
                found += balance_crossings(user.id, user.name, user.credit_usd, balance, self._low)
        for key in await self._store.list_keys():
            if key.budget_usd is None or key.revoked_at is not None:
                continue
            if key.expires_at is not None and key.expires_at <= now:
                continue
            view = await policy.budget_view(
                key_scope(key.id, key.user), key.budget_usd, key.budget_period
            )
            found += budget_crossings("key", key.id, key.user, key.display, view, today)
        return found

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.check()
            except Exception:  # the loop's edge: a failed pass is logged, the next one runs
                log.exception("alert check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def _deliver_due(self) -> None:
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=SEND_TIMEOUT_SECONDS + self._interval)
        due = await self.alerts.claim_due(now, max_attempts=MAX_ATTEMPTS, lease_until=lease)
        for alert in due:
            error = await self._post(alert)
            if error is None:
                await self.alerts.delivered(alert.id, datetime.now(UTC))
                continue
            retry_at = None
            if alert.attempts < MAX_ATTEMPTS:
                backoff = timedelta(seconds=self._interval * 2 ** (alert.attempts - 1))
                retry_at = datetime.now(UTC) + min(backoff, MAX_BACKOFF)
            await self.alerts.failed(alert.id, error, retry_at)
            log.warning("alert %s: webhook attempt %d failed: %s", alert.id, alert.attempts, error)

    async def _post(self, alert: AlertRecord) -> str | None:
        """Send one alert; None on a 2xx answer, else what went wrong (never the URL)."""
        assert self._session is not None and self._url is not None
        body = dumps_exact(alert_json(alert))
        headers = {"Content-Type": "application/json"}
        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except TimeoutError:
            return "timed out"
        except aiohttp.ClientError as exc:
            # the exception's text may carry the URL, which may carry a token: name the kind
            return f"connection failed ({type(exc).__name__})"
