"""The wire contract: README's "Wire protocol" tables against the schema and the code.

A subscriber in another language is written from the README alone, so every table there must
say exactly what is sent: each topic's table lists exactly its pydantic model's fields
(ecgmon/schema.py) and marks exactly the nullable ones `null`; so do the nested entries of the
status message (StreamStatus, and a real InferenceBatcher's stats()); the event-code table lists
exactly the codes, with their levels, that the package emits; the counts table exactly the
fault-counter keys the sources count. The codes and keys are read from the sources (ast), so a
code or counter added anywhere in ecgmon/ without a README row fails here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
import math
from pathlib import Path
import re
import typing

from pydantic import BaseModel
import pytest

from ecgmon import schema

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ecgmon"
LEVELS = frozenset({"info", "warning", "error"})
SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

# Headings (### or ####) of the tables that are not a topic of their own.
COMMON, STREAM_ENTRY, MODEL_ENTRY = "Every message", "`status` stream entry", "`status` model entry"
CODES, COUNTS = "Event codes", "Event counts"


# -- the README ---------------------------------------------------------------------------


def readme_tables(text: str) -> dict[str, list[list[str]]]:
    """Body rows (cells stripped) of the table under each heading of the Wire protocol section."""
    start = text.index("\n## Wire protocol")
    end = text.find("\n## ", start + 1)
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in text[start : end if end >= 0 else None].splitlines():
        if line.startswith("###"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and heading is not None:
            # "\|" is a literal bar inside a cell (e.g. "float \| null").
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            tables.setdefault(heading, []).append(cells)
    return {h: rows[2:] for h, rows in tables.items()}  # without the header and its --- line


@pytest.fixture(scope="module")
def tables() -> dict[str, list[list[str]]]:
    return readme_tables((REPO / "README.md").read_text(encoding="utf-8"))


def documented(tables: dict[str, list[list[str]]], heading: str) -> dict[str, list[str]]:
    """First cell (backticks off) → row, for the table under ``heading``; no row twice."""
    assert heading in tables, f"README's Wire protocol section has no table under a heading '{heading}'"
    rows = {row[0].strip("`"): row for row in tables[heading]}
    twice = sorted({k for k in rows if sum(r[0].strip("`") == k for r in tables[heading]) > 1})
    assert not twice, f"README table '{heading}' lists {twice} more than once"
    return rows


def assert_same_fields(heading: str, rows: dict[str, list[str]], fields: dict[str, bool], where: str) -> None:
    """``fields``: name → may it be null; the rows must name them all, no more, and say `null` just
    for the nullable ones."""
    missing, extra = sorted(fields.keys() - rows.keys()), sorted(rows.keys() - fields.keys())
    assert not missing and not extra, (
        f"README table '{heading}' disagrees with {where}: "
        f"fields missing from the README: {missing}; README rows that are not fields: {extra}"
    )
    wrong = sorted(f for f, nullable in fields.items() if nullable != ("null" in rows[f][1]))
    assert not wrong, (
        f"README table '{heading}': the type of {wrong} must say `null` exactly when {where} allows None"
    )


def nullable(model: type[BaseModel]) -> dict[str, bool]:
    return {
        name: type(None) in typing.get_args(f.annotation)
        for name, f in model.model_fields.items()
    }


# -- the schema ---------------------------------------------------------------------------


def message_models() -> list[type[schema.Message]]:
    """Every published message model: the members of the AnyMessage union."""
    union = typing.get_args(schema.AnyMessage)[0]
    return list(typing.get_args(union))


def topic_heading(model: type[schema.Message]) -> str:
    kind = model.model_fields["kind"].default
    stream = model.model_fields["stream"].default
    return f"`{kind}.{stream if isinstance(stream, str) else '<stream>'}`"


def test_common_fields(tables: dict[str, list[list[str]]]) -> None:
    assert_same_fields(COMMON, documented(tables, COMMON), nullable(schema.Message), "schema.Message")


@pytest.mark.parametrize("model", message_models(), ids=lambda m: m.__name__)
def test_topic_table_matches_model(tables: dict[str, list[list[str]]], model: type[schema.Message]) -> None:
    own = {k: v for k, v in nullable(model).items() if k not in schema.Message.model_fields}
    heading = topic_heading(model)
    assert_same_fields(heading, documented(tables, heading), own, f"schema.{model.__name__}")


def test_status_stream_entry(tables: dict[str, list[list[str]]]) -> None:
    rows = documented(tables, STREAM_ENTRY)
    assert_same_fields(STREAM_ENTRY, rows, nullable(schema.StreamStatus), "schema.StreamStatus")


def test_status_model_entry(tables: dict[str, list[list[str]]]) -> None:
    """The keys of a real batcher's stats(), null where a fresh one has no figure yet."""
    import torch

    from ecgmon.monitor.batcher import InferenceBatcher

    stats = InferenceBatcher(torch.nn.Identity(), 4, 5.0, "cpu", "beat").stats()
    fields = {k: v is None or (isinstance(v, float) and math.isnan(v)) for k, v in stats.items()}
    assert_same_fields(MODEL_ENTRY, documented(tables, MODEL_ENTRY), fields, "InferenceBatcher.stats()")


