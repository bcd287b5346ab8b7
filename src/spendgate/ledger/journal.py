"""The journal: usage events the database could not take yet, kept in a local file.

When the write queue is full (the database is down or slow for long) the ledger writer
appends further events here instead of dropping them, and at shutdown it spills what it
could not write in time. Each process writes its own file, `<stem>-<pid>.jsonl`, one JSON
object per line. Once writes succeed, the writer replays its file; at start-up it also
claims and replays the files of processes that are gone (renamed first, so two starting
processes never replay the same file). Replays are safe to repeat: the ledger skips
request ids it already has.
"""

import contextlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import orjson

from spendgate.ledger.events import UsageEvent

_CLAIMED = ".replaying-"


def encode(event: UsageEvent) -> bytes:
    """One event as a JSON line (the cost as exact text)."""
    return orjson.dumps(event, default=_exact, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> UsageEvent:
    """The event of one journal line."""
    fields = orjson.loads(line)
    fields["timestamp"] = datetime.fromisoformat(fields["timestamp"])
    cost = fields.get("cost_usd")
    fields["cost_usd"] = None if cost is None else Decimal(cost)
    return UsageEvent(**fields)


def _exact(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


class Journal:
    """This process's journal file and the left-overs of processes that are gone."""

    def __init__(self, directory: Path, stem: str = "spendgate-journal") -> None:
        self.directory = directory
        self._stem = stem
        self.path = directory / f"{stem}-{os.getpid()}.jsonl"
        self.pending = 0  # events in this process's file

    def append(self, events: Iterable[UsageEvent]) -> int:
        """Append events (flushed to the OS before returning); how many were written."""
        lines = [encode(event) for event in events]
        if not lines:
            return 0
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as file:
            file.write(b"".join(lines))
        self.pending += len(lines)
        return len(lines)

    def claim(self) -> list[Path]:
        """This process's file and those of dead processes, renamed to be replayed here."""
        claimed = []
        for path in sorted(self.directory.glob(f"{self._stem}-*.jsonl*")):
            if _CLAIMED in path.name:
                owner = _pid(path.name.rsplit(_CLAIMED, 1)[1])
            else:
                owner = _pid(path.name.removeprefix(f"{self._stem}-").removesuffix(".jsonl"))
            if owner is None or (owner != os.getpid() and _alive(owner)):
                continue
            target = path.with_name(f"{path.name.split(_CLAIMED)[0]}{_CLAIMED}{os.getpid()}")
            try:
                path.rename(target)
            except FileNotFoundError:  # another process claimed it first
                continue
            claimed.append(target)
            if path == self.path:
                self.pending = 0
        return claimed

    @staticmethod
    def batches(path: Path, size: int) -> Iterator[list[UsageEvent]]:
        """The events of a claimed file, `size` at a time (a torn last line is skipped)."""
        batch: list[UsageEvent] = []
        with path.open("rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    break  # the process died mid-write: that event never got its newline
                batch.append(decode(line))
                if len(batch) >= size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    @staticmethod
    def done(path: Path) -> None:
        """A claimed file has been written to the ledger."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _pid(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
