"""Who may reach the HTTP face: the bearer token (``$ECGMON_HTTP_TOKEN`` or ``[http]
token_file``), TLS, and the rule that an address beyond loopback is refused without one of
them, as the daemon refuses its ZeroMQ sockets without keys. The token is never logged,
never echoed in an error and compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from ecgmon.config import HttpConfig

TOKEN_ENV = "ECGMON_HTTP_TOKEN"


class HttpSetupError(Exception):
    """The HTTP face cannot start as configured; the message says what to do."""


def load_token(hc: HttpConfig) -> str | None:
    """The bearer token clients must send, or None when none is configured."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    if not hc.token_file:
        return None
    path = Path(hc.token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise HttpSetupError(f"[http] token_file {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if len(token) < 16:
        raise HttpSetupError(f"[http] token_file {path}: the token is shorter than 16 characters; "
                             f"make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def tls_files(hc: HttpConfig) -> tuple[str, str] | None:
    if bool(hc.tls_cert) != bool(hc.tls_key):
        raise HttpSetupError("[http] tls_cert and tls_key go together: give both or neither")
    if not hc.tls_cert:
        return None
    for key, value in (("tls_cert", hc.tls_cert), ("tls_key", hc.tls_key)):
        if not Path(value).expanduser().is_file():
            raise HttpSetupError(f"[http] {key} {value}: no such file")
    return str(Path(hc.tls_cert).expanduser()), str(Path(hc.tls_key).expanduser())


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # '0.0.0.0' is an address; a host name may resolve anywhere
        return False


def check_bind(host: str, token: str | None, tls: bool, insecure: bool) -> None:
    """Refuse an address beyond loopback without a token or TLS (unless ``insecure``)."""
    if is_loopback_host(host) or token or tls or insecure:
        return
    raise HttpSetupError(
        f"refusing to serve HTTP on {host} without a token or TLS: anyone who can reach it could read every "
        f"stream and send files to analyse; set ${TOKEN_ENV} or [http] token_file (and tls_cert/tls_key), bind "
        f"127.0.0.1, or say --insecure"
    )


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time comparison)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    return scheme.casefold() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())
