"""The contract's limit names, what each one counts and over which window."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from spendgate.limits.backend import Unit

# name -> (what it counts, window in seconds)
LIMIT_WINDOWS: dict[str, tuple[Unit, int]] = {
    "requests_per_minute": ("requests", 60),
    "requests_per_hour": ("requests", 3600),
    "requests_per_day": ("requests", 86_400),
    "tokens_per_minute": ("tokens", 60),
    "tokens_per_hour": ("tokens", 3600),
    "tokens_per_day": ("tokens", 86_400),
}
LimitName = Literal[
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_hour",
    "tokens_per_day",
]
Count = Annotated[int, Field(ge=0, le=10**12)]


class Limits(BaseModel):
    """Request and token limits; absent means unlimited."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: Count | None = None
    requests_per_hour: Count | None = None
    requests_per_day: Count | None = None
    tokens_per_minute: Count | None = None
    tokens_per_hour: Count | None = None
    tokens_per_day: Count | None = None

    def as_dict(self) -> dict[str, int]:
        """Only the limits that are set."""
        return {name: value for name, value in self.model_dump().items() if value is not None}
