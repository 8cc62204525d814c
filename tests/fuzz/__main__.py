"""`make fuzz`: a long campaign against a gateway started here, on loopback.

    .venv/bin/python -m tests.fuzz [--cases 100000] [--seed N] [--edge]

Prints what it sent, how the target answered, and any finding (the target stopped answering
/healthz, or died) with the case numbers to replay; exits 1 on a finding. A finding becomes
a named regression case in tests/test_robustness.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.edge_stack import start_stack
from tests.fuzz.campaign import fuzz_gateway
from tests.harness import AppServer, app_config, start_gateway


async def main(cases: int, seed: int, edge: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="minivoice-fuzz-"))
    app = AppServer()
    runner = await app.start()
    if edge:
        stack = await start_stack(tmp, [app_config(app)], trusted=["127.0.0.0/8"])
        gw = stack.gw
        target: tuple[str, int] | None = ("127.0.0.1", stack.edge_port)
    else:
        gw = await start_gateway(tmp, [app_config(app)])
        target = None
    started = time.monotonic()
    try:
        report = await fuzz_gateway(gw, app, range(cases), seed, target=target,
                                    source_host="127.0.0.5" if edge else "127.0.0.1",
                                    dialogs=0 if edge else 4)
    finally:
        code = gw.stop()
        await runner.cleanup()
    print(report.summary())
    print(f"gateway exit code {code}; {time.monotonic() - started:.0f} s; logs in {tmp}")
    for finding in report.findings:
        print("FINDING:", finding)
    if "Traceback" in gw.log():
        print("FINDING: a Python traceback in the gateway log (see the log)")
        return 1
    return 1 if report.findings or code != 0 else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m tests.fuzz")
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--edge", action="store_true", help="fuzz through the Kamailio edge")
    args = p.parse_args()
    sys.exit(asyncio.run(main(args.cases, args.seed, args.edge)))