def test_every_topic_has_a_table(tables: dict[str, list[list[str]]]) -> None:
    """A topic heading without a message model (a renamed or removed kind) is stale."""
    topics = {h for h in tables if re.fullmatch(r"`[a-z_]+\.[^`]+`", h)}
    stale = sorted(topics - {topic_heading(m) for m in message_models()})
    assert not stale, f"README documents topics no schema model publishes: {stale}"


# -- the sources: event codes and fault counters ----------------------------------------


def _name(node: ast.expr) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _str(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _codes_in(node: ast.AST) -> list[tuple[str, str | None]]:
    """(code, its level if a constant) of an event this call or tuple makes.

    Recognised: ``code="x"`` (level from ``level="..."``); a snake_case string beside a level
    string ("info", "warning", "error") among a call's arguments or a tuple's items (SourceEvent,
    _event, the MQTT source's (code, level, text) notes); any snake_case string argument of a
    call whose name ends in "event" (the code passed with a level held in a variable). A code
    held in a variable ``code`` is _assigned_codes' job.
    """
    if isinstance(node, ast.Call):
        items = node.args
        kw = {k.arg: _str(k.value) for k in node.keywords if k.arg}
        is_event = _name(node.func).lower().endswith("event")
    elif isinstance(node, ast.Tuple):
        items, kw, is_event = node.elts, {}, False
    else:
        return []
    values = [_str(a) for a in items]
    levels = [v for v in [*values, kw.get("level")] if v in LEVELS]
    level = levels[0] if len(levels) == 1 else None
    codes = {kw["code"]} if kw.get("code") and SNAKE.match(kw["code"]) else set()
    for i, v in enumerate(values):
        beside = set(values[max(0, i - 1) : i] + values[i + 1 : i + 2])
        if v is not None and v not in LEVELS and SNAKE.match(v) and (is_event or beside & LEVELS):
            codes.add(v)
    return [(code, level) for code in codes]


def _strings(node: ast.expr) -> list[str]:
    """The string constant, or those of a conditional expression (``"a" if x else "b"``)."""
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return [v] if (v := _str(node)) else []


def _assigned_codes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[str, str | None]]:
    """Codes chosen in a variable (``code = "stream_failed"``), with the level the function's
    event call puts beside that variable, if it is one constant."""
    codes = [
        c for n in ast.walk(func) if isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "code" for t in n.targets)
        for c in _strings(n.value) if SNAKE.match(c)
    ]
    levels = {
        _str(a) for call in ast.walk(func)
        if isinstance(call, ast.Call) and _name(call.func).lower().endswith("event")
        for i, arg in enumerate(call.args) if isinstance(arg, ast.Name) and arg.id == "code"
        for a in call.args[max(0, i - 1) : i + 2] if _str(a) in LEVELS
    }
    level = levels.pop() if len(levels) == 1 else None
    return [(code, level) for code in codes]


