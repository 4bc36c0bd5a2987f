"""``ecgmon archive``: list, verify and export what the daemon archived (ecgmon.archive)."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from ecgmon.commands.common import CommandError, stdout_console
from ecgmon.config import Config


def add_archive(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("archive", parents=[common], help="list, verify and export the archive",
                       description="Read back the archive the daemon writes (README: Archive).")
    p.add_argument("--archive", metavar="DIR", help="the archive folder (default: [archive] folder)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = acts.add_parser("list", parents=[common], help="streams, time spans and sizes")
    ls.set_defaults(func=cmd_list)
    ver = acts.add_parser("verify", parents=[common], help="headers, checksums, gaps; exit 1 on a problem")
    ver.add_argument("stream", nargs="*", help="streams to verify (default: all)")
    ver.set_defaults(func=cmd_verify)
    ex = acts.add_parser("export", parents=[common], help="one plain WFDB record with its annotations",
                         description="Write samples FROM..TO of STREAM as one WFDB record OUT (OUT.hea, "
                                     "OUT.dat) with its beats (OUT.ecgmon) and events (OUT.event).")
    ex.add_argument("stream", metavar="STREAM")
    ex.add_argument("out", metavar="OUT", help="the record to write, e.g. out/bed3_night")
    ex.add_argument("--from", dest="start", default="0", metavar="T",
                    help="seconds from the archive's start, or a UTC time 2026-12-06T14:03:00 (default: 0)")
    ex.add_argument("--to", dest="end", default=None, metavar="T", help="likewise (default: the end)")
    ex.set_defaults(func=cmd_export)


def _root(args: argparse.Namespace, config: Config) -> Path:
    root = Path(args.archive).expanduser() if args.archive else config.archive.root()
    if not root.is_dir():
        raise CommandError(f"no archive in {root}: give the folder with --archive DIR or [archive] folder")
    return root


def _layouts(root: Path, streams: list[str] | None = None):
    from ecgmon.archive import reader

    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if streams and folder.name not in streams:
            continue
        try:
            names = sorted(p.name[: -len("_layout.hea")] for p in folder.glob("*_layout.hea"))
            found.extend((folder.name, name, reader.Layout.load(folder, name), None) for name in names)
        except (OSError, ValueError, IndexError) as err:
            found.append((folder.name, folder.name, None, f"layout unreadable: {err}"))
    missing = set(streams or []) - {f[0] for f in found}
    if missing:
        raise CommandError(f"no stream {', '.join(sorted(missing))} in {root}")
    return found


def _when(wall: float | None) -> str:
    if wall is None:
        return "-"
    return datetime.fromtimestamp(wall, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    from rich.table import Table

    from ecgmon.archive import reader

    root = _root(args, config)
    table = Table(title=f"archive {root}", title_justify="left")
    for col in ("stream", "record", "fs", "signals", "segments", "gaps", "signal", "from (UTC)", "to (UTC)", "size"):
        table.add_column(col, justify="right" if col in ("fs", "segments", "gaps", "signal", "size") else "left")
    for stream, name, layout, err in _layouts(root):
        if layout is None:
            table.add_row(stream, name, "", err, "", "", "", "", "", "")
            continue
        s = reader.summarise(layout)
        table.add_row(stream, name, f"{s.fs:g}", ",".join(s.channels), str(s.segments), str(s.gaps),
                      f"{s.signal_s / 3600:.2f} h" if s.signal_s >= 3600 else f"{s.signal_s:.0f} s",
                      _when(s.first_wall), _when(s.last_wall), _size(s.size_bytes))
    for pcg in sorted(root.glob("*/pcg")):
        from ecgmon.archive.pcg import pcg_segments

        try:
            segs = pcg_segments(pcg)
        except (OSError, ValueError) as err:
            table.add_row(pcg.parent.name, "pcg", "", f"unreadable: {err}", "", "", "", "", "", "")
            continue
        if not segs:
            continue
        fs = segs[-1]["fs"]
        seconds = sum(s["samples"] for s in segs) / fs
        size = sum(p.stat().st_size for p in pcg.iterdir() if p.is_file())
        table.add_row(pcg.parent.name, "pcg (FLAC)", f"{fs:g}", "heart sounds", str(len(segs)), "",
                      f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s",
                      _when(segs[0].get("start_wall")),
                      _when(segs[-1]["start_wall"] + segs[-1]["samples"] / fs if segs[-1].get("start_wall") else None),
                      _size(size))
    stdout_console().print(table)
    return 0


def cmd_verify(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.archive import reader
    from ecgmon.archive.audit import AUDIT_FILE

    root = _root(args, config)
    console = stdout_console()
    bad = 0
    for stream, name, layout, err in _layouts(root, args.stream or None):
        problems = [err] if layout is None else reader.verify(layout)
        if layout is not None:
            s = reader.summarise(layout)
            gaps = sum(n for seg, n in layout.entries if seg == reader.NULL) / layout.spec.fs
            head = f"{stream}/{name}: {s.segments} segments, {s.gaps} gaps ({gaps:.1f} s)"
        else:
            head = f"{stream}/{name}"
        bad += len(problems)
        console.print(f"{head}: {'ok' if not problems else f'{len(problems)} problems'}", highlight=False)
        for p in problems:
            console.print(f"  {p}", highlight=False, soft_wrap=True)
    for pcg in sorted(root.glob("*/pcg")):
        if args.stream and pcg.parent.name not in args.stream:
            continue
        count, problems = reader.verify_pcg(pcg)
        bad += len(problems)
        console.print(f"{pcg.parent.name}/pcg: {count} heart-sound segments: "
                      f"{'ok' if not problems else f'{len(problems)} problems'}", highlight=False)
        for p in problems:
            console.print(f"  {p}", highlight=False, soft_wrap=True)
    audit = root / AUDIT_FILE
    if audit.exists():
        lines = audit.read_bytes().split(b"\n")
        torn = sum(1 for ln in lines if ln.strip() and not _is_json(ln))
        console.print(f"{AUDIT_FILE}: {sum(1 for ln in lines if ln.strip())} entries"
                      + (f", {torn} unreadable (a crash mid-entry)" if torn else ", all readable"), highlight=False)
    return 1 if bad else 0


def _is_json(line: bytes) -> bool:
    import json

    try:
        json.loads(line)
        return True
    except ValueError:
        return False


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.archive import reader

    root = _root(args, config)
    layouts = [f for f in _layouts(root, [args.stream]) if f[2] is not None]
    if not layouts:
        raise CommandError(f"{args.stream}: its layout header cannot be read; try `ecgmon archive verify`")
    layout = layouts[-1][2]  # the newest record (a stream whose rate or leads changed has several)
    try:
        start = reader.time_index(layout, args.start)
        end = layout.length if args.end is None else reader.time_index(layout, args.end)
        written = reader.export(layout, start, end, Path(args.out))
    except ValueError as err:
        raise CommandError(str(err)) from None
    stdout_console().print(
        f"wrote {args.out}.hea/.dat: {written['samples'] / layout.spec.fs:.1f} s of {args.stream}, "
        f"{written['ecgmon']} beats (.ecgmon), {written['event']} events (.event)", highlight=False)
    return 0
