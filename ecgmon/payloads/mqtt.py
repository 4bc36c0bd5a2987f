"""MQTT telemetry: the ECG payloads (JSON and compact binary, encoder and decoder side by side)
and the ``mqtt://`` address form, shared by the daemon's source and the device simulator.

JSON payload (UTF-8 object)::

    {"v": 1, "seq": 42, "start": 15120, "fs": 360.0, "lead": "MLII", "units": "mV",
     "samples": [-0.145, -0.145, ...]}

``seq`` counts messages from 0; ``start`` is the device's index of the first sample (so
consecutive messages have ``start == previous start + previous len(samples)``); ``lead`` and
``units`` (``mV``, ``uV`` or ``V``) are optional (``ECG``, ``mV``).

A second lead is optional: ``"samples2"``, a list as long as ``samples`` (``null`` for a value
the device does not have), and ``"lead2"``, its name (``ECG2``). It never costs the first lead:
a value of it that is no number is NaN, a ``samples2`` that is no list or of another length is
NaN throughout, a bad ``lead2`` name is ``ECG2``.

Binary payload, little-endian, 28-byte header then the lead name then the samples::

    offset  size  type     field
    0       4     bytes    magic b"ECG1"
    4       1     u8       version (1)
    5       1     u8       L, length of the lead name (0..32)
    6       2     u16      n, number of samples (1..65535)
    8       4     u32      seq
    12      8     u64      start
    20      4     f32      fs, Hz (125..1000: the detector's range)
    24      4     f32      scale, mV per LSB (1 µV = 0.001 by default)
    28      L     ASCII    lead name
    28+L    2n    i16      samples: mV = value * scale

Version 2 is version 1 followed by a second lead, at the same scale::

    28+L+2n      1     u8     L2, length of its name (0..32)
    29+L+2n      L2    ASCII  its name
    29+L+L2+2n   2n    i16    its samples; -32768 (which the encoder never writes for a
                              value, it clips at +-32767) marks a value the device does not have

A version 2 payload whose second-lead part is cut short, too long or not ASCII keeps its first
lead; the second is NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import math
import re
import struct
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from ecgmon.rates import ecg_rate_problem

MAGIC = b"ECG1"
VERSION = 1
VERSION_TWO_LEADS = 2  # binary only: JSON carries the second lead in optional fields
LEAD2_DEFAULT = "ECG2"
_MISSING = -32768  # binary second lead: no value
HEADER = struct.Struct("<4sBBHIQff")
MAX_PAYLOAD_BYTES = 1 << 20
MAX_SAMPLES = 100_000
MAX_LEAD_CHARS = 32
DEFAULT_SCALE_MV = 0.001
_INT16_MAX = 32767
_UNITS_TO_MV = {"mV": 1.0, "uV": 1e-3, "µV": 1e-3, "V": 1e3}
_MAX_INDEX = 2**63 - 1


class PayloadError(ValueError):
    """A payload that cannot be read; the message is a short reason."""


@dataclass(frozen=True, slots=True)
class EcgPayload:
    """One message of one stream: ``samples`` float32 mV, the first at device index ``start``.

    A decoded payload is always valid: 1 to MAX_SAMPLES finite samples, ``fs`` in the detector's
    range, ``seq`` and ``start`` from 0 to 2**63-1, a printable ``lead`` of 1 to 32 characters.
    ``samples2``, the second lead, is None (the payload has none) or float32 of the same length,
    NaN where the device gave no usable value; ``lead2`` then names it.
    """

    seq: int
    start: int
    fs: float
    lead: str
    samples: np.ndarray
    samples2: np.ndarray | None = None
    lead2: str = LEAD2_DEFAULT

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])


# --------------------------------------------------------------------------- encoding


def encode_json(seq: int, start: int, fs: float, lead: str, samples: np.ndarray,
                samples2: np.ndarray | None = None, lead2: str = LEAD2_DEFAULT) -> bytes:
    """The JSON form; float32 samples survive the round trip exactly. ``samples2`` (same
    length) adds a second lead, its NaN as ``null``."""
    values = np.asarray(samples, dtype=np.float32).ravel()
    body = {"v": VERSION, "seq": int(seq), "start": int(start), "fs": float(fs), "lead": lead,
            "units": "mV", "samples": values.tolist()}
    if samples2 is not None:
        second = _second_values(samples2, values.size).tolist()
        body["lead2"] = lead2
        body["samples2"] = [v if math.isfinite(v) else None for v in second]
    return json.dumps(body, separators=(",", ":")).encode()


def encode_binary(
    seq: int, start: int, fs: float, lead: str, samples: np.ndarray,
    samples2: np.ndarray | None = None, lead2: str = LEAD2_DEFAULT, scale_mv: float = DEFAULT_SCALE_MV,
) -> bytes:
    """The binary form (version 2 with ``samples2``, a second lead of the same length);
    ``scale_mv`` is widened for this message if the samples would clip."""
    values = np.asarray(samples, dtype=np.float64).ravel()
    if not 0 < values.size <= 0xFFFF:
        raise ValueError(f"a binary payload holds 1..65535 samples, not {values.size}")
    second = None if samples2 is None else _second_values(samples2, values.size).astype(np.float64)
    peak = float(np.max(np.abs(values)))
    if second is not None and np.isfinite(second).any():
        peak = max(peak, float(np.nanmax(np.abs(second))))
    if peak > _INT16_MAX * scale_mv:
        scale_mv = peak / _INT16_MAX
    lead_bytes = lead.encode("ascii", "replace")[:MAX_LEAD_CHARS]
    ints = np.round(values / scale_mv).clip(-_INT16_MAX, _INT16_MAX).astype("<i2")
    version = VERSION if second is None else VERSION_TWO_LEADS
    # seq wraps at 2**32 (13 years of 10 messages a second); start never needs to.
    header = HEADER.pack(MAGIC, version, len(lead_bytes), values.size, seq & 0xFFFFFFFF, start, fs, scale_mv)
    out = header + lead_bytes + ints.tobytes()
    if second is not None:
        name = lead2.encode("ascii", "replace")[:MAX_LEAD_CHARS]
        with np.errstate(invalid="ignore"):
            ints2 = np.round(second / scale_mv).clip(-_INT16_MAX, _INT16_MAX)
        ints2 = np.where(np.isfinite(second), ints2, _MISSING).astype("<i2")
        out += bytes([len(name)]) + name + ints2.tobytes()
    return out


def _second_values(samples2: np.ndarray, n: int) -> np.ndarray:
    values = np.asarray(samples2, dtype=np.float32).ravel()
    if values.size != n:
        raise ValueError(f"the second lead has {values.size} samples, the first {n}")
    return values


# --------------------------------------------------------------------------- decoding


def decode(payload: bytes) -> EcgPayload:
    """Either form, detected by its first bytes; PayloadError says what is wrong."""
    if not payload:
        raise PayloadError("empty payload")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if payload[:4] == MAGIC:
        return _decode_binary(bytes(payload))
    if payload.lstrip()[:1] == b"{":
        return _decode_json(bytes(payload))
    raise PayloadError(f"neither a JSON object nor binary {MAGIC.decode()} (starts {bytes(payload[:8])!r})")


def _decode_binary(payload: bytes) -> EcgPayload:
    if len(payload) < HEADER.size:
        raise PayloadError(f"binary header truncated: {len(payload)} of {HEADER.size} bytes")
    _, version, lead_len, n, seq, start, fs, scale = HEADER.unpack_from(payload)
    if version not in (VERSION, VERSION_TWO_LEADS):
        raise PayloadError(f"unsupported binary version {version}")
    if lead_len > MAX_LEAD_CHARS:
        raise PayloadError(f"lead name of {lead_len} bytes exceeds {MAX_LEAD_CHARS}")
    if n == 0:
        raise PayloadError("no samples")
    expected = HEADER.size + lead_len + 2 * n
    tail = b""
    if version == VERSION_TWO_LEADS:
        tail, payload = payload[expected:], payload[:expected]  # the second lead's part
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "has trailing bytes"
        raise PayloadError(f"binary payload {what}: {len(payload)} bytes, header says {expected}")
    if start > _MAX_INDEX:
        raise PayloadError("start out of range")
    _check_fs(fs)
    if not (math.isfinite(scale) and scale > 0):
        raise PayloadError(f"scale must be a positive number, not {scale}")
    try:
        lead = payload[HEADER.size : HEADER.size + lead_len].decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("lead name is not ASCII") from None
    ints = np.frombuffer(payload, dtype="<i2", count=n, offset=HEADER.size + lead_len)
    with np.errstate(over="ignore"):  # a huge scale overflows float32: rejected by _finite
        samples = (ints * np.float64(scale)).astype(np.float32)
    samples = _finite(samples)
    if version == VERSION:
        return EcgPayload(seq, start, float(fs), _lead(lead), samples)
    samples2, lead2 = _binary_second_lead(tail, n, scale)
    return EcgPayload(seq, start, float(fs), _lead(lead), samples, samples2, lead2)


def _binary_second_lead(tail: bytes, n: int, scale: float) -> tuple[np.ndarray, str]:
    """The second lead of a version 2 payload; NaN throughout if its part is malformed, since
    the first lead, already checked, stands on its own."""
    unknown = np.full(n, np.nan, np.float32)
    if not tail or tail[0] > MAX_LEAD_CHARS or len(tail) != 1 + tail[0] + 2 * n:
        return unknown, LEAD2_DEFAULT
    try:
        name = _lead2_name(tail[1 : 1 + tail[0]].decode("ascii"))
    except UnicodeDecodeError:
        return unknown, LEAD2_DEFAULT
    ints = np.frombuffer(tail, dtype="<i2", count=n, offset=1 + tail[0])
    with np.errstate(over="ignore"):
        values = (ints * np.float64(scale)).astype(np.float32)
    values[(ints == _MISSING) | ~np.isfinite(values)] = np.nan
    return values, name


def _decode_json(payload: bytes) -> EcgPayload:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as err:
        raise PayloadError(f"not valid JSON: {err}") from None
    except RecursionError:  # json recurses once per level of nested lists or objects
        raise PayloadError("not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise PayloadError("JSON payload is not an object")
    missing = [k for k in ("v", "seq", "start", "fs", "samples") if k not in obj]
    if missing:
        raise PayloadError(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    if _int(obj, "v") != VERSION:
        raise PayloadError(f"unsupported version {obj['v']}")
    seq, start = _int(obj, "seq"), _int(obj, "start")
    fs = obj["fs"]
    if not _is_number(fs):
        raise PayloadError(f"'fs' must be a number, not {type(fs).__name__}")
    _check_fs(fs)
    lead = obj.get("lead", "ECG")
    if not isinstance(lead, str):
        raise PayloadError(f"'lead' must be a string, not {type(lead).__name__}")
    units = obj.get("units", "mV")
    if not isinstance(units, str):  # (a list is not even hashable)
        raise PayloadError(f"'units' must be a string, not {type(units).__name__}")
    if units not in _UNITS_TO_MV:
        raise PayloadError(f"unknown units {units[:20]!r} (use {', '.join(_UNITS_TO_MV)})")
    raw = obj["samples"]
    if not isinstance(raw, list):
        raise PayloadError(f"'samples' must be a list, not {type(raw).__name__}")
    if not raw:
        raise PayloadError("no samples")
    if len(raw) > MAX_SAMPLES:
        raise PayloadError(f"{len(raw)} samples exceed {MAX_SAMPLES}")
    # One numpy conversion checks every element: strings, None, bools, nesting or huge
    # integers give a dtype other than int/float (numpy would parse "1.5" only if asked to).
    # A ragged list ([[1, 2], [3]], [1, [2]]) or one nested past numpy's 64 dimensions is a
    # ValueError of numpy's own.
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iuf" or _has_bool(raw):
        raise PayloadError("'samples' must be a flat list of numbers")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow becomes inf, rejected next
        samples = (arr.astype(np.float64) * _UNITS_TO_MV[units]).astype(np.float32)
    samples = _finite(samples)
    if "samples2" not in obj:
        return EcgPayload(seq, start, float(fs), _lead(lead), samples)
    samples2 = _json_second_lead(obj["samples2"], samples.size, _UNITS_TO_MV[units])
    name = obj.get("lead2", LEAD2_DEFAULT)
    return EcgPayload(seq, start, float(fs), _lead(lead), samples, samples2,
                      _lead2_name(name) if isinstance(name, str) else LEAD2_DEFAULT)


def _json_second_lead(raw: object, n: int, to_mv: float) -> np.ndarray:
    """``samples2`` as float32 mV: NaN for each value that is not a number (``null`` above
    all), and throughout when it is no list of ``n`` values; never an error."""
    if not isinstance(raw, list) or len(raw) != n:
        return np.full(n, np.nan, np.float32)
    try:
        arr = np.asarray(raw)  # the common case in one step: a flat list of numbers
    except (ValueError, TypeError, OverflowError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iuf" or _has_bool(raw):
        # Mixed: numbers stay, anything else (null, strings, bools, lists, huge ints) is NaN.
        arr = np.array([float(v) if _is_number(v) and abs(v) < 1e300 else np.nan for v in raw])
    with np.errstate(over="ignore", invalid="ignore"):
        values = (arr.astype(np.float64) * to_mv).astype(np.float32)
    values[~np.isfinite(values)] = np.nan
    return values


def _has_bool(raw: list) -> bool:
    # numpy reads true/false beside numbers as 1.0/0.0 (a float array): a bool is no sample.
    return any(type(v) is bool for v in raw)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(obj: dict, key: str) -> int:
    value = obj[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise PayloadError(f"'{key}' must be an integer, not {type(value).__name__}")
    if not 0 <= value <= _MAX_INDEX:
        raise PayloadError(f"'{key}' out of range: {value}")
    return value


def _check_fs(fs: float) -> None:
    problem = ecg_rate_problem(fs)
    if problem:
        raise PayloadError(f"bad 'fs': {problem}")


def _lead(lead: str) -> str:
    """The lead name, ``ECG`` if empty; it goes into published messages, so printable only."""
    if len(lead) > MAX_LEAD_CHARS or not lead.isprintable():
        raise PayloadError(f"'lead' must be at most {MAX_LEAD_CHARS} printable characters")
    return lead or "ECG"


def _lead2_name(name: str) -> str:
    """The second lead's name, the default where it is unusable: it must not cost the first lead."""
    return name if 0 < len(name) <= MAX_LEAD_CHARS and name.isprintable() else LEAD2_DEFAULT


