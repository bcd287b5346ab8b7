"""The journal file: exact round trips, claiming the files of dead processes only."""

import os
import subprocess
from datetime import UTC, datetime
from decimal import Decimal

from spendgate.ledger.events import UsageEvent
from spendgate.ledger.journal import Journal, decode, encode


def event(request_id: str, cost: Decimal | None = Decimal("0.000123456789012")) -> UsageEvent:
    return UsageEvent(
        request_id=request_id, timestamp=datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=UTC),
        user="ann", key_id=3, model="gpt-4o-mini", endpoint="chat/completions", method="POST",
        status=200, stream=True, prompt_tokens=10, completion_tokens=5, cached_tokens=2,
        reasoning_tokens=1, total_tokens=15, cost_usd=cost, latency_ms=31, estimated=True,
        end_user="bob", upstream="azure", requested_model="gpt-4o-mini", key_display="sg-ab…cd",
    )  # fmt: skip


def test_events_round_trip_exactly():
    for original in (event("a"), event("b", cost=None)):
        assert decode(encode(original)) == original


def test_append_then_claim_and_read_in_batches(tmp_path):
    journal = Journal(tmp_path)
    assert journal.append([event(f"r{i}") for i in range(5)]) == 5
    assert journal.pending == 5
    (claimed,) = journal.claim()
    assert journal.pending == 0 and not journal.path.exists()
    batches = list(Journal.batches(claimed, 2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert [e.request_id for b in batches for e in b] == [f"r{i}" for i in range(5)]
    Journal.done(claimed)
    assert list(tmp_path.iterdir()) == []


def test_a_torn_last_line_is_skipped(tmp_path):
    journal = Journal(tmp_path)
    journal.append([event("whole")])
    with journal.path.open("ab") as file:
        file.write(encode(event("torn"))[:-20])
    (claimed,) = journal.claim()
    assert [e.request_id for b in Journal.batches(claimed, 10) for e in b] == ["whole"]


def test_only_files_of_dead_processes_are_claimed(tmp_path):
    finished = subprocess.run(["true"], check=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert finished.returncode == 0
    other = Journal(tmp_path)
    lines = encode(event("x"))
    (tmp_path / f"spendgate-journal-{dead.pid}.jsonl").write_bytes(lines)
    (tmp_path / "spendgate-journal-1.jsonl").write_bytes(lines)  # pid 1 is alive
    claimed = other.claim()
    assert [p.name for p in claimed] == [
        f"spendgate-journal-{dead.pid}.jsonl.replaying-{os.getpid()}"
    ]
    assert (tmp_path / "spendgate-journal-1.jsonl").exists()
