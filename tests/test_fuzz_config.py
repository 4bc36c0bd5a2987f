"""Fuzzing the configuration: whatever the bytes of a config file, or the tables and values in
it, ``load_config``/``parse_config`` return a Config or raise ConfigError, nothing else.

Budget: tests/fuzz_settings.py (``ECGMON_FUZZ_EXAMPLES=N`` for a long run).
"""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given, strategies as st

from ecgmon.config import Config, ConfigError, load_config, parse_config
from fuzz_settings import fuzz_settings

# Values TOML can hold, the awkward ones often: NaN, infinities, huge and negative numbers,
# empty and odd strings, nested arrays and tables.
scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 1, 2**64, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(["", "sim", "mitdb:100", "tcp://*:5555", "cuda", "auto", "ascii", "\x00", "é" * 3]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                      max_leaves=12)

SECTIONS = {name: field.annotation.model_fields for name, field in Config.model_fields.items()}
sections = st.sampled_from(sorted(SECTIONS)) | st.text(max_size=10)


@st.composite
def config_tables(draw) -> dict:
    """A dict as tomllib would give: mostly real sections and keys, some unknown ones."""
    data: dict = {}
    for section in draw(st.lists(sections, max_size=4)):
        known = sorted(SECTIONS.get(section, {}))
        keys = st.sampled_from(known) | st.text(max_size=10) if known else st.text(max_size=10)
        table = draw(st.dictionaries(keys, values, max_size=5))
        data[section] = draw(st.sampled_from([table, table, draw(values)]))  # sometimes not a table
    return data


@fuzz_settings(300)
@given(config_tables())
def test_fuzz_parse_config_returns_a_config_or_a_config_error(data: dict) -> None:
    try:
        config = parse_config(data, "fuzz.toml")
    except ConfigError as err:
        assert str(err).startswith("fuzz.toml: ") and "\n" not in str(err)
        return
    assert isinstance(config, Config)
    # What the CLI does with a config: flags are applied over a dump of it.
    assert parse_config(config.model_dump(), "again") == config


TOML_PIECES = [
    b"[run]\n", b"[replay]\n", b"[serial]\n", b"[alarms]\n", b"speed = ", b"fs = ", b"latch = [",
    b"sources = [\"sim\"]\n", b"1e999\n", b"nan\n", b"-inf\n", b"\"\xff\"\n", b"[[a]]\n", b"= =\n",
    b"\xef\xbb\xbf", b"\x00", b"[", b"]", b"\n", b"'''", b"\"\"\"", b"{", b"}", b"0x7fffffffffffffffff\n",
]


@fuzz_settings(300)
@given(st.lists(st.sampled_from(TOML_PIECES) | st.binary(max_size=16), max_size=12))
def test_fuzz_load_config_of_any_bytes(tmp_path: Path, pieces: list[bytes]) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_bytes(b"".join(pieces))
    try:
        assert isinstance(load_config(path), Config)
    except ConfigError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err).strip()