def _finite(samples: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(samples)):
        raise PayloadError("samples hold NaN or infinite values")
    return samples


# --------------------------------------------------------------------------- addresses


class MqttUrlError(ValueError):
    """An ``mqtt://`` address that cannot be used; the message says how to write it."""


URL_FORM = "mqtt://[USER:PASSWORD@]HOST[:PORT]/TOPIC[?key=value&...] (mqtts:// for TLS)"
# The password of an address: from "scheme://user:" to the last "@" before the path.
_PASSWORD = re.compile(r"(mqtts?://[^\s/?#@:]*:)[^\s/?#]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the password of every MQTT address in it shown as ``***``
    (``mqtt://nurse:s%40cret@host/t`` → ``mqtt://nurse:***@host/t``): specs go into logs,
    errors, events and status messages, which every subscriber reads."""
    return _PASSWORD.sub(r"\1***@", text)


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """A parsed ``mqtt://`` or ``mqtts://`` address; ``params`` is the query string."""

    tls: bool
    host: str
    port: int
    username: str | None
    password: str | None
    topic: str
    params: dict[str, str]

    @property
    def broker(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def __repr__(self) -> str:  # never the password, should one end up in a log
        return f"MqttUrl({self.broker}/{self.topic}, user={self.username!r})"


def parse_mqtt_url(url: str, *, wildcards: bool) -> MqttUrl:
    """Split an address; the topic is taken verbatim (not URL-decoded), so ``#`` works as is.

    ``wildcards`` says whether ``+``/``#`` are allowed (subscribing) or not (publishing).
    """
    shown = redact(url)  # what errors may quote
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise MqttUrlError(f"'{shown}': not an MQTT address; write {URL_FORM}")
    rest, _, query = rest.partition("?")
    netloc, slash, topic = rest.partition("/")
    if not slash or not topic:
        raise MqttUrlError(f"'{shown}': no topic after the broker; write {URL_FORM}")
    try:
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise MqttUrlError(f"'{shown}': bad broker address '{redact(scheme + '://' + netloc)}': {err}") from None
    if not host:
        raise MqttUrlError(f"'{shown}': no broker host; write {URL_FORM}")
    problem = topic_problem(topic, wildcards)
    if problem:
        raise MqttUrlError(f"'{shown}': {problem}")
    try:
        params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=True)) if query else {}
    except ValueError:
        raise MqttUrlError(f"'{shown}': malformed parameters, expected key=value pairs joined by &") from None
    tls = scheme == "mqtts"
    return MqttUrl(
        tls=tls, host=host, port=port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        topic=topic, params=params,
    )


def topic_problem(topic: str, wildcards: bool) -> str | None:
    """What is wrong with a topic (filter), or None."""
    if "\x00" in topic or len(topic.encode()) > 65535:
        return "topic holds a NUL character or is too long"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "+" in level or "#" in level:
            if not wildcards:
                return f"topic '{topic}' has a wildcard; publish to a plain topic such as ward1/bed3/ecg"
            if level not in ("+", "#") or (level == "#" and i != len(levels) - 1):
                return (f"bad topic filter '{topic}': '+' must fill a whole level and '#' "
                        f"must be the whole last level (ward1/+/ecg, ward1/#)")
    return None


def wildcard_levels(topic_filter: str, topic: str) -> list[str] | None:
    """The topic levels matched by the filter's ``+`` and ``#``, or None if it does not match."""
    want, have = topic_filter.split("/"), topic.split("/")
    matched: list[str] = []
    for i, level in enumerate(want):
        if level == "#":
            # '#' also matches the parent level itself (ward1/# matches ward1).
            return matched + have[i:]
        if i >= len(have) or (level != "+" and level != have[i]):
            return None
        if level == "+":
            matched.append(have[i])
    return matched if len(want) == len(have) else None


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def stream_id_of(levels: list[str]) -> str:
    """Wildcard levels as a topic-safe stream id: ``['bed3']`` → ``bed3``, ``['a', 'b.1']`` → ``a-b_1``."""
    return "-".join(_UNSAFE.sub("_", level) for level in levels if level)
