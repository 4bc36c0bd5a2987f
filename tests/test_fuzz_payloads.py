"""Property-based fuzzing (hypothesis) of the device decoders: MQTT JSON and binary payloads,
serial ASCII lines and binary frames.

For arbitrary bytes and for valid payloads with fields mutated (ragged or nested lists, wrong
types, huge, negative and non-finite numbers, truncation), an MQTT decode yields a valid,
bounded EcgPayload or raises PayloadError, nothing else; the serial decoders never raise and
yield only finite values in range (or NaN standing for a bad line). Encode then decode gives
the samples back. A second lead (MQTT ``samples2`` and binary version 2, serial ``lead2``),
whatever it holds, never changes whether or what the first lead decodes to. The budget is ``fuzz_settings`` (ECGMON_FUZZ_EXAMPLES for a long run:
scripts/fuzz.sh).
"""

from __future__ import annotations

import json
import math
import struct

from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np

from ecgmon.payloads.mqtt import (
    HEADER,
    MAX_LEAD_CHARS,
    MAX_SAMPLES,
    EcgPayload,
    PayloadError,
    decode,
    encode_binary,
    encode_json,
)
from ecgmon.payloads.serial import (
    MAX_CHANNELS,
    MAX_LINE,
    AsciiDecoder,
    FrameDecoder,
    encode_ascii,
    encode_frame,
    frame_size,
)
from ecgmon.rates import MAX_ECG_FS, MIN_ECG_FS

from fuzz_settings import fuzz_settings

# --------------------------------------------------------------------------- MQTT payloads


def assert_valid(p: EcgPayload) -> None:
    """What every decoded payload must be, whatever came in."""
    assert isinstance(p, EcgPayload)
    assert isinstance(p.samples, np.ndarray) and p.samples.dtype == np.float32 and p.samples.ndim == 1
    assert 1 <= p.n <= MAX_SAMPLES
    assert np.all(np.isfinite(p.samples))
    assert isinstance(p.fs, float) and MIN_ECG_FS <= p.fs <= MAX_ECG_FS
    assert isinstance(p.seq, int) and isinstance(p.start, int)
    assert 0 <= p.seq and 0 <= p.start <= 2**63 - 1
    assert isinstance(p.lead, str) and 1 <= len(p.lead) <= MAX_LEAD_CHARS and p.lead.isprintable()
    if p.samples2 is not None:  # NaN stands for a value the device does not have; never inf
        assert p.samples2.dtype == np.float32 and p.samples2.shape == p.samples.shape
        assert not np.isinf(p.samples2).any()
        assert isinstance(p.lead2, str) and 1 <= len(p.lead2) <= MAX_LEAD_CHARS and p.lead2.isprintable()


def decodes_or_refuses(payload: bytes) -> EcgPayload | None:
    try:
        p = decode(payload)
    except PayloadError as err:
        assert 0 < len(str(err)) < 300  # a short reason, never the payload itself
        return None
    assert_valid(p)
    return p


# Any JSON value, nested a few levels: what a mutated field may become.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)
numbers = (st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, -1, 1, 1e-9, 50, 80, 100, 124.999, 125, 1000, 1000.001, 1e5, 2**63, 2**64]))
# Lists of samples as devices get them wrong: ragged, nested, mixed types, non-finite.
sample_lists = st.lists(
    st.floats(allow_nan=True, allow_infinity=True, width=64) | st.integers(min_value=-(2**80), max_value=2**80)
    | st.lists(st.integers(-5, 5), max_size=3) | st.booleans() | st.none() | st.text(max_size=3),
    min_size=0, max_size=50,
) | st.sampled_from([[[1, 2], [3]], [1, [2]], [[1, 2], [3, 4]], [[]], [1e308, 1e308], [1e39]])


def valid_body() -> dict:
    return {"v": 1, "seq": 7, "start": 252, "fs": 360.0, "lead": "MLII", "units": "mV",
            "samples": [0.1, -0.2, 1.5]}


