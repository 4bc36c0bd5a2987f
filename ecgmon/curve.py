"""Who may read the daemon's messages and acknowledge its alarms: ZeroMQ's own CURVE security
(``zmq.auth``), never a scheme of ours.

Keys are ZeroMQ certificate files, laid out by ``ecgmon keys``::

    DIR/server.key            the daemon's public key: every client needs a copy
    DIR/server.key_secret     the daemon's secret key (mode 0600): stays with the daemon
    DIR/NAME.key_secret       a client's key pair (mode 0600): give it to that client only
    DIR/NAME.key              the client's public key
    DIR/allowed/NAME.key      the clients the daemon lets in, each named by its file name

A ZAP authenticator (pyzmq's ``ThreadAuthenticator``, in its own thread so that a busy event
loop never stalls a handshake) lets in only keys found in the allowed folder, re-read when
the folder changes (delete ``allowed/NAME.key`` to refuse NAME from its next connection), and
names each connection after the key's file: ZeroMQ hands that name to the daemon as the
``User-Id`` of every message, which is what an acknowledgement records.

A socket bound beyond loopback without keys would let anyone on the network read every
patient's data and silence alarms: ``check_bind`` refuses it unless told ``insecure``.

A leaf module (ZeroMQ and the standard library only), so that the dashboard can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
import ipaddress
import logging
import os
from pathlib import Path
import re
import stat
import threading

import zmq
from zmq.auth import create_certificates, load_certificate
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

log = logging.getLogger("ecgmon.curve")

SERVER_NAME = "server"
ALLOWED_FOLDER = "allowed"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
# A key's name is recorded with every acknowledgement: no spaces, so it cannot pass for an
# unauthenticated name (those end in " (unauthenticated)").
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The in-process dashboard of `ecgmon run` gets a key pair that lives only in memory.
CONSOLE_NAME = "console"
MAX_LOGGED_REFUSALS = 100  # distinct refused keys logged; a stranger cycling keys cannot flood the log


class CurveError(Exception):
    """A key file or folder that cannot be used, or an open bind without keys; says what to do."""


def check_name(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise CurveError(f"key name '{name}': use 1-64 letters, digits, '.', '_' or '-' (e.g. nurse1)")
    return name


def make_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new key pair ``folder/NAME.key`` (public) and ``folder/NAME.key_secret`` (mode 0600);
    never overwrites a key."""
    check_name(name)
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise CurveError(f"{path} exists: keep it, or remove it first to make a new pair "
                             f"(whoever holds the old key is then refused)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        create_certificates(folder, name)
    finally:
        os.umask(old)
    public.chmod(0o644)
    return public, secret


def _read(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    if not os.path.isfile(path):
        raise CurveError(f"key file {path} not found; make keys with `ecgmon keys`")
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as err:  # unreadable, or no public key in it
        raise CurveError(f"cannot use the key file {path}: {err}; make keys with `ecgmon keys`") from None
    for key in (public, secret):
        if key is not None and (len(key) != 40 or len(_z85_decode(key)) != 32):
            raise CurveError(f"{path}: not a CURVE key (40 Z85 characters); make keys with `ecgmon keys`")
    return public, secret


def _z85_decode(key: bytes) -> bytes:
    try:
        return z85.decode(key)
    except (ValueError, KeyError):  # characters outside Z85
        return b""


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file that only its owner can read."""
    public, secret = _read(path)
    if secret is None:
        raise CurveError(f"{path} holds no secret key: give the {SECRET_SUFFIX} file")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise CurveError(f"{path} is readable by other users (mode {mode:o}): chmod 600 {path}")
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    return _read(path)[0]


@dataclass(frozen=True)
class ClientKeys:
    """A client's key pair and the public key of the daemon it talks to."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, key_file: str, server_public_file: str) -> "ClientKeys":
        public, secret = load_secret(key_file)
        return cls(public, secret, load_public(server_public_file))

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the daemon (before it connects)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server_public


class AllowedKeys:
    """The allowed client keys, by public key (Z85), named by their files in ``folder``;
    re-read when the folder changes. Called from the authenticators' threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._extra: dict[bytes, str] = {}  # keys that live only in memory (the console)
        self._names: dict[bytes, str] = {}
        self._stamp: int | None = None
        self._refused: set[bytes] = set()
        self._lock = threading.Lock()
        if not folder.is_dir():
            raise CurveError(f"allowed keys: {folder} is not a folder; make it with "
                             f"`ecgmon keys client NAME DIR` (DIR/{ALLOWED_FOLDER})")
        self._reload()
        if not self._names:
            log.warning("no client keys in %s yet: every client is refused until one is added "
                        "(ecgmon keys client NAME DIR)", folder)

    def _reload(self) -> None:
        try:
            stamp = self.folder.stat().st_mtime_ns
        except OSError as err:
            if self._stamp != -1:
                log.error("allowed keys: cannot read %s (%s): every client is refused", self.folder, err.strerror)
            self._names, self._stamp = {}, -1
            return
        if stamp == self._stamp:
            return
        names: dict[bytes, str] = {}
        for path in sorted(self.folder.glob(f"*{PUBLIC_SUFFIX}")):
            try:
                names.setdefault(load_public(path), check_name(path.stem))
            except CurveError as err:
                log.warning("allowed keys: %s skipped: %s", path.name, err)
        self._names, self._stamp = names, stamp

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question (pyzmq's credentials provider): may the client with this Z85 key in?"""
        with self._lock:
            self._reload()
            allowed = key in self._extra or key in self._names
            if not allowed and key not in self._refused and len(self._refused) < MAX_LOGGED_REFUSALS:
                self._refused.add(key)
                log.warning("refused a client whose key is not in %s (public key %s)",
                            self.folder, key.decode("ascii", "replace"))
            return allowed

    def name_of(self, key: bytes) -> str:
        with self._lock:
            return self._extra.get(key) or self._names[key]

    def add(self, key: bytes, name: str) -> None:
        """Let in ``key`` (Z85) as ``name`` while this process runs (it is in no file)."""
        with self._lock:
            self._extra[key] = name


class _NamingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP authenticator, naming each client after its key's file."""

    def __init__(self, context: zmq.Context, allowed: AllowedKeys) -> None:
        super().__init__(context)
        self.allowed = allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allowed.name_of(z85.encode(client_public_key))


class ServerKeys:
    """The daemon's key pair and the clients it lets in."""

    def __init__(self, secret_file: str, allowed_folder: str) -> None:
        self.public, self.secret = load_secret(secret_file)
        self.allowed = AllowedKeys(Path(allowed_folder))

    def protect(self, sock: zmq.Socket) -> ThreadAuthenticator:
        """Make ``sock`` (not yet bound) a CURVE server letting in only allowed keys; the
        returned authenticator serves its context and must be stopped before the context ends."""
        auth = _NamingAuthenticator(sock.context, self.allowed)
        auth.start()
        auth.configure_curve_callback("*", credentials_provider=self.allowed)
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        return auth

    def console(self) -> ClientKeys:
        """A key pair for a dashboard in this process, let in as ``console``; it is never written."""
        public, secret = zmq.curve_keypair()
        self.allowed.add(public, CONSOLE_NAME)
        return ClientKeys(public, secret, self.public)


# The events of a client socket's monitor that say whether a daemon lets it in.
HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)


def refusal(event: int, keyed: bool) -> str | None:
    """What a ``HANDSHAKE_EVENTS`` event tells a client (``keyed``: it has a key): None once let
    in, else why not. (A wrong --server-public shows no event: the daemon just never answers.)"""
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return "refused: this client's key is not among the daemon's allowed keys"
    if keyed:  # a mechanism mismatch
        return "refused: the daemon has no keys (connect without --key)"
    return "refused: the daemon has keys (connect with --key and --server-public)"


def is_loopback(endpoint: str) -> bool:
    """Only this machine can reach ``endpoint``: ipc, inproc, or TCP on a loopback address."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = re.fullmatch(r"tcp://\[?([^\]]*)\]?:[0-9*]+", endpoint)
    if m is None:
        return False
    host = m.group(1)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name, a host name: possibly reachable from outside
        return False


# What a stranger could do with each kind of socket left open.
_RISK = {"publisher": "read every patient's data", "control socket": "acknowledge or silence any alarm"}


def check_bind(endpoint: str, keyed: bool, insecure: bool, what: str) -> None:
    """Refuse to bind ``endpoint`` beyond loopback without keys, unless ``insecure``;
    ``what`` is "publisher" or "control socket"."""
    if keyed or insecure or is_loopback(endpoint) or "://" not in endpoint:
        return  # (not an endpoint at all: binding it says what is wrong)
    raise CurveError(
        f"refusing to open the {what} on {endpoint} without keys: anyone who can reach it could "
        f"{_RISK[what]}; give --server-key and --allowed-keys (see `ecgmon keys`), bind a "
        f"loopback address, or say --insecure"
    )
