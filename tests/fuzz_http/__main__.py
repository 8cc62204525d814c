"""`make fuzz-http`: the HTTP fuzzer at length, against a gateway started here on loopback.

    .venv/bin/python -m tests.fuzz_http [--cases 100000] [--calls 300] [--seed N]

`--cases` pure-parser cases (in-process), a tenth of that many REST requests and `--calls`
real SIP calls with fuzzed answer_url documents against the live gateway. Prints the rates
and every finding with its seed and case to replay; exits 1 on a finding. A finding becomes
a named regression test next to the code it breaks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz_http import pure
from tests.fuzz_http.live import campaign, gateway_sections
from tests.harness import AppServer, app_config, start_gateway


async def main(cases: int, calls: int, seed: int) -> int:
    p = pure.run(range(cases), seed)
    print(p.summary())
    for key, text in p.findings.items():
        print("FINDING:", key, text)
    tmp = Path(tempfile.mkdtemp(prefix="minivoice-fuzz-http-"))
    app = AppServer()
    runner = await app.start()
    gw = await start_gateway(tmp, [app_config(app)], **gateway_sections())
    started = time.monotonic()
    try:
        report = await campaign(gw, app, range(cases // 10), range(calls), seed)
    finally:
        code = gw.stop()
        await runner.cleanup()
    print(report.summary())
    print(f"gateway exit code {code}; {time.monotonic() - started:.0f} s; logs in {tmp}")
    for finding in report.findings:
        print("FINDING:", finding)
    traceback = "Traceback" in gw.log()
    if traceback:
        print("FINDING: a Python traceback in the gateway log (see the log)")
    return 1 if p.findings or report.findings or traceback or code != 0 else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz_http")
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.cases, args.calls, args.seed)))
