"""Fuzzing the WFDB header reader: a real header (mitdb 100) with fields replaced by odd values,
or its bytes changed, beside the real signal file. The record reader must give a valid record
(a positive finite rate, finite float32 samples, one name and unit per channel) or raise
RecordError; a live replay of it a RecordSource or SourceError. Nothing else.

It reads a 1.9 MB signal file per example, so the normal budget is small (tests/fuzz_settings.py;
``ECGMON_FUZZ_EXAMPLES=N`` for a long run).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import event, given, strategies as st
import numpy as np
import pytest

from ecgmon.config import Config, DataConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import RecordError, load_record
from fuzz_settings import fuzz_settings

ODD_FIELDS = [
    "0", "-1", "-360", "nan", "inf", "-inf", "1e999", "1e-999", "0/0", "360/0", "9" * 30, "1e6", "1e7",
    "", "x", "212", "16", "8", "999", "0x10", "100.dat", "../../etc/passwd", "200(0)/mV", "0(0)/mV",
    "1e-300/mV", "200(-32768)/mV", "2147483648", "-2147483649", "\x00", "é", "650000", "6500000",
]


@pytest.fixture(scope="module")
def header_lines(data_dir: Path) -> list[str]:
    return (data_dir / "mitdb" / "100.hea").read_text().splitlines()


@st.composite
def headers(draw, lines: list[str]) -> bytes:
    """mitdb 100's header with a few whitespace-separated fields replaced, lines dropped or
    doubled, or bytes flipped."""
    rows = [line.split(" ") for line in lines]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["record", "field", "field", "drop", "double", "text"]))
        # "record": the record line (name, signals, rate, length), which every signal depends on.
        i = 0 if kind == "record" else draw(st.integers(0, len(rows) - 1))
        if kind in ("record", "field"):
            j = draw(st.integers(0, len(rows[i]) - 1))
            rows[i][j] = draw(st.sampled_from(ODD_FIELDS) | st.text(max_size=8))
        elif kind == "drop" and len(rows) > 1:
            rows.pop(i)
        elif kind == "double":
            rows.insert(i, list(rows[i]))
        elif kind == "text":
            rows[i] = draw(st.text(max_size=40)).split(" ")
    data = bytearray("\n".join(" ".join(r) for r in rows).encode("utf-8", "surrogatepass") + b"\n")
    for _ in range(draw(st.integers(0, 2))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _check(path: Path, config: Config) -> None:
    try:
        record = load_record(str(path), config.data, annotations=False)
    except RecordError as err:
        assert str(err) and "Traceback" not in str(err)
        event("RecordError")
        return
    event("read")
    assert np.isfinite(record.fs) and record.fs > 0
    assert record.signal.dtype == np.float32 and record.signal.ndim == 2
    assert np.isfinite(record.signal).all()
    assert len(record.channels) == len(record.units) == record.signal.shape[1]
    try:
        RecordSource(str(path), config, record=record)
    except SourceError:
        pass


def test_fuzz_wfdb_header(tmp_path_factory: pytest.TempPathFactory, header_lines: list[str], data_dir: Path) -> None:
    folder = tmp_path_factory.mktemp("hea")
    os.symlink(data_dir / "mitdb" / "100.dat", folder / "100.dat")  # read, never written
    config = Config(data=DataConfig(cache=str(folder / "cache")))

    @fuzz_settings(100)
    @given(headers(header_lines))
    def one(header: bytes) -> None:
        (folder / "100.hea").write_bytes(header)
        _check(folder / "100.hea", config)

    one()
