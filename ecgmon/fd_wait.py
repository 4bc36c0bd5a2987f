"""Waiting on the event loop until a file descriptor (a serial port, a pseudo-terminal) can be
read or written, for code that reads and writes it without blocking."""

from __future__ import annotations

import asyncio


async def fd_ready(fd: int, timeout: float | None, write: bool = False) -> bool:
    """True once ``fd`` can be read (with ``write``: written) or has hung up; False after
    ``timeout`` seconds (None: no limit)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    add, remove = (loop.add_writer, loop.remove_writer) if write else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: ready.done() or ready.set_result(True))
    try:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation that
        # arrives as the future completes, and the caller would then never stop.
        async with asyncio.timeout(timeout):
            await ready
        return True
    except TimeoutError:
        return False
    finally:
        remove(fd)
