"""One face for a ward served by several daemons: ZeroMQ's own forwarder (``zmq.proxy``) between
an XSUB socket connected to every daemon's publisher and an XPUB socket subscribers connect to.

Subscribers and dashboards see every stream of the ward on one endpoint, whichever daemon serves
it now; a stream that moves to another daemon simply arrives from another publisher (its
messages' ``pub`` changes and its ``seq`` starts again). Subscriptions travel upstream, so a
subscriber asking for ``beat.`` gets only beats from every daemon. ZeroMQ reconnects to a daemon
that restarts on its own.

Security is CURVE as the daemon has it: the front is a CURVE server letting in only the allowed
client keys (and refuses to bind beyond loopback without keys, unless ``insecure``); towards the
daemons the proxy is a CURVE client with a key of its own, which the daemons must allow. The
proxy decrypts and re-encrypts: it holds the ward's server secret key and its own client
secret key, so it belongs on a host as trusted as the daemons'.

A leaf of the package but for ``curve`` (ZeroMQ only), like the dashboard's side.
"""

from __future__ import annotations

import zmq

from ecgmon.curve import ClientKeys, ServerKeys, check_bind

_CONTROL = "inproc://ecgmon-ward-proxy-control"


class WardProxy:
    """The two sockets, bound and connected; ``run`` forwards until ``stop``."""

    def __init__(self, endpoint: str, daemons: list[str], hwm: int, server: ServerKeys | None = None,
                 client: ClientKeys | None = None, insecure: bool = False) -> None:
        check_bind(endpoint, server is not None, insecure, "publisher")
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.XPUB)
        self.back = self.ctx.socket(zmq.XSUB)
        self._auth = server.protect(self.front) if server is not None else None
        # As the daemon's publisher: a slow subscriber loses its own messages, nobody else's.
        self.front.setsockopt(zmq.SNDHWM, hwm)
        self.back.setsockopt(zmq.RCVHWM, hwm)
        for sock in (self.front, self.back):
            sock.setsockopt(zmq.LINGER, 0)
        self.front.bind(endpoint)
        self.endpoint = self.front.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        if client is not None:
            client.apply(self.back)
        for daemon in daemons:
            self.back.connect(daemon)

    def run(self) -> None:
        """Forward both ways until ``stop`` (from another thread)."""
        # A steerable proxy ends cleanly on TERMINATE; closing its sockets under it would not.
        ctl = self.ctx.socket(zmq.PAIR)
        ctl.bind(_CONTROL)
        try:
            zmq.proxy_steerable(self.front, self.back, None, ctl)
        except zmq.ContextTerminated:
            pass  # closed under it (a stop that came too late): the end all the same
        finally:
            ctl.close(linger=0)

    def stop(self) -> None:
        ctl = self.ctx.socket(zmq.PAIR)
        ctl.connect(_CONTROL)  # inproc: fine before the bind, ZeroMQ queues it
        ctl.send(b"TERMINATE")
        ctl.close(linger=1000)

    def close(self) -> None:
        for sock in (self.front, self.back):
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()
