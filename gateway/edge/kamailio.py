"""The SIP edge: Kamailio in front of the gateway, run as a child of `python -m gateway serve`.

pjsua2 has no registrar and no server-side digest authentication, so a real SIP server faces
the network: Kamailio registers and authenticates phones, bans scanners and guessers, and
forwards only authenticated or trusted calls to the gateway, which listens on loopback.

    prepare(cfg)      check the config, render <runtime_dir>/kamailio.cfg, make the TLS pair
    Edge(plan)        start / supervise / stop the kamailio process
    run_stack(cfg)    both plus the gateway, until Ctrl-C or SIGTERM (what `make run` does)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.config import Config, StartError
from gateway.edge.config import EdgeConfig
from gateway.edge.users import UserStore
from gateway.files import write_private

log = logging.getLogger("edge")

TEMPLATE = Path(__file__).resolve().parents[2] / "edge" / "kamailio.cfg.tmpl"
# How long a stop waits for Kamailio after SIGTERM before it kills the process group. Kamailio
# itself kills workers that outlive `exit_timeout` (2 s, in the template); this bound is for a
# main process that hangs anyway. Both bounds are in gateway.stopwatch's budget: the edge
# stops once the gateway's SIP engine has, while the gateway closes the rest.
STOP_S = 3.0
READ_S = 0.5  # then its last log lines (its stderr ends with the process group)
MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/aarch64-linux-gnu/"
               "kamailio/modules", "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules")


class EdgeError(Exception):
    """The edge cannot be set up or started; the message says what to fix."""


@dataclass(frozen=True)
class EdgePlan:
    edge: EdgeConfig
    gateway_host: str
    gateway_port: int
    runtime_dir: Path
    config_path: Path
    tls_cert: Path | None
    tls_key: Path | None
    binary: str


def check(cfg: Config) -> None:
    """Rules that span `sip:` and `edge:`. Raises EdgeError."""
    edge = cfg.edge
    try:
        host = ipaddress.ip_address(cfg.sip.host)
    except ValueError:
        host = None
    if edge.address is not None:
        # A separate edge reaches the gateway over one network they share; a wildcard bind
        # would also put the gateway's SIP on every other network the machine is on.
        if host is None or host.is_unspecified:
            raise EdgeError(f"sip.host is {cfg.sip.host!r}: with edge.address the gateway must "
                            "listen on one specific address, the one the edge reaches it at")
    elif host is None or not host.is_loopback:
        raise EdgeError(f"sip.host is {cfg.sip.host!r}: with edge.enabled the gateway must listen "
                        "on loopback only (sip.host: 127.0.0.1); phones reach it through the edge")
    if cfg.sip.port == 0:
        raise EdgeError("sip.port must be a fixed port with edge.enabled (the edge forwards to it)")
    edge_ports = {edge.udp_port, edge.tcp_port, edge.tls_port} - {0}
    if cfg.sip.port in edge_ports:
        raise EdgeError(f"sip.port {cfg.sip.port} is also an edge port: give the gateway another "
                        "one (e.g. 5070); phones use the edge's port")


def module_path() -> str:
    for d in MODULE_DIRS:
        if Path(d, "tm.so").exists():
            return d
    raise EdgeError("Kamailio modules not found: install kamailio, kamailio-sqlite-modules and "
                    "kamailio-tls-modules (scripts/setup.sh does)")


def _secret(runtime_dir: Path) -> str:
    """The HMAC key for nonces and dialog routes; kept across restarts so that phones' nonces
    and calls in progress stay valid."""
    path = runtime_dir / "secret"
    if not path.exists():
        write_private(path, secrets.token_hex(32))
    value = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise EdgeError(f"{path} is corrupt: delete it (a new one is made on start)")
    return value


def ensure_certificate(cert: Path, key: Path, listen: str) -> None:
    """A self-signed pair for TLS on first run (phones must accept it; see docs/edge.md)."""
    if cert.exists() and key.exists():
        return
    if not shutil.which("openssl"):
        raise EdgeError("openssl not found: it is needed once to make the edge's TLS certificate")
    cert.parent.mkdir(parents=True, exist_ok=True)
    names = ["DNS:localhost", "IP:127.0.0.1"]
    if not ipaddress.ip_address(listen).is_unspecified and listen != "127.0.0.1":
        names.append(f"IP:{listen}")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "825",
         "-subj", "/CN=MiniVoice edge", "-addext", "subjectAltName=" + ",".join(names),
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    key.chmod(0o600)
    log.info("edge.certificate_created", extra={"cert": str(cert)})


def _listen_lines(edge: EdgeConfig) -> str:
    adv = f" advertise {edge.advertise}:{{port}}" if edge.advertise else ""
    lines = [f"listen=udp:{edge.listen}:{edge.udp_port}{adv.format(port=edge.udp_port)}"]
    if edge.tcp_port:
        lines.append(f"listen=tcp:{edge.listen}:{edge.tcp_port}{adv.format(port=edge.tcp_port)}")
    else:
        lines.append("disable_tcp=yes")
    if edge.tls_port:
        lines.append("enable_tls=yes")
        lines.append(f"listen=tls:{edge.listen}:{edge.tls_port}{adv.format(port=edge.tls_port)}")
    return "\n".join(lines)


def _subnet_checks(networks: tuple[str, ...], var: str) -> str:
    out = []
    for net in networks:
        n = ipaddress.ip_network(net, strict=False)
        if n.prefixlen == 0:
            out.append("\treturn 1;")
            break
        out.append(f'\tif (is_in_subnet("{var}", "{n}")) {{\n\t\treturn 1;\n\t}}')
    return "\n".join(out) if out else "\t# none configured"


def _algorithm_checks(algorithms: tuple[str, ...]) -> str:
    return "\n".join(f'\tif ($var(alg) == "{a}") {{\n\t\treturn 1;\n\t}}' for a in algorithms)


def _challenge_headers(algorithms: tuple[str, ...]) -> str:
    """The body of the CHALLENGE route's append_to_reply(): `\\r\\n` are the script's escapes."""
    return "".join(f"$var(hname): Digest $var(params), algorithm={a}\\r\\n" for a in algorithms)


_DISPATCHER = """loadmodule "dispatcher.so"
modparam("dispatcher", "list_file", "{list_file}")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_interval", 2)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_reply_codes", "class=2")
modparam("dispatcher", "ds_ping_from", "sip:edge@minivoice.invalid")"""

# Cluster mode: a new call goes to a node chosen by a hash of the dialed number (callers of
# one number, one room with the demo, land on one node while it is up: fewer cascade legs);
# a node that does not answer within 3 s, or answers 500/503, is marked down and the next
# one is tried (flags 2: failover). A node is also marked down when it does not answer the
# OPTIONS probe sent every 2 s (that takes tm's fr_timer), and up again when it does.
# In-dialog requests from phones may only go to a node of the list.
_DISPATCH_ROUTES = """
route[DISPATCH] {
	if (!ds_select_dst("1", "3")) {
		xlog("L_NOTICE", "edge.no_gateway src=$si to=$rU\n");
		sl_send_reply("503", "Service Unavailable");
		exit;
	}
	t_set_fr(120000, 3000);
	t_on_failure("NEXT_NODE");
}

