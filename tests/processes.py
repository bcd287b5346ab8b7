"""Real `spendgate serve` processes for tests: a clean environment, a free port, the output."""

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import AliasChoices

from spendgate.config import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any spendgate setting, plus `settings`."""
    names = {"SPENDGATE_CONFIG"}
    for info in Settings.model_fields.values():
        alias = info.validation_alias
        names |= {str(name) for name in alias.choices} if isinstance(alias, AliasChoices) else set()
    kept = {name: value for name, value in os.environ.items() if name.upper() not in names}
    return kept | {"HOME": str(tmp_path)} | settings


def child_pids(pid: int) -> set[int]:
    """The live (not yet reaped) processes whose parent is `pid`, read from /proc."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.add(int(stat.parent.name))
    return children


@dataclass
class Served:
    """A running `spendgate serve` process and everything it has printed so far."""

    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)

    def printed(self) -> str:
        return "".join(self.output)

    async def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.printed():
            assert self.process.returncode is None, f"exited early:\n{self.printed()}"
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s:\n{self.printed()}"
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, env: dict[str, str], *args: str) -> AsyncIterator[Served]:
    """Run `spendgate serve *args`; killed (with its workers) if still running at the end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "spendgate", "serve", *args, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    served = Served(process)

    async def collect() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            served.output.append(line.decode(errors="replace"))

    reader = asyncio.create_task(collect())
    try:
        yield served
    finally:
        if process.returncode is None:
            for pid in child_pids(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.kill()
            await process.wait()
        await asyncio.wait_for(reader, 30)
