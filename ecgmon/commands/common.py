"""What every ``ecgmon`` subcommand shares: the one red error line, logging, flags applied
over the config, and running a coroutine until it ends or a signal stops it.

Errors a user can fix (config, source, endpoint) are one red line on stderr and exit 2;
Ctrl-C is a clean stop with exit 130, SIGTERM a clean stop with exit 0, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from typing import Callable

from rich.console import Console
from rich.text import Text

from ecgmon.config import Config, parse_config

log = logging.getLogger("ecgmon")

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130


class CommandError(Exception):
    """A user-fixable problem found by a command; printed as one line, exit 2."""


# Columns of a report printed to a pipe or file: a table is never cut for want of room.
PIPE_WIDTH = 200


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    """stdout for reports: a terminal's own width; else $COLUMNS, else PIPE_WIDTH (rich
    would take 80 and cut the tables)."""
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=PIPE_WIDTH)
    return console


def print_error(text: str) -> None:
    # soft_wrap: one line whatever the terminal width, so logs and tests see it whole.
    stderr_console().print(Text(f"error: {text}", style="bold red"), soft_wrap=True)


def print_warning(text: str) -> None:
    stderr_console().print(Text(f"warning: {text}", style="yellow"), soft_wrap=True)


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=stderr_console(), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # Plain single lines for journals and pipes.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ecgmon")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def connect_endpoint(endpoint: str) -> str:
    """The address a subscriber connects to for a bind endpoint (``tcp://*:5555`` → loopback)."""
    return re.sub(r"^tcp://(\*|0\.0\.0\.0)(?=:)", "tcp://127.0.0.1", endpoint)


def override(config: Config, changes: list[tuple[str, str, str, object]]) -> Config:
    """Apply CLI flags over the config, validated like the file; errors name flag and key."""
    data = config.model_dump()
    for flag, section, key, value in changes:
        if value is None:
            continue
        data[section][key] = value
        config = parse_config(data, f"{flag} {value}")
    return config


def replay_overrides(args) -> list[tuple[str, str, str, object]]:
    """``--speed``, ``--chunk-s``, ``--loop`` and ``--channel`` over ``[replay]`` (for ``override``)."""
    return [
        ("--speed", "replay", "speed", args.speed),
        ("--chunk-s", "replay", "chunk_s", args.chunk_s),
        ("--loop", "replay", "loop", args.loop),
        ("--channel", "replay", "channel", args.channel),
    ]


def channel_arg(text: str) -> int | str:
    return int(text) if text.strip().isdigit() else text


def run_until_signal(make: Callable[[], object]) -> int:
    """Run the coroutine ``make()`` until it returns (0) or SIGINT (130) / SIGTERM (0) stop it;
    the coroutine is cancelled so that it shuts down cleanly."""

    async def runner() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(make())
        stopped: list[int] = []

        def stop(sig: int) -> None:
            stopped.append(sig)
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop, sig)
        try:
            await task
        except asyncio.CancelledError:
            if not stopped:
                raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if stopped:
            log.info("stopped by %s", signal.Signals(stopped[0]).name)
            return EXIT_SIGINT if stopped[0] == signal.SIGINT else 0
        return 0

    return asyncio.run(runner())