failure_route[NEXT_NODE] {
	if (t_is_canceled()) {
		exit;
	}
	if (t_check_status("408|500|503") || t_branch_timeout()) {
		ds_mark_dst("ip");
		if (ds_next_dst()) {
			xlog("L_NOTICE", "edge.next_node to=$rU node=$du\n");
			t_on_failure("NEXT_NODE");
			t_relay();
		}
	}
}
"""


def _dispatch_values(plan: EdgePlan) -> dict[str, str]:
    gw = f"sip:{plan.gateway_host}:{plan.gateway_port}"
    if not plan.edge.dispatch:  # one gateway: the script as it always was
        return {"DISPATCHER": "",
                "FROM_GATEWAY": f'$si == "{plan.gateway_host}" && $sp == {plan.gateway_port}',
                "TO_GATEWAY": f'$du = "{gw}";', "DIALOG_TO_GATEWAY": f'$du = "{gw}";',
                "DISPATCH_ROUTES": ""}
    return {
        "DISPATCHER": _DISPATCHER.format(list_file=plan.runtime_dir / "dispatcher.list"),
        "FROM_GATEWAY": 'ds_is_from_list("1")',
        "TO_GATEWAY": "route(DISPATCH);",
        "DIALOG_TO_GATEWAY": '\n'.join([
            'if (!ds_is_from_list("1", "2", "$ru")) {',
            '\t\t\txlog("L_NOTICE", "edge.relay_refused src=$si method=$rm reason=not_a_node\\n");',
            '\t\t\tif (!is_method("ACK")) {',
            '\t\t\t\tsl_send_reply("403", "Forbidden");',
            '\t\t\t}',
            '\t\t\texit;',
            '\t\t}']),
        "DISPATCH_ROUTES": _DISPATCH_ROUTES,
    }


def dispatcher_list(edge: EdgeConfig) -> str:
    """Kamailio's dispatcher.list: set 1, one line per node."""
    return "".join(f"1 sip:{node}\n" for node in edge.dispatch)


