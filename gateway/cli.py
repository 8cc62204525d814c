"""Command line: `python -m gateway serve|check-config`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import re
import secrets
import sys
from typing import Any

from gateway import __version__, logs
from gateway.config import (
    Config,
    ConfigError,
    StartError,
    check_exposure,
    from_dict,
    load,
    with_overrides,
)
from gateway.edge import users_cli
from gateway.netguard import parse_allow


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gateway", description="MiniVoice SIP gateway")
    p.add_argument("--version", action="version", version=f"MiniVoice {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help="YAML config file (configs/*.yaml)")
    s.add_argument("--answer-url", help="without --config: one application answering every number")
    s.add_argument("--event-url", help="lifecycle webhooks go here")
    s.add_argument("--fallback-url")
    s.add_argument("--secret", help="signing secret shared with the application")
    s.add_argument("--allow-private", action="append", metavar="NET_OR_HOST",
                   help="let action_url/redirect/play URLs from responses reach this "
                        "non-public network or host, e.g. 127.0.0.0/8 (repeatable; "
                        "hooks.allow_private)")
    s.add_argument("--sip-host")
    s.add_argument("--sip-port", type=int)
    s.add_argument("--public-host", help="address written in SDP/Contact (sip.public_host)")
    s.add_argument("--http-host")
    s.add_argument("--http-port", type=int)
    s.add_argument("--rtp-port-start", type=int)
    s.add_argument("--db", help="SQLite file (default var/minivoice.db)")
    s.add_argument("--node-id", type=_node_id,
                   help="cluster.node_id: this node of a cluster (one config file, many nodes)")
    s.add_argument("--demo", action="store_true", help="also serve the demo app at /demo/*")
    s.add_argument("--drain", type=float, default=None,
                   help="on SIGTERM, seconds to let calls finish before hanging up "
                        "(default: shutdown.drain_s from the config, 30)")
    s.add_argument("--log-level", default="INFO")
    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("path")
    e = sub.add_parser("edge", help="run only the SIP edge (Kamailio) of a config whose "
                       "edge.address is set: its own container, in front of a separate gateway")
    e.add_argument("--config", required=True)
    e.add_argument("--log-level", default="INFO")
    users_cli.add_parser(sub)
    return p


def _node_id(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise argparse.ArgumentTypeError("1-64 of A-Z a-z 0-9 _ -")
    return value


def build_config(args: argparse.Namespace) -> Config:
    if args.config:
        cfg = load(args.config)
        if args.answer_url:
            raise ConfigError("give either --config or --answer-url, not both")
    elif args.answer_url:
        app: dict[str, Any] = {"id": "app_default", "customer_id": "cust_default",
                               "answer_url": args.answer_url, "numbers": ["*"]}
        for key in ("event_url", "fallback_url", "secret"):
            if getattr(args, key):
                app[key] = getattr(args, key)
        if not args.secret:
            # Never a well-known default: a fresh secret, shown once so the app can use it.
            app["secret"] = secrets.token_urlsafe(24)
            print(f"no --secret given: requests are signed with the generated secret "
                  f"{app['secret']} (pass --secret to choose one)", file=sys.stderr)
        cfg = from_dict({"applications": [app]}, "command line")
    else:
        raise ConfigError("give --config configs/<file>.yaml, or --answer-url URL")
    sip = {k: v for k, v in (("host", args.sip_host), ("port", args.sip_port),
                             ("rtp_port_start", args.rtp_port_start),
                             ("public_host", args.public_host)) if v is not None}
    http = {k: v for k, v in (("host", args.http_host), ("port", args.http_port))
            if v is not None}
    hooks = {"allow_private": tuple(args.allow_private)} if args.allow_private else {}
    try:
        parse_allow(hooks.get("allow_private", ()))
    except ValueError as exc:
        raise ConfigError(f"--allow-private: {exc}") from None
    cfg = with_overrides(cfg, sip=sip, http=http, hooks=hooks)
    if args.db:
        cfg = dataclasses.replace(cfg, database=args.db)
    if args.demo:
        cfg = dataclasses.replace(cfg, demo=True)
    if getattr(args, "node_id", None):
        if not cfg.cluster.secret:
            raise ConfigError("--node-id needs cluster.secret in the config (the same on "
                              "every node)")
        cfg = with_overrides(cfg, cluster={"node_id": args.node_id})
    check_exposure(cfg, args.config or "command line")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "users":
        return users_cli.run(args)
    if args.command == "check-config":
        from gateway.edge import kamailio

        try:
            cfg = load(args.path)
            check_exposure(cfg, args.path)
            if cfg.edge.enabled:  # the rules that span sip: and edge:, as serve applies them
                kamailio.check(cfg)
        except (ConfigError, kamailio.EdgeError) as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"{args.path}: ok")
        return 0
    logs.setup(args.log_level)
    if args.command == "edge":
        return _edge_only(args.config)
    try:
        cfg = build_config(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.edge.enabled and cfg.edge.address is not None:
        # The edge runs on its own (`python -m gateway edge` elsewhere): only the gateway here.
        from gateway.edge import kamailio

        try:
            kamailio.check(cfg)
        except kamailio.EdgeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from gateway.app import serve  # imports pjsua2: after config errors are reported

    if cfg.edge.enabled and cfg.edge.address is None:
        # the whole stack: Kamailio in front, the gateway on loopback
        from gateway.edge import kamailio

        return kamailio.run_stack(cfg, serve, args.drain)

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(cfg, args.drain))
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _edge_only(path: str) -> int:
    from gateway.edge import kamailio

    try:
        cfg = load(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (cfg.edge.enabled and cfg.edge.address):
        print(f"error: {path}: `edge` runs the edge of a config with edge.enabled and "
              "edge.address set (otherwise `serve` runs it as its child)", file=sys.stderr)
        return 2
    return kamailio.run_edge(cfg)