@fuzz_settings(500)
@given(st.binary(max_size=400))
def test_fuzz_mqtt_arbitrary_bytes(data: bytes) -> None:
    for payload in (data, b"ECG1" + data, b"{" + data, HEADER.pack(b"ECG1", 1, 0, 1, 0, 0, 360.0, 0.001)[:28] + data):
        decodes_or_refuses(payload)


@fuzz_settings(500)
@given(
    field=st.sampled_from(["v", "seq", "start", "fs", "lead", "units", "samples", "extra"]),
    value=json_values | numbers | sample_lists,
    drop=st.booleans(),
)
def test_fuzz_mqtt_json_fields_mutated(field: str, value: object, drop: bool) -> None:
    body = valid_body()
    if drop and field in body:
        del body[field]
    else:
        body[field] = value
    decodes_or_refuses(json.dumps(body, allow_nan=True).encode())


@fuzz_settings(300)
@given(samples=sample_lists, fs=numbers, cut=st.integers(min_value=0, max_value=2000))
def test_fuzz_mqtt_json_samples_rates_and_truncation(samples: list, fs: object, cut: int) -> None:
    body = {**valid_body(), "samples": samples, "fs": fs}
    payload = json.dumps(body, allow_nan=True).encode()
    decodes_or_refuses(payload)
    decodes_or_refuses(payload[:cut])


@fuzz_settings(300)
@given(depth=st.integers(min_value=1, max_value=200_000), where=st.sampled_from(["samples", "lead", "top"]))
def test_fuzz_mqtt_json_deep_nesting(depth: int, where: str) -> None:
    nested = "[" * depth + "1" + "]" * depth
    if where == "top":
        payload = nested.encode()
    else:
        payload = json.dumps(valid_body()).replace('"MLII"' if where == "lead" else "[0.1, -0.2, 1.5]", nested).encode()
    decodes_or_refuses(b"{" + payload if where == "top" else payload)


@fuzz_settings(500)
@given(
    # Mostly plausible values, so that the checks behind the first ones are reached too.
    version=st.just(1) | st.integers(0, 255), lead_len=st.integers(0, 40) | st.integers(0, 255),
    n=st.integers(0, 300) | st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**32 - 1), start=st.integers(0, 2**64 - 1),
    fs=st.sampled_from([360.0, 125.0, 1000.0]) | st.floats(width=32, allow_nan=True, allow_infinity=True),
    scale=st.sampled_from([0.001, 1e-45, 1e30, 3.4e38]) | st.floats(width=32, allow_nan=True, allow_infinity=True),
    body=st.binary(max_size=300), real_length=st.booleans(),
)
def test_fuzz_mqtt_binary_header_mutated(version: int, lead_len: int, n: int, seq: int, start: int, fs: float,
                                         scale: float, body: bytes, real_length: bool) -> None:
    header = HEADER.pack(b"ECG1", version, lead_len, n, seq, start, fs, scale)
    if real_length:  # the length the header announces, so that the fields themselves are tested
        body = (body * (1 + (lead_len + 2 * n) // max(1, len(body))))[: lead_len + 2 * n] if body else bytes(lead_len + 2 * n)
    decodes_or_refuses(header + body)


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_mqtt_binary_bytes_flipped_or_truncated(data: st.DataObject) -> None:
    payload = bytearray(encode_binary(3, 1000, 360.0, "MLII", np.linspace(-2, 2, 40)))
    for _ in range(data.draw(st.integers(0, 6))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload) + 4))
    decodes_or_refuses(bytes(payload[:cut]) + (b"\x00" * (cut - len(payload)) if cut > len(payload) else b""))


def float32_finite(v: float) -> bool:
    """Whether a JSON number is a finite float32 millivolt value."""
    try:
        with np.errstate(over="ignore"):
            return bool(np.isfinite(np.float32(float(v))))
    except OverflowError:  # an integer beyond any float
        return False