def render(plan: EdgePlan, secret: str) -> str:
    e = plan.edge
    values = {
        **_dispatch_values(plan),
        "DEFINES": "#!define WITH_TLS" if e.tls_port else "",
        "LOG_LEVEL": str(e.log_level),
        "CHILDREN": str(e.children),
        "LISTEN": _listen_lines(e),
        "MODULE_PATH": module_path(),
        "MAX_EXPIRES": str(e.max_expires_s),
        "BAN_S": str(e.ban_s),
        "FAILURE_WINDOW_S": str(e.failure_window_s),
        "NONCE_TTL_S": str(e.nonce_ttl_s),
        "FLOOD_WINDOW_S": str(e.flood_window_s),
        "FLOOD_REQUESTS": str(e.flood_requests),
        "BAN_AFTER_FAILURES": str(e.ban_after_failures),
        "TRUSTED_FLOOD_REQUESTS": str(e.trusted_flood_requests),
        # a window's counter must outlive the window; a little more is harmless
        "TFLOOD_EXPIRE_S": str(2 * e.flood_window_s + 1),
        "MAX_CONTACTS": str(e.max_contacts),
        "TCP_IDLE_S": str(e.tcp_idle_s),
        # a registered phone's connection outlives its longest registration
        "TCP_KEEP_S": str(e.max_expires_s + 60),
        "USERS_DB": str(Path(e.users_db).resolve()),
        "TLS_CERT": str(plan.tls_cert or ""),
        "TLS_KEY": str(plan.tls_key or ""),
        "GATEWAY_HOST": plan.gateway_host,
        "GATEWAY_PORT": str(plan.gateway_port),
        "TRUSTED_CHECKS": _subnet_checks(e.trusted, "$si"),
        "RELAY_CHECKS": _subnet_checks(e.relay_networks, "$var(dh)"),
        "REALM": e.realm,
        "ALGORITHM_CHECKS": _algorithm_checks(e.digest_algorithms),
        "CHALLENGE_HEADERS": _challenge_headers(e.digest_algorithms),
        "SECRET": secret,
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    left = sorted(set(re.findall(r"@@([A-Z_]+)@@", text)))
    if left:
        raise EdgeError(f"{TEMPLATE}: no value for {', '.join(left)}")
    return text


def prepare(cfg: Config) -> EdgePlan:
    """Everything before starting Kamailio; raises EdgeError with what to fix."""
    check(cfg)
    e = cfg.edge
    binary = shutil.which(e.kamailio)
    if not binary:
        raise EdgeError(f"{e.kamailio!r} not found: install Debian package kamailio "
                        "(scripts/setup.sh does)")
    runtime = Path(e.runtime_dir).resolve()
    runtime.mkdir(parents=True, exist_ok=True)
    cert = key = None
    if e.tls_port:
        if e.tls_cert and e.tls_key:
            cert, key = Path(e.tls_cert).resolve(), Path(e.tls_key).resolve()
            for p in (cert, key):
                if not p.is_file():
                    raise EdgeError(f"TLS file {p} does not exist (edge.tls_cert/tls_key)")
        else:
            cert, key = runtime / "tls" / "cert.pem", runtime / "tls" / "key.pem"
            ensure_certificate(cert, key, e.listen)
    store = UserStore(e.users_db, e.realm)
    store.ensure()
    stale = store.other_realm_count()
    if stale:
        log.warning("edge.users_other_realm", extra={"count": stale, "realm": e.realm})
    plan = EdgePlan(e, cfg.sip.host, cfg.sip.port, runtime, runtime / "kamailio.cfg", cert, key,
                    binary)
    text = render(plan, _secret(runtime))
    write_private(plan.config_path, text)  # it holds the HMAC secret
    if e.dispatch:
        (runtime / "dispatcher.list").write_text(dispatcher_list(e))
    return plan


_KAM_LINE = re.compile(r"^\s*\d+\((\d+)\) (\w+): (?:<script>: )?(.*)$")
_LEVELS = {"CRITICAL": logging.CRITICAL, "ALERT": logging.CRITICAL, "ERROR": logging.ERROR,
           "WARNING": logging.WARNING, "NOTICE": logging.INFO, "INFO": logging.INFO,
           "DEBUG": logging.DEBUG}


def _relog(line: str) -> tuple[str, dict[str, str]] | None:
    """Kamailio's stderr as our key=value log. Script lines are already `edge.event k=v ...`:
    those are returned as (event, fields)."""
    m = _KAM_LINE.match(line)
    if not m:
        log.debug("edge.kamailio", extra={"line": line})
        return None
    pid, level, text = m.groups()
    lvl = _LEVELS.get(level, logging.INFO)
    if text.startswith("edge."):
        event, _, rest = text.partition(" ")
        # The script writes its own fields first (src=, then user= ...). A value that slipped
        # a space into the line could only add later `k=v` pairs: the first occurrence of each
        # key is the script's, so it wins and later ones are dropped.
        fields: dict[str, str] = {}
        for kv in rest.split():
            key, eq, value = kv.partition("=")
            if eq and key not in fields:
                fields[key] = value
        log.log(lvl, event, extra=logs.fields(**fields))
        return event, fields
    log.log(lvl, "edge.kamailio", extra={"pid": pid, "line": text})
    return None


class Edge:
    """One kamailio process. It dies with us (PR_SET_PDEATHSIG through setpriv), so a killed
    gateway never leaves an orphan holding port 5060."""

    def __init__(self, plan: EdgePlan) -> None:
        self.plan = plan
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.stopping = False
        self._tail: list[str] = []
        # told of every script event (edge.auth_failed, edge.ban, ...): the gateway's metrics
        self.on_event: Callable[[str, dict[str, str]], None] | None = None

    def command(self) -> list[str]:
        # -DD: stay in the foreground but fork the workers (-D alone would run one process
        # serving only the first listening socket: no TCP, no TLS).
        p = self.plan
        cmd = [p.binary, "-f", str(p.config_path), "-DD", "-E", "-m", "64", "-M", "8",
               "-Y", str(p.runtime_dir), "-P", str(p.runtime_dir / "kamailio.pid"),
               "-w", str(p.runtime_dir)]
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "TERM", *cmd] if setpriv else cmd

    async def start(self, timeout_s: float = 15.0) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)  # Ctrl-C reaches us only; we stop Kamailio in order
        self._reader = asyncio.create_task(self._read_stderr())
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self._probe):
            if self.proc.returncode is not None:
                await asyncio.sleep(0.2)  # let the reader catch the last lines
                raise EdgeError("kamailio exited at start:\n" + "\n".join(self._tail[-15:]))
            if time.monotonic() > deadline:
                await self.stop()
                raise EdgeError("kamailio did not answer OPTIONS within "
                                f"{timeout_s:.0f} s:\n" + "\n".join(self._tail[-15:]))
        e = self.plan.edge
        log.info("edge.started", extra={"pid": self.proc.pid, "listen": e.listen,
                                        "udp": e.udp_port, "tcp": e.tcp_port, "tls": e.tls_port,
                                        "gateway": f"{self.plan.gateway_host}:"
                                                   f"{self.plan.gateway_port}"})

    def _probe(self) -> bool:
        """Kamailio is up when it answers an OPTIONS on its UDP port."""
        host, port = self.plan.edge.probe_host(), self.plan.edge.udp_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            s.settimeout(0.3)
            me = s.getsockname()[1]
            msg = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {host}:{me};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
                   f"From: <sip:probe@{host}>;tag={secrets.token_hex(4)}\r\nTo: <sip:{host}>\r\n"
                   f"Call-ID: {secrets.token_hex(8)}@probe\r\nCSeq: 1 OPTIONS\r\n"
                   "Max-Forwards: 2\r\nContent-Length: 0\r\n\r\n")
            try:
                s.sendto(msg.encode(), (host, port))
                return s.recv(4096).startswith(b"SIP/2.0 200")
            except OSError:
                return False

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self._tail = [*self._tail[-50:], line]
            with contextlib.suppress(Exception):  # a log line must never stop the reader
                event = _relog(line)
                if event is not None and self.on_event is not None:
                    self.on_event(*event)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self, timeout_s: float = STOP_S) -> None:
        self.stopping = True
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            log.warning("edge.kill", extra={"pid": self.proc.pid})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._reader:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._reader, READ_S)
        log.info("edge.stopped", extra={"code": self.proc.returncode})


