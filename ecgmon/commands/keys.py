"""``ecgmon keys``: CURVE key pairs for the daemon and its clients, and the ``[security]``
settings (after the command-line flags) as the keys the other commands use."""

from __future__ import annotations

import argparse
from pathlib import Path
import shutil

from ecgmon.commands.common import CommandError
from ecgmon.config import Config, SecurityConfig
from ecgmon.curve import ALLOWED_FOLDER, SERVER_NAME, ClientKeys, ServerKeys, check_name, make_key_pair


def add_keys(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "keys", parents=[common], help="make CURVE key pairs: who may read and acknowledge",
        description="Make ZeroMQ CURVE key pairs. `keys server DIR` makes the daemon's pair; "
                    "`keys client NAME DIR` makes a client's pair and lets it in (DIR/allowed/NAME.key). "
                    "Secret key files are mode 0600 and never printed; an existing key is never overwritten.",
    )
    which = p.add_subparsers(dest="which", metavar="WHO", required=True)
    server = which.add_parser("server", parents=[common], help="the daemon's key pair: DIR/server.key(_secret)")
    server.add_argument("dir", metavar="DIR", help="keys folder (made mode 0700 if missing)")
    client = which.add_parser("client", parents=[common],
                              help="a client's key pair DIR/NAME.key(_secret), allowed by DIR/allowed/NAME.key")
    client.add_argument("name", metavar="NAME", help="recorded with its acknowledgements, e.g. nurse1")
    client.add_argument("dir", metavar="DIR", help="the keys folder of the daemon's pair")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace, config: Config) -> int:
    folder = Path(args.dir)
    if args.which == "server":
        public, secret = make_key_pair(folder, SERVER_NAME)
        (folder / ALLOWED_FOLDER).mkdir(exist_ok=True)
        print(f"the daemon's secret key: {secret} (keep it on the daemon's machine)")
        print(f"its public key: {public} (every client needs a copy)")
        print(f"run: ecgmon run --server-key {secret} --allowed-keys {folder / ALLOWED_FOLDER}")
        print(f"let a client in: ecgmon keys client NAME {folder}")
        return 0
    name = check_name(args.name)
    allowed = folder / ALLOWED_FOLDER / f"{name}.key"
    if allowed.exists():
        raise CommandError(f"{allowed} exists: a client named {name} is already let in")
    public, secret = make_key_pair(folder, name)
    allowed.parent.mkdir(exist_ok=True)
    shutil.copyfile(public, allowed)
    server_public = folder / f"{SERVER_NAME}.key"
    print(f"{name}'s secret key: {secret} (give it to {name} only)")
    print(f"let in by: {allowed} (delete it to refuse {name})")
    print(f"connect: ecgmon dashboard --key {secret} --server-public {server_public}")
    return 0


def server_keys(sc: SecurityConfig) -> ServerKeys | None:
    """The daemon's keys from ``server_key`` and ``allowed_keys``; None without (no CURVE)."""
    if bool(sc.server_key) != bool(sc.allowed_keys):
        raise CommandError("--server-key and --allowed-keys ([security] server_key, allowed_keys) "
                           "go together: give both or neither")
    return ServerKeys(sc.server_key, sc.allowed_keys) if sc.server_key else None


def client_keys(sc: SecurityConfig, key: str | None, server_public: str | None) -> ClientKeys | None:
    """A client's keys: ``--key`` and ``--server-public`` over ``[security]`` key and
    server_public; None without (no CURVE)."""
    key, server_public = key or sc.key, server_public or sc.server_public
    if bool(key) != bool(server_public):
        raise CommandError("--key and --server-public ([security] key, server_public) go together: "
                           "give both or neither")
    return ClientKeys.load(key, server_public) if key else None
