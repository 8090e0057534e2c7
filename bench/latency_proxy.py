"""A loopback TCP proxy that adds a fixed delay each way: round-trip latency on this machine.

Every chunk read from one side is written to the other `delay` seconds later, in order; reading
goes on meanwhile, so the link keeps its bandwidth and only gains latency (what a far-away
region adds to an SSH session). Listens on 127.0.0.1 only and forwards to one address.

    with LatencyProxy(("127.0.0.1", 2222), one_way_seconds=0.05) as proxy:
        ... connect to ("127.0.0.1", proxy.port) ...
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Optional


class LatencyProxy:
    def __init__(self, upstream: tuple[str, int], one_way_seconds: float):
        self.upstream = upstream
        self.delay = one_way_seconds
        self.port = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            # This direction is done; the other may still be talking (a half-close, as TCP has).
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self.delay, data))
        except ConnectionError:
            pass
        finally:
            queue.put_nowait((time.monotonic() + self.delay, None))
            try:
                await sender
            except ConnectionError:
                pass

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer),
                             return_exceptions=True)
        for writer in (server_writer, client_writer):
            writer.close()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def __enter__(self) -> "LatencyProxy":
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