@fuzz_settings(500)
@given(samples2=json_values | numbers | sample_lists, lead2=json_values, with_lead2=st.booleans())
def test_fuzz_mqtt_json_second_lead_never_costs_the_first(samples2: object, lead2: object, with_lead2: bool) -> None:
    body = {**valid_body(), "samples2": samples2}
    if with_lead2:
        body["lead2"] = lead2
    p = decodes_or_refuses(json.dumps(body, allow_nan=True).encode())
    one = decode(json.dumps(valid_body()).encode())
    assert p is not None and np.array_equal(p.samples, one.samples) and p.lead == one.lead
    assert p.samples2 is not None
    if isinstance(samples2, list) and len(samples2) == one.n:
        numbers_at = [isinstance(v, (int, float)) and not isinstance(v, bool) and float32_finite(v) for v in samples2]
        assert np.isfinite(p.samples2).tolist() == numbers_at
    else:
        assert np.isnan(p.samples2).all()


@fuzz_settings(300)
@given(data=st.data())
def test_fuzz_mqtt_binary_second_lead_part_mutated(data: st.DataObject) -> None:
    x = np.linspace(-2, 2, 40)
    payload = bytearray(encode_binary(3, 1000, 360.0, "MLII", x, np.cos(x), "V1"))
    first_end = HEADER.size + 4 + 2 * x.size  # the header, "MLII" and the first lead
    for _ in range(data.draw(st.integers(0, 6))):
        payload[data.draw(st.integers(first_end, len(payload) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(first_end, len(payload) + 4))
    tail = b"\x00" * (cut - len(payload)) if cut > len(payload) else b""
    p = decodes_or_refuses(bytes(payload[:cut]) + tail)
    # Whatever happened after the first lead, it decodes as it was sent.
    assert p is not None and p.lead == "MLII"
    assert np.array_equal(p.samples, decode(encode_binary(3, 1000, 360.0, "MLII", x)).samples)


finite_mv = st.floats(min_value=-1e4, max_value=1e4, width=32, allow_nan=False)
good_fs = st.floats(min_value=MIN_ECG_FS, max_value=MAX_ECG_FS, allow_nan=False)
good_lead = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1, max_size=MAX_LEAD_CHARS)


@fuzz_settings(300)
@given(seq=st.integers(0, 2**63 - 1), start=st.integers(0, 2**63 - 1), fs=good_fs, lead=good_lead,
       samples=st.lists(finite_mv, min_size=1, max_size=500))
def test_fuzz_mqtt_json_round_trip_is_exact(seq: int, start: int, fs: float, lead: str, samples: list) -> None:
    x = np.array(samples, dtype=np.float32)
    p = decode(encode_json(seq, start, fs, lead, x))
    assert_valid(p)
    assert (p.seq, p.start, p.fs, p.lead) == (seq, start, fs, lead)
    assert np.array_equal(p.samples, x)


@fuzz_settings(300)
@given(seq=st.integers(0, 2**32 - 1), start=st.integers(0, 2**63 - 1), fs=good_fs, lead=good_lead,
       samples=st.lists(finite_mv, min_size=1, max_size=500))
def test_fuzz_mqtt_binary_round_trip_within_half_a_step(seq: int, start: int, fs: float, lead: str,
                                                        samples: list) -> None:
    x = np.array(samples, dtype=np.float64)
    payload = encode_binary(seq, start, fs, lead, x)
    p = decode(payload)
    assert_valid(p)
    scale = struct.unpack_from("<f", payload, 24)[0]
    assert (p.seq, p.start, p.lead) == (seq, start, lead)
    assert p.fs == float(np.float32(fs))
    assert np.max(np.abs(p.samples - x)) <= scale * 0.5 + 1e-6 * (1 + np.max(np.abs(x)))


@fuzz_settings(300)
@given(fs=good_fs, lead2=good_lead, rows=st.lists(st.tuples(finite_mv, finite_mv | st.just(math.nan)),
                                                   min_size=1, max_size=300))
def test_fuzz_mqtt_two_lead_round_trips(fs: float, lead2: str, rows: list) -> None:
    x, y = (np.array(c, dtype=np.float32) for c in zip(*rows))
    p = decode(encode_json(1, 2, fs, "MLII", x, y, lead2))
    assert_valid(p)
    assert np.array_equal(p.samples, x) and np.array_equal(p.samples2, y, equal_nan=True) and p.lead2 == lead2
    payload = encode_binary(1, 2, fs, "MLII", x, y, lead2)
    p = decode(payload)
    assert_valid(p)
    scale = struct.unpack_from("<f", payload, 24)[0]
    assert np.array_equal(np.isnan(p.samples2), np.isnan(y)) and p.lead2 == lead2
    both = np.abs(np.concatenate([x, y[np.isfinite(y)]])).max()
    for got, sent in ((p.samples, x), (p.samples2[np.isfinite(y)], y[np.isfinite(y)])):
        assert np.all(np.abs(got - sent) <= scale * 0.5 + 1e-6 * (1 + both))


# --------------------------------------------------------------------------- serial


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted)."""
    at = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(at, at[1:])]


@fuzz_settings(500)
@given(chunks=st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"1,2\n", b"nan\n", b"1e999\n", b"\r\n"]),
                       max_size=20),
       channel=st.integers(0, 3))
def test_fuzz_serial_ascii_any_bytes(chunks: list[bytes], channel: int) -> None:
    dec = AsciiDecoder(channel)
    newlines = 0
    out = []
    for chunk in chunks:
        values = dec.feed(chunk)
        newlines += chunk.count(b"\n")
        assert values.dtype == np.float64 and values.ndim == 1
        assert np.all(np.isfinite(values) | np.isnan(values))  # NaN stands for a bad line
        assert len(dec._partial) <= MAX_LINE  # never buffers more than one line
        out.append(values)
    assert sum(v.size for v in out) <= newlines
    assert np.isnan(np.concatenate(out or [np.zeros(0)])).sum() == dec.bad_lines
    assert all(v >= 0 for v in dec.counts().values())


@fuzz_settings(500)
@given(chunks=st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"1,2\n", b"1,nan\n", b"1\n", b"x,2\n",
                                                                  b"1,2,3\n", b"1e999\n", b"\r\n"]), max_size=20),
       channel=st.integers(0, 3), lead2=st.integers(0, 4))
def test_fuzz_serial_ascii_second_lead_any_bytes(chunks: list[bytes], channel: int, lead2: int) -> None:
    if lead2 == channel:
        return
    two, one = AsciiDecoder(channel, lead2), AsciiDecoder(channel)
    rows = []
    for chunk in chunks:
        values = two.feed_leads(chunk)
        assert values.dtype == np.float64 and values.shape == (one.feed(chunk).size, 2)  # one row a line, alike
        rows.append(values)
    got = np.concatenate(rows or [np.zeros((0, 2))])
    assert np.all(np.isfinite(got) | np.isnan(got))
    # A bad line is bad in both leads; a good first value without a second is lead2_missing.
    assert np.isnan(got[np.isnan(got[:, 0]), 1]).all()
    assert np.isnan(got[:, 0]).sum() == two.bad_lines
    assert (np.isfinite(got[:, 0]) & np.isnan(got[:, 1])).sum() == two.counts()["lead2_missing"]


@fuzz_settings(300)
@given(rows=st.lists(st.lists(st.integers(-(2**40), 2**40), min_size=2, max_size=2), min_size=1, max_size=60),
       cuts=st.lists(st.integers(0, 10_000), max_size=10), crlf=st.booleans())
def test_fuzz_serial_ascii_round_trip(rows: list[list[int]], cuts: list[int], crlf: bool) -> None:
    data = encode_ascii(np.array(rows), b"\r\n" if crlf else b"\n")
    dec = AsciiDecoder(channel=1)
    values = np.concatenate([dec.feed(p) for p in pieces(data, cuts)] or [np.zeros(0)])
    assert values.tolist() == [float(r[1]) for r in rows]
    assert dec.bad_lines == 0


@fuzz_settings(500)
@given(chunks=st.lists(st.binary(max_size=600), max_size=12), channel=st.integers(0, MAX_CHANNELS))
def test_fuzz_serial_frames_any_bytes(chunks: list[bytes], channel: int) -> None:
    dec = FrameDecoder(channel)
    for chunk in chunks:
        for frame in dec.feed(chunk):
            assert 1 <= frame.samples.size <= 255 and frame.samples.dtype == np.float64
            assert np.all((frame.samples >= -32768) & (frame.samples <= 32767))
            assert 0 <= frame.seq <= 0xFFFF and frame.lost >= 0
        assert len(dec._buf) < frame_size(255, MAX_CHANNELS)  # never more than one frame buffered
    assert all(v >= 0 for v in dec.counts().values())


@fuzz_settings(500)
@given(chunks=st.lists(st.binary(max_size=600), max_size=12), channel=st.integers(0, 3), lead2=st.integers(0, 5),
       blocks=st.lists(st.integers(1, 4), max_size=4))
def test_fuzz_serial_frames_second_lead(chunks: list[bytes], channel: int, lead2: int, blocks: list[int]) -> None:
    if lead2 == channel:
        return
    # Random bytes between real frames of 1 to 4 channels: every frame that decodes has both.
    rng = np.random.default_rng(len(chunks))
    wire = b"".join(c + encode_frame(i, rng.integers(-99, 99, (3, k)).astype(np.int16))
                    for i, (c, k) in enumerate(zip(chunks, blocks)))
    dec, missing = FrameDecoder(channel, lead2), 0
    for frame in dec.feed(wire):
        assert frame.samples2 is not None and frame.samples2.shape == frame.samples.shape
        assert np.isfinite(frame.samples).all()
        if np.isnan(frame.samples2).any():
            assert np.isnan(frame.samples2).all()
            missing += frame.samples2.size
    assert dec.counts()["lead2_missing"] == missing


@fuzz_settings(300)
@given(data=st.data(), n=st.integers(1, 255), channels=st.integers(1, 4), frames=st.integers(1, 6))
def test_fuzz_serial_frames_mutated(data: st.DataObject, n: int, channels: int, frames: int) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    wire = bytearray(b"".join(
        encode_frame(i, rng.integers(-32768, 32768, (n, channels)).astype(np.int16)) for i in range(frames)))
    for _ in range(data.draw(st.integers(0, 8))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    dec = FrameDecoder(data.draw(st.integers(0, channels)))
    got = [f for p in pieces(bytes(wire[:cut]), data.draw(st.lists(st.integers(0, 5000), max_size=6)))
           for f in dec.feed(p)]
    assert len(got) <= frames
    for frame in got:
        assert 1 <= frame.samples.size <= 255 and np.all(np.abs(frame.samples) <= 32768)


@fuzz_settings(300)
@given(data=st.data(), channels=st.integers(1, MAX_CHANNELS), first_seq=st.integers(0, 0xFFFF))
def test_fuzz_serial_frames_round_trip(data: st.DataObject, channels: int, first_seq: int) -> None:
    n = data.draw(st.integers(1, 255))
    blocks = [data.draw(hnp.arrays(np.int16, (n, channels))) for _ in range(data.draw(st.integers(1, 4)))]
    channel = data.draw(st.integers(0, channels - 1))
    wire = b"".join(encode_frame(first_seq + i, b) for i, b in enumerate(blocks))
    dec = FrameDecoder(channel)
    got = [f for p in pieces(wire, data.draw(st.lists(st.integers(0, 20_000), max_size=8))) for f in dec.feed(p)]
    assert [f.seq for f in got] == [(first_seq + i) & 0xFFFF for i in range(len(blocks))]
    assert all(f.lost == 0 for f in got)
    for f, b in zip(got, blocks):
        assert f.samples.tolist() == b[:, channel].astype(float).tolist()
    assert dec.counts()["crc_errors"] == dec.counts()["garbage_bytes"] == 0
    assert math.isclose(sum(f.samples.size for f in got), n * len(blocks))