# The gateway's own serve (gateway.app.serve), passed in: the edge does not import the app.
# Its third argument sees the gateway before it starts: the edge hands it its log events
# (Any: naming the Gateway type would make the edge import the app).
Serve = Callable[[Config, float | None, Callable[[Any], None]], Coroutine[Any, Any, None]]


async def serve_stack(cfg: Config, serve: Serve, drain_s: float | None = None) -> int:
    """Kamailio, then the gateway; a dead Kamailio takes the gateway down (exit 1), since
    nobody could reach it any more."""
    plan = prepare(cfg)
    edge = Edge(plan)
    await edge.start()
    code = 0

    stopping: list[asyncio.Task[None]] = []

    def attach(gw: Any) -> None:  # the gateway's metrics count the edge's auth failures, bans
        edge.on_event = gw.metrics.edge_event
        # Once the gateway's SIP engine stopped nobody needs the edge: it stops while the
        # gateway closes the rest (gateway.stopwatch's budget counts on it).
        gw.on_sip_stopped = lambda: stopping.append(asyncio.create_task(edge.stop()))

    gateway = asyncio.create_task(serve(cfg, drain_s, attach), name="gateway")
    watcher = asyncio.create_task(edge.wait(), name="edge")
    try:
        done, _ = await asyncio.wait({gateway, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done and not edge.stopping:
            log.error("edge.exited", extra={"code": watcher.result()})
            code = 1
            # app.serve stops on SIGTERM (its own handler): the orderly path, drain included.
            os.kill(os.getpid(), signal.SIGTERM)
        await gateway
    finally:
        watcher.cancel()
        await (stopping[0] if stopping else edge.stop())
    return code


async def serve_edge(cfg: Config) -> int:
    """Kamailio alone, in the foreground, until SIGTERM or SIGINT: the edge's own container
    (`edge.address` set), in front of a gateway that runs elsewhere."""
    edge = Edge(prepare(cfg))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await edge.start()
    exited = asyncio.create_task(edge.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if exited.done():
        log.error("edge.exited", extra={"code": exited.result()})
        stopping.cancel()
        return 1
    await edge.stop()
    return 0


def run_edge(cfg: Config) -> int:
    """`python -m gateway edge`."""
    try:
        return asyncio.run(serve_edge(cfg))
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_stack(cfg: Config, serve: Serve, drain_s: float | None = None) -> int:
    """`python -m gateway serve` with `edge.enabled`: the whole stack in the foreground."""
    try:
        return asyncio.run(serve_stack(cfg, serve, drain_s))
    except (EdgeError, StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the gateway installed its handlers
        return 0
