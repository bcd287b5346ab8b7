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


async def test_a_head_goes_out_with_the_body_written_after_it():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"")  # empty writes are no-ops
    assert inner.calls == []
    assert transport.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b'{"ok":true}')
    assert inner.calls == [("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b'{"ok":true}'])]
    await turn()
    assert len(inner.calls) == 1  # the scheduled flush finds nothing left


async def test_a_stream_head_goes_out_at_the_end_of_its_turn_and_chunks_directly():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await turn()
    assert inner.calls == [("write", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")]
    for chunk in (b"9\r\ndata: 1\n\n\r\n", b"9\r\ndata: 2\n\n\r\n"):
        transport.write(chunk)
    assert inner.calls[1:] == [
        ("write", b"9\r\ndata: 1\n\n\r\n"),
        ("write", b"9\r\ndata: 2\n\n\r\n"),
    ]


async def test_close_flushes_a_held_head_and_abort_drops_it():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    transport.close()
    assert inner.calls == [("write", b"HTTP/1.1 204 No Content\r\n\r\n")] and inner.closed
    await turn()
    assert len(inner.calls) == 1

    aborted = RecordingTransport()
    transport = CoalescingTransport(aborted, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.abort()
    await turn()
    assert aborted.calls == [] and aborted.closed
