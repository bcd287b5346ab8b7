"""The stacks a gateway test runs on: a ledger database and a limit backend.

`pytest.mark.matrix` on a module or test runs its `gateway` / `make_gateway` once per stack:
every one in `STACKS`, or those the marker is given (`pytest.mark.matrix(COVERING)`).
Unmarked tests run once on `DEFAULT`. Every other stack needs a server and is marked
`services`.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import pytest

Database = Literal["sqlite", "postgresql", "mysql"]
LimitBackendName = Literal["memory", "redis"]


@dataclass(frozen=True)
class Stack:
    """Where a gateway keeps its ledger and its limit counters."""

    database: Database
    limits: LimitBackendName

    @property
    def id(self) -> str:
        return f"{self.database}-{self.limits}"


DEFAULT = Stack("sqlite", "memory")
STACKS = (
    DEFAULT,
    Stack("postgresql", "memory"),
    Stack("mysql", "memory"),
    Stack("sqlite", "redis"),
    Stack("postgresql", "redis"),
    Stack("mysql", "redis"),
)
# Each database once, and each limit backend at least once.
COVERING = (DEFAULT, Stack("mysql", "memory"), Stack("postgresql", "redis"))


def stack_params(stacks: Iterable[Stack]) -> list[pytest.ParameterSet]:
    """`pytest.param`s of the stacks, the ones needing a server marked `services`."""
    return [
        pytest.param(stack, id=stack.id, marks=() if stack == DEFAULT else pytest.mark.services)
        for stack in stacks
    ]