def _count_keys_in(tree: ast.AST) -> set[str]:
    """Fault-counter keys: the dicts ``counts()`` returns, ``counts[...]``/``faults[...]``,
    ``counts.get(...)``/``faults.get(...)``, ``count(...)``/``_count(...)`` with a string and
    the dicts given to ``_report(...)``."""
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "counts":
            keys |= {k for d in ast.walk(node) if isinstance(d, ast.Dict) for k in map(_str, d.keys) if k}
        elif isinstance(node, ast.Subscript) and _name(node.value) in ("counts", "faults"):
            keys |= {k for k in [_str(node.slice)] if k}
        elif isinstance(node, ast.Call) and node.args and (
            _name(node.func) in ("count", "_count")
            or (_name(node.func) == "get" and isinstance(node.func, ast.Attribute)
                and _name(node.func.value) in ("counts", "faults"))
        ):
            # count("late" if late else "duplicates") counts either.
            keys |= {k for c in ast.walk(node.args[0]) for k in [_str(c)] if k}  # type: ignore[arg-type]
        elif isinstance(node, ast.Call) and _name(node.func) == "_report":
            # The archive writer's events: _report(stream, level, code, text, {"key": n}).
            keys |= {k for a in node.args if isinstance(a, ast.Dict) for k in map(_str, a.keys) if k}
    return keys


@pytest.fixture(scope="module")
def sources() -> dict[Path, ast.AST]:
    return {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def emitted_codes(sources: dict[Path, ast.AST]) -> dict[str, dict[str | None, set[str]]]:
    """code → level (None: not a constant) → where."""
    found: dict[str, dict[str | None, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path, tree in sources.items():
        for node in ast.walk(tree):
            pairs = _codes_in(node)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                pairs += _assigned_codes(node)
            for code, level in pairs:
                found[code][level].add(f"{path.relative_to(REPO)}:{node.lineno}")  # type: ignore[attr-defined]
    return found


def test_collectors_find_known_emitters(sources: dict[Path, ast.AST]) -> None:
    """The collectors see the forms in use (a guard against a collector that finds nothing)."""
    codes = emitted_codes(sources)
    for code in ("source_started", "discontinuity", "corrupt_input", "stream_restarted", "reconnected", "stream_failed"):
        assert code in codes, f"the event-code collector no longer finds '{code}'"
    keys = set().union(*map(_count_keys_in, sources.values()))
    assert {"crc_errors", "malformed", "late", "duplicates", "overflows"} <= keys


def test_event_codes_match_code(tables: dict[str, list[list[str]]], sources: dict[Path, ast.AST]) -> None:
    rows = documented(tables, CODES)
    found = emitted_codes(sources)
    missing, extra = sorted(found.keys() - rows.keys()), sorted(rows.keys() - found.keys())
    assert not missing and not extra, (
        f"README '{CODES}' disagrees with the code: codes emitted but not in the README: "
        + ", ".join(f"{c} ({', '.join(sorted(set().union(*found[c].values())))})" for c in missing)
        + f"; README codes nothing emits: {extra}"
    )
    for code, sites in found.items():
        said = set(re.findall(r"info|warning|error", rows[code][1]))
        const = {lv for lv in sites if lv is not None}
        ok = const <= said if None in sites else const == said
        assert said and ok, (
            f"README '{CODES}': `{code}` is emitted at level {sorted(const)} "
            f"({', '.join(sorted(set().union(*sites.values())))}), the README says {sorted(said)}"
        )


def test_event_counts_match_code(tables: dict[str, list[list[str]]], sources: dict[Path, ast.AST]) -> None:
    rows = documented(tables, COUNTS)
    where: dict[str, list[str]] = defaultdict(list)
    for path, tree in sources.items():
        for key in _count_keys_in(tree):
            where[key].append(str(path.relative_to(REPO)))
    missing, extra = sorted(where.keys() - rows.keys()), sorted(rows.keys() - where.keys())
    assert not missing and not extra, (
        f"README '{COUNTS}' disagrees with the code: counters counted but not in the README: "
        + ", ".join(f"{k} ({', '.join(where[k])})" for k in missing)
        + f"; README keys nothing counts: {extra}"
    )


def test_readme_parser_reads_escaped_bars() -> None:
    """`float \\| null` is one cell, so a nullable field is not read as a longer row."""
    text = "x\n## Wire protocol\n### `t`\n| field | type | meaning |\n|---|---|---|\n| `a` | float \\| null | m |\n## Next\n"
    assert readme_tables(text) == {"`t`": [["`a`", "float | null", "m"]]}
