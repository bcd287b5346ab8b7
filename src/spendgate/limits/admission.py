"""The admission step of the hot path, as one small interface.

`admit` runs before the upstream call and may refuse (402/403/429) or hold a reservation;
`settle` replaces the reservation with the real cost once the request ended; `release`
gives it back when the request never reached a billable end. Backends: in process now,
Redis for several instances. The gateway's implementation is `limits.policy.LimitPolicy`.
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from spendgate.keys.principals import Principal
from spendgate.metering.usage import Usage
from spendgate.proxy.rewrite import PreparedRequest


@dataclass(slots=True)
class Admitted:
    """What admission granted one request: headers to add and what to settle later."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reserved_pico: int = 0  # the worst-case cost held against budgets and credits
    token: object = None


class Admission(Protocol):
    """Checks and reservations for one request."""

    async def admit(self, principal: Principal, request: PreparedRequest) -> Admitted:
        """Admit the request or raise a `GatewayError` (402, 403 or 429)."""
        ...

    async def settle(
        self,
        principal: Principal,
        admitted: Admitted,
        usage: Usage,
        cost: Decimal | None,
        at: datetime | None = None,
    ) -> None:
        """Charge the real usage and cost in place of the reservation.

        `at` is the timestamp of the request's ledger row (None: now): the counters count
        the cost only if they were counting by then (the ledger's baseline has the rest).
        """
        ...

    async def release(self, principal: Principal, admitted: Admitted) -> None:
        """Give back the reservation of a request that was not charged."""
        ...
