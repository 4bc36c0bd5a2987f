"""Key presses from the terminal without blocking the asyncio loop: the terminal goes into
cbreak mode (keys arrive one by one, unechoed; Ctrl-C still raises SIGINT) and the event loop
watches the file descriptor. The terminal's mode is restored on exit, whatever happens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from typing import Iterator

# Escape sequences of the keys the dashboard uses, by name.
SEQUENCES = {
    b"\x1b[A": "up", b"\x1b[B": "down", b"\x1b[C": "right", b"\x1b[D": "left",
    b"\x1bOA": "up", b"\x1bOB": "down", b"\x1bOC": "right", b"\x1bOD": "left",
    b"\x1b[Z": "shift-tab", b"\t": "tab",
}


def parse_keys(data: bytes) -> list[str]:
    """Key names in ``data`` (one read may hold several keys); unknown escapes are skipped."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        for seq, name in SEQUENCES.items():
            if data.startswith(seq, i):
                keys.append(name)
                i += len(seq)
                break
        else:
            if data[i] == 0x1B:  # an escape sequence we do not use: skip to its final byte
                j = i + 2 if data[i + 1 : i + 2] in (b"[", b"O") else i + 1
                while j < len(data) and not 0x40 <= data[j] <= 0x7E:
                    j += 1
                i = j + 1
                continue
            if 0x20 <= data[i] < 0x7F:  # printable ASCII; other bytes name no key of ours
                keys.append(chr(data[i]))
            i += 1
    return keys


@contextlib.contextmanager
def key_reader(fd: int) -> Iterator[asyncio.Queue[str]]:
    """Within the block, key names typed on terminal ``fd`` arrive on the returned queue."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    saved = termios.tcgetattr(fd)

    def readable() -> None:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            loop.remove_reader(fd)
            queue.put_nowait("eof")
            return
        for key in parse_keys(data):
            queue.put_nowait(key)

    tty.setcbreak(fd, termios.TCSANOW)
    loop.add_reader(fd, readable)
    try:
        yield queue
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
