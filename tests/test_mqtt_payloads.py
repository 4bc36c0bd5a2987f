"""MQTT payloads and addresses: round trips, and every malformed kind a clear PayloadError."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ecgmon.payloads.mqtt import (
    HEADER,
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES,
    MqttUrlError,
    PayloadError,
    decode,
    encode_binary,
    encode_json,
    parse_mqtt_url,
    stream_id_of,
    wildcard_levels,
)

SAMPLES = (np.sin(np.arange(36) / 5) * 1.3 - 0.145).astype(np.float32)


def good(**changes) -> bytes:
    body = {"v": 1, "seq": 7, "start": 252, "fs": 360.0, "lead": "MLII", "units": "mV",
            "samples": [0.1, -0.2, 1.5]}
    body.update(changes)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_json_round_trip_is_exact() -> None:
    p = decode(encode_json(7, 252, 360.0, "MLII", SAMPLES))
    assert (p.seq, p.start, p.fs, p.lead, p.n) == (7, 252, 360.0, "MLII", 36)
    assert p.samples.dtype == np.float32
    np.testing.assert_array_equal(p.samples, SAMPLES)


def test_json_units_and_defaults() -> None:
    p = decode(good(units="uV", samples=[1000, -250]))
    np.testing.assert_allclose(p.samples, [1.0, -0.25])
    p = decode(good(lead=..., units=...))
    assert p.lead == "ECG"
    np.testing.assert_allclose(p.samples, [0.1, -0.2, 1.5], rtol=1e-6)
    assert decode(b"  \n" + good()).seq == 7  # leading whitespace is still JSON


def test_binary_round_trip_within_a_microvolt() -> None:
    raw = encode_binary(3, 10**12, 250.0, "II", SAMPLES)
    assert raw[:4] == b"ECG1" and len(raw) == HEADER.size + 2 + 2 * 36
    p = decode(raw)
    assert (p.seq, p.start, p.fs, p.lead, p.n) == (3, 10**12, 250.0, "II", 36)
    assert np.max(np.abs(p.samples - SAMPLES)) <= 0.0005 + 1e-7


def test_binary_widens_its_scale_instead_of_clipping() -> None:
    big = np.array([0.0, 100.0, -80.0], dtype=np.float32)  # beyond ±32.767 mV at 1 µV
    p = decode(encode_binary(0, 0, 360.0, "", big))
    np.testing.assert_allclose(p.samples, big, atol=0.01)
    assert p.lead == "ECG"


def test_binary_layout_is_as_documented() -> None:
    """A device in another language writes exactly this: the README's table."""
    raw = (struct.pack("<4sBBHIQff", b"ECG1", 1, 4, 3, 9, 720, 360.0, 0.005) + b"MLII"
           + struct.pack("<3h", 200, -100, 0))
    p = decode(raw)
    assert (p.seq, p.start, p.fs, p.lead) == (9, 720, 360.0, "MLII")
    np.testing.assert_allclose(p.samples, [1.0, -0.5, 0.0], rtol=1e-6)


