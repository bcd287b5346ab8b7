"""A TCP proxy that a test can cut and restore: a database or Redis going away for real.

`cut()` closes every open connection and refuses new ones (the client sees connection resets
and refusals, as when a server dies); `restore()` accepts again. `lose_next_reply()` lets
the next request through and cuts when its reply comes back: the server did the work, the
client never hears of it. Everything runs on the test's event loop over loopback sockets.
"""

import asyncio
import contextlib


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to `target_host:target_port` until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_off = False
        self.frozen = False
        self.losing_reply = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def cut(self) -> None:
        """Drop every connection now and refuse new ones until `restore()`."""
        self._sever()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    def restore(self) -> None:
        self.cut_off = False
        self.frozen = False
        self.losing_reply = False

    def lose_next_reply(self) -> None:
        """Swallow the next bytes the server sends and cut there (until `restore()`)."""
        self.losing_reply = True

    def _sever(self) -> None:
        self.cut_off = True
        for writer in list(self._writers):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer, replies=True)),
        ]
        self._tasks.update(pipes)
        try:
            # one side closing closes the other (a client waiting for the server's close
            # after its Terminate message would otherwise wait for ever)
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            self._tasks.difference_update(pipes)
            self._writers -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    def freeze(self) -> None:
        """Keep every connection open but pass nothing more: a server that hangs, or a
        network that drops packets without a reset (until `restore()`)."""
        self.frozen = True

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool = False
    ) -> None:
        while data := await reader.read(65536):
            if self.frozen:
                continue  # swallowed
            if replies and self.losing_reply:
                self._sever()  # the reply is dropped with the connection
                return
            writer.write(data)
            await writer.drain()
