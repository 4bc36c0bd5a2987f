"""How ecgmon reaches an MQTT broker, shared by the daemon's source and the device simulator:
the client with its identity, credentials and TLS, the reconnect backoff, and a quiet logger
for the client library. One place, so the two ends cannot drift apart."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiomqtt

from ecgmon.config import MqttConfig
from ecgmon.payloads.mqtt import MqttUrl


class TlsSetupError(ValueError):
    """A CA file that cannot be used for TLS; the message names it and why."""


class _DebugOnly(logging.LoggerAdapter):
    """paho and aiomqtt log a lost connection as an error; our events and warnings already
    report it once, so their own lines go to debug."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)  # type: ignore[arg-type]


CLIENT_LOG = _DebugOnly(logging.getLogger("ecgmon.mqtt.client"), {})


def reason(err: BaseException) -> str:
    """Why a connection failed: aiomqtt's "Disconnected during message iteration" hides it."""
    return str(err.__cause__ or err) or type(err).__name__


class BrokerLink:
    """The broker of ``url`` as ``client_id``: credentials from the URL, else ``[mqtt]``; TLS
    for ``mqtts://`` or ``[mqtt] tls``. TlsSetupError at construction for an unusable CA file,
    so a bad setting is an error at start, not at the first connection."""

    def __init__(self, url: MqttUrl, options: MqttConfig, client_id: str, clean_session: bool | None = None) -> None:
        self.url = url
        self.options = options
        self.client_id = client_id
        self.clean_session = clean_session
        self.username = url.username if url.username is not None else (options.username or None)
        self._password = url.password if url.password is not None else (options.password or None)
        self.tls: ssl.SSLContext | None = None
        if url.tls or options.tls:
            try:
                self.tls = ssl.create_default_context(cafile=options.ca_file or None)
            except (OSError, ssl.SSLError) as err:
                raise TlsSetupError(f"cannot use CA file '{options.ca_file}' for TLS: {err}") from None

    @property
    def has_password(self) -> bool:
        return self._password is not None

    def client(self) -> aiomqtt.Client:
        o = self.options
        return aiomqtt.Client(
            self.url.host, self.url.port, identifier=self.client_id, clean_session=self.clean_session,
            keepalive=o.keepalive_s, username=self.username, password=self._password,
            tls_context=self.tls, logger=CLIENT_LOG,
        )

    def __repr__(self) -> str:  # never the password
        return f"BrokerLink({self.url.broker}, client_id={self.client_id!r}, user={self.username!r})"


class Backoff:
    """Waits between reconnection attempts: ``low`` seconds first, doubling up to ``high``."""

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.delay = low

    def reset(self) -> None:
        self.delay = self.low

    async def wait(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.high)
