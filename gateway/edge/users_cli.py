"""`python -m gateway users add|list|remove`: SIP users of the edge (see gateway/edge/users.py)."""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway.config import ConfigError, load
from gateway.edge.config import EdgeConfig
from gateway.edge.users import UserError, UserStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser("users", help="manage the SIP users that may register at the edge")
    u.add_argument("--config", help="YAML config whose edge.users_db/edge.realm to use "
                   "(default: the built-in defaults, var/users.db and realm 'minivoice')")
    us = u.add_subparsers(dest="users_command", required=True)
    a = us.add_parser("add", help="add a user (or set a new password with --replace)")
    a.add_argument("username")
    a.add_argument("--password", help="the password (default: prompt; '-' reads one line "
                   "from stdin)")
    a.add_argument("--replace", action="store_true", help="overwrite an existing user")
    us.add_parser("list", help="list users")
    r = us.add_parser("remove", help="remove a user")
    r.add_argument("username")


def _password(given: str | None) -> str:
    if given == "-":
        return sys.stdin.readline().rstrip("\r\n")
    if given is not None:
        return given
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UserError("passwords differ")
    return first


def run(args: argparse.Namespace) -> int:
    try:
        edge = load(args.config).edge if args.config else EdgeConfig()
        store = UserStore(edge.users_db, edge.realm)
        if args.users_command == "add":
            new = store.add(args.username, _password(args.password), replace=args.replace)
            print(f"{'added' if new else 'updated'} {args.username} (realm {edge.realm})")
        elif args.users_command == "remove":
            store.remove(args.username)
            print(f"removed {args.username}")
        else:
            for user in store.list():
                stale = "" if user.realm == edge.realm else "  (other realm: set a new password)"
                print(f"{user.username}\t{user.created_at}{stale}")
    except (ConfigError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
