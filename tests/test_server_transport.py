"""`CoalescingTransport`: the writes of one event-loop turn reach the socket as one call."""

import asyncio

from spendgate.server_transport import CoalescingTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.closed = False

    def write(self, data):
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data):
        self.calls.append(("writelines", [bytes(d) for d in list_of_data]))

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def get_write_buffer_size(self):
        return 0


async def turn():
    await asyncio.sleep(0)  # let the callbacks scheduled in this turn run


async def test_head_and_body_written_in_one_turn_go_out_in_one_call():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")  # empty writes are no-ops
    transport.write(b'{"ok":true}')
    assert inner.calls == []
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n") + 11
    await turn()
    assert inner.calls == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b'{"ok":true}'])]


async def test_writes_of_later_turns_go_out_separately_and_in_order():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    for chunk in (b"data: 1\n\n", b"data: 2\n\n"):
        transport.write(chunk)
        await turn()
    assert inner.calls == [("write", b"data: 1\n\n"), ("write", b"data: 2\n\n")]


async def test_close_flushes_first_and_abort_drops():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"last bytes")
    transport.close()
    assert inner.calls == [("write", b"last bytes")] and inner.closed
    await turn()
    assert len(inner.calls) == 1  # the scheduled flush finds nothing left

    aborted = RecordingTransport()
    transport = CoalescingTransport(aborted, asyncio.get_running_loop())
    transport.write(b"never sent")
    transport.abort()
    await turn()
    assert aborted.calls == [] and aborted.closed