def test_second_lead_json_and_binary_layout_as_documented() -> None:
    # JSON: samples2 beside samples, null for a value the device does not have.
    p = decode(good(samples2=[0.5, None, -1.0], lead2="V1"))
    np.testing.assert_allclose(p.samples, [0.1, -0.2, 1.5], rtol=1e-6)
    np.testing.assert_array_equal(p.samples2, np.array([0.5, np.nan, -1.0], np.float32))
    assert p.lead2 == "V1"
    assert decode(good(samples2=[1000, 2000, None], units="uV")).samples2[1] == np.float32(2.0)  # same units
    # A bool is no value (numpy alone would read true as 1.0 beside numbers).
    with_bool = decode(good(samples2=[0.5, True, -1.0])).samples2
    np.testing.assert_array_equal(with_bool, np.array([0.5, np.nan, -1.0], np.float32))
    assert decode(good()).samples2 is None and decode(BINARY).samples2 is None
    # Binary version 2, as the README's table says: version 1, then L2, the name, the samples;
    # -32768 is a missing value.
    raw = (struct.pack("<4sBBHIQff", b"ECG1", 2, 4, 3, 9, 720, 360.0, 0.005) + b"MLII"
           + struct.pack("<3h", 200, -100, 0) + bytes([2]) + b"V1" + struct.pack("<3h", -32768, 50, -200))
    p = decode(raw)
    np.testing.assert_allclose(p.samples, [1.0, -0.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(p.samples2, [np.nan, 0.25, -1.0], rtol=1e-6)
    assert p.lead2 == "V1"
    back = decode(encode_binary(9, 720, 360.0, "MLII", p.samples, p.samples2, "V1"))
    np.testing.assert_allclose(back.samples2, p.samples2, atol=0.0005)
    with pytest.raises(ValueError, match="second lead has 2 samples"):
        encode_json(0, 0, 360.0, "II", np.zeros(3), np.zeros(2))


@pytest.mark.parametrize("second, lead2", [
    ("x", "V1"), ({"a": 1}, "V1"), ([1, 2], "V1"), ([1, 2, 3, 4], "V1"), ([[1], [2], [3]], "V1"),
    ([1, 2, 3], "x" * 40), ([1, 2, 3], 7), ([1, 2, 3], ""),
])
def test_bad_second_lead_keeps_the_first(second: object, lead2: object) -> None:
    p = decode(good(samples2=second, lead2=lead2))
    np.testing.assert_allclose(p.samples, [0.1, -0.2, 1.5], rtol=1e-6)
    if isinstance(lead2, str) and 0 < len(lead2) <= 32:
        assert np.isnan(p.samples2).all() and p.lead2 == "V1"
    else:  # a bad name only: the default name, the values kept
        assert p.lead2 == "ECG2" and p.samples2.tolist() == [1, 2, 3]


def test_binary_second_lead_part_cut_or_padded_keeps_the_first() -> None:
    raw = encode_binary(1, 0, 360.0, "MLII", SAMPLES, SAMPLES[::-1], "V1")
    first = HEADER.size + 4 + 2 * SAMPLES.size
    for bad in (raw[:first], raw[: first + 1], raw[:-1], raw + b"\x00", raw[:first] + bytes([40]) + raw[first + 1:]):
        p = decode(bad)
        np.testing.assert_allclose(p.samples, decode(BINARY).samples)
        assert np.isnan(p.samples2).all()


BINARY = encode_binary(1, 0, 360.0, "MLII", SAMPLES)


@pytest.mark.parametrize("payload, reason", [
    (b"", "empty"),
    (b"hello", "neither"),
    (b"ECG2" + BINARY[4:], "neither"),
    (b"\x00\x01\x02", "neither"),
    (b"[1, 2, 3]", "neither"),
    (b"{not json", "not valid JSON"),
    (b"{\"v\": 1, \"seq\": \xff}", "not valid JSON"),
    (good(seq=...), "missing field: seq"),
    (good(samples=..., fs=...), "missing fields: fs, samples"),
    (good(v=2), "unsupported version"),
    (good(seq="7"), "'seq' must be an integer"),
    (good(seq=1.5), "'seq' must be an integer"),
    (good(start=True), "'start' must be an integer"),
    (good(start=-1), "out of range"),
    (good(fs="360"), "'fs' must be a number"),
    (good(fs=0), "outside the detector's range (125-1000 Hz)"),
    (good(fs=-360.0), "outside the detector's range"),
    (good(fs=1e9), "outside the detector's range"),
    (b'{"v":1,"seq":0,"start":0,"fs":NaN,"samples":[1]}', "outside the detector's range"),
    (good(lead=3), "'lead' must be a string"),
    (good(lead="L" * 40), "at most 32 printable"),
    (good(units="furlongs"), "unknown units"),
    (good(samples="0.1,0.2"), "'samples' must be a list"),
    (good(samples=[]), "no samples"),
    (good(samples=[0.1, "0.2"]), "flat list of numbers"),
    (good(samples=[0.1, None]), "flat list of numbers"),
    (good(samples=[True, False]), "flat list of numbers"),
    (good(samples=[0.1, True]), "flat list of numbers"),  # numpy alone would read 1.0
    (good(samples=[[0.1], [0.2]]), "flat list of numbers"),
    (good(samples=[10**40]), "flat list of numbers"),
    (b'{"v":1,"seq":0,"start":0,"fs":360,"samples":[0.1,NaN]}', "NaN or infinite"),
    (b'{"v":1,"seq":0,"start":0,"fs":360,"samples":[Infinity]}', "NaN or infinite"),
    (good(samples=[1e39]), "NaN or infinite"),  # finite in JSON, not in float32
    # Found by the fuzzing (tests/test_fuzz_payloads.py): each raised TypeError, ValueError or
    # RecursionError out of decode, or (the last two) gave a lead or samples no pipeline can take.
    (good(units=[]), "'units' must be a string"),
    (good(samples=[[1, 2], [3]]), "flat list of numbers"),
    (good(samples=[1, [2]]), "flat list of numbers"),
    (good(samples=[0.0, []]), "flat list of numbers"),
    (good(samples=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]), "flat list of numbers"),
    (b'{"v":1,"seq":0,"start":0,"fs":360,"samples":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (good(lead="II\n"), "printable"),
    (HEADER.pack(b"ECG1", 1, 1, 1, 0, 0, 360.0, 0.001) + b"\x00\x01\x00", "printable"),
    (HEADER.pack(b"ECG1", 1, 0, 1, 0, 0, 360.0, 3.4e38) + b"\x02\x00", "NaN or infinite"),
    (good(samples=[0.0] * (MAX_SAMPLES + 1)), "samples exceed"),
    (b"{" + b" " * MAX_PAYLOAD_BYTES + b"}", "exceeds"),
    (BINARY[:10], "header truncated"),
    (BINARY[:-1], "truncated"),
    (BINARY + b"\x00\x00", "trailing bytes"),
    (BINARY[:4] + b"\x03" + BINARY[5:], "unsupported binary version"),
    (HEADER.pack(b"ECG1", 1, 0, 0, 0, 0, 360.0, 0.001), "no samples"),
    (HEADER.pack(b"ECG1", 1, 0, 1, 0, 0, float("nan"), 0.001) + b"\x00\x00", "bad 'fs'"),
    (HEADER.pack(b"ECG1", 1, 0, 1, 0, 0, 360.0, 0.0) + b"\x00\x00", "scale must be"),
    (HEADER.pack(b"ECG1", 1, 0, 1, 0, 0, 360.0, float("inf")) + b"\x00\x00", "scale must be"),
    (HEADER.pack(b"ECG1", 1, 200, 1, 0, 0, 360.0, 0.001) + b"x" * 202, "lead name of 200"),
    (HEADER.pack(b"ECG1", 1, 2, 1, 0, 0, 360.0, 0.001) + b"\xff\xfe\x00\x00", "not ASCII"),
    (HEADER.pack(b"ECG1", 1, 0, 1, 0, 2**64 - 1, 360.0, 0.001) + b"\x00\x00", "start out of range"),
])
def test_malformed_payloads_are_clear_errors(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        decode(payload)
    assert reason in str(err.value)
    assert len(str(err.value)) < 200  # a short reason, never the payload itself


def test_random_bytes_never_escape_as_other_errors() -> None:
    rng = np.random.default_rng(1)
    for n in [1, 4, 27, 28, 29, 100, 1000]:
        for _ in range(200):
            junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            for payload in (junk, b"ECG1" + junk, b"{" + junk):
                try:
                    decode(payload)
                except PayloadError:
                    pass


def test_mqtt_urls() -> None:
    u = parse_mqtt_url("mqtt://127.0.0.1:1884/ward1/+/ecg?qos=0&client_id=x", wildcards=True)
    assert (u.tls, u.host, u.port, u.topic, u.params) == (False, "127.0.0.1", 1884, "ward1/+/ecg",
                                                          {"qos": "0", "client_id": "x"})
    u = parse_mqtt_url("mqtts://nurse:p%40ss@broker.example/ward1/#", wildcards=True)
    assert (u.tls, u.port, u.username, u.password, u.topic) == (True, 8883, "nurse", "p@ss", "ward1/#")
    assert parse_mqtt_url("mqtt://[::1]/a", wildcards=False).host == "::1"
    for bad, needle in [
        ("http://h/a", "not an MQTT address"),
        ("mqtt://h", "no topic"),
        ("mqtt://h/", "no topic"),
        ("mqtt://:1883/a", "no broker host"),
        ("mqtt://h:99999/a", "bad broker address"),
        ("mqtt://h:port/a", "bad broker address"),
        ("mqtt://h/ward1/bed+/ecg", "'+' must fill a whole level"),
        ("mqtt://h/ward1/#/ecg", "'#' must be the whole last level"),
        ("mqtt://h/a?qos", "malformed parameters"),
    ]:
        with pytest.raises(MqttUrlError) as err:
            parse_mqtt_url(bad, wildcards=True)
        assert needle in str(err.value), (bad, str(err.value))
    with pytest.raises(MqttUrlError, match="publish to a plain topic"):
        parse_mqtt_url("mqtt://h/ward1/+/ecg", wildcards=False)


def test_stream_ids_from_wildcard_levels() -> None:
    assert wildcard_levels("ward1/+/ecg", "ward1/bed3/ecg") == ["bed3"]
    assert wildcard_levels("ward1/+/ecg", "ward1/bed3/pleth") is None
    assert wildcard_levels("ward1/+/ecg", "ward1/bed3/ecg/x") is None
    assert wildcard_levels("+/+/ecg", "ward2/bed1/ecg") == ["ward2", "bed1"]
    assert wildcard_levels("ward1/#", "ward1/bed3/ecg") == ["bed3", "ecg"]
    assert wildcard_levels("ward1/#", "ward1") == []
    assert wildcard_levels("ward1/bed3/ecg", "ward1/bed3/ecg") == []
    assert stream_id_of(["ward2", "bed1"]) == "ward2-bed1"
    assert stream_id_of(["bed 3.1"]) == "bed_3_1"
    assert stream_id_of([""]) == ""
