"""How a ward's streams are laid out on NATS: subjects, the partition mapping the server applies,
the JetStream stream that keeps them, and the ``nats://`` address of a ward worker.

Devices publish each message of bed ``bed3`` on ``<prefix>.bed3`` (``ward.bed3``), with the
payloads of MQTT telemetry (JSON or ``ECG1`` binary, ``ecgmon/payloads/mqtt.py``). The server
rewrites that subject to ``<prefix>.part.<p>.bed3`` with its deterministic subject mapping
``partition(P, 1)`` (a hash of the stream token), so every message of one stream lands in the
same partition ``p`` without the device knowing how many partitions or daemons there are. A
JetStream stream keeps ``<prefix>.part.>`` and the daemon that holds the lease of partition
``p`` reads it, in order, through one consumer. The mapping lives in the server's config
(``server_config`` writes it; ``ecgmon ward nats-conf`` prints it), because nats-server 2.9 has
no per-stream subject transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from urllib.parse import parse_qsl, urlsplit

URL_FORM = "nats://[USER:PASSWORD@]HOST[:PORT]/PREFIX[?partitions=16&lease_s=3&member=NAME&max_streams=N]"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
# The password of an address, shown as *** wherever a spec is quoted.
_PASSWORD = re.compile(r"((?:nats|tls)://[^\s/?#@:]*:)[^\s/?#]*@", re.IGNORECASE)


class WardUrlError(ValueError):
    """A ``nats://`` ward address that cannot be used; the message says how to write it."""


def redact(text: str) -> str:
    return _PASSWORD.sub(r"\1***@", text)


def stream_name(prefix: str) -> str:
    """The JetStream stream of a ward (``ward`` → ``ECGMON_ward``); stream names allow no dots."""
    return f"ECGMON_{prefix.replace('.', '_')}"


def kv_bucket(prefix: str) -> str:
    """The key-value bucket holding the ward's leases and members."""
    return f"ecgmon_{prefix.replace('.', '_')}_leases"


def device_subject(prefix: str, stream: str) -> str:
    """Where a device publishes bed ``stream``'s samples."""
    return f"{prefix}.{stream}"


def partition_filter(prefix: str, partition: int) -> str:
    """The subjects of one partition, after the server's mapping."""
    return f"{prefix}.part.{partition}.*"


def stream_subjects(prefix: str) -> list[str]:
    return [f"{prefix}.part.>"]


def consumer_name(partition: int) -> str:
    return f"part-{partition}"


def server_mapping(prefix: str, partitions: int) -> str:
    """The ``mappings`` block of nats-server's config that partitions ``<prefix>.*``."""
    return (f'mappings = {{\n  "{prefix}.*": "{prefix}.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}"\n}}\n')


def server_config(host: str, port: int, store_dir: str, prefix: str, partitions: int) -> str:
    """A whole nats-server config: one listener, JetStream on disk, and the ward's mapping."""
    return (f"listen: {host}:{port}\n"
            f'jetstream {{ store_dir: "{store_dir}" }}\n'
            f"{server_mapping(prefix, partitions)}")


@dataclass(frozen=True)
class WardUrl:
    """A parsed ward address; ``servers`` is what the NATS client connects to (credentials in it)."""

    servers: str = field(repr=False)  # holds the password, if any: never in a log
    shown: str
    prefix: str
    partitions: int
    lease_s: float
    member: str | None
    max_streams: int


def parse_ward_url(url: str) -> WardUrl:
    """``nats://host:4222/ward?partitions=16`` → its parts; WardUrlError saying what is wrong."""
    shown = redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("nats", "tls"):
        raise WardUrlError(f"'{shown}': not a NATS address; write {URL_FORM}")
    rest, _, query = rest.partition("?")
    netloc, _, prefix = rest.partition("/")
    try:
        parts = urlsplit("//" + netloc)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise WardUrlError(f"'{shown}': bad server address: {err}") from None
    if not host:
        raise WardUrlError(f"'{shown}': no server host; write {URL_FORM}")
    prefix = prefix or "ward"
    if not all(_TOKEN.match(t) for t in prefix.split(".")):
        raise WardUrlError(f"'{shown}': the prefix '{prefix}' must be subject tokens of letters, digits, "
                           f"'_' or '-' joined by '.' (ward, hospital.ward1)")
    try:
        params = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError:
        raise WardUrlError(f"'{shown}': malformed parameters, expected key=value pairs joined by &") from None
    unknown = set(params) - {"partitions", "lease_s", "member", "max_streams"}
    if unknown:
        raise WardUrlError(f"'{shown}': unknown parameter {sorted(unknown)[0]!r}; write {URL_FORM}")
    try:
        partitions = int(params.get("partitions", 16))
        lease_s = float(params.get("lease_s", 3.0))
        max_streams = int(params.get("max_streams", 2000))
    except ValueError as err:
        raise WardUrlError(f"'{shown}': {err}") from None
    if not 1 <= partitions <= 1024 or not 1.0 <= lease_s <= 60.0 or max_streams < 1:
        raise WardUrlError(f"'{shown}': partitions must be 1-1024, lease_s 1-60 s, max_streams at least 1")
    member = params.get("member")
    if member is not None and not _TOKEN.match(member):
        raise WardUrlError(f"'{shown}': member '{member}': letters, digits, '_' or '-'")
    # Kept URL-encoded: the client parses the address again.
    user = f"{parts.username}:{parts.password or ''}@" if parts.username else ""
    servers = f"{scheme}://{user}{host}:{port or 4222}"
    return WardUrl(servers, shown, prefix, partitions, lease_s, member, max_streams)
