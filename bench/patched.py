"""`python -m bench.patched serve ...`: the gateway with one experimental change applied.

Used only by bench experiments (`--patch`), to measure a lever before anyone edits
sip/ or media/. The change lives in this process alone; MINIVOICE_BENCH_PATCH is a
JSON object:

    poll_ms        sip.thread.POLL_MS (libHandleEvents timeout of the SIP thread)
    media          {MediaConfig attribute: value}, set after sip.pjconfig builds it,
                   e.g. {"jbInit": 1, "jbMinPre": 1, "jbMaxPre": 4}
    outbox_coalesce_ms   gateway.outbox.COALESCE_S in ms, the least time between two commits
                         (0: every write commits as soon as the last commit is done)
    outbox_synchronous   the outbox connection's synchronous ("NORMAL": no fsync per commit;
                         an experiment bounding the fsync's cost, never a setting to ship)
    strict_cache   false: gateway.strict works out a dataclass's type hints at every build

(Big-room topology experiments were done here too; media/rooms.py now mixes only the
current speakers of large rooms, see BENCHMARKS.md.)
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def apply(patch: dict[str, Any]) -> None:
    from sip import pjconfig, thread

    if "poll_ms" in patch:
        thread.POLL_MS = int(patch["poll_ms"])
    if "outbox_coalesce_ms" in patch:
        from gateway import outbox

        outbox.COALESCE_S = float(patch["outbox_coalesce_ms"]) / 1000
    if "outbox_synchronous" in patch:
        from gateway import outbox

        defaults = outbox.Outbox.__init__.__kwdefaults__ or {}
        defaults["synchronous"] = str(patch["outbox_synchronous"])
    if patch.get("strict_cache") is False:
        from gateway import strict

        strict._shape = strict._work_out
    media = patch.get("media") or {}
    if media:
        original = pjconfig.endpoint_config

        def endpoint_config(cfg: Any, writer: Any) -> Any:
            ep_cfg = original(cfg, writer)
            for key, value in media.items():
                setattr(ep_cfg.medConfig, key, value)
                if getattr(ep_cfg.medConfig, key) != value:  # SWIG structs: read back
                    raise RuntimeError(f"medConfig.{key} did not take {value!r}")
            return ep_cfg

        pjconfig.endpoint_config = endpoint_config


def main() -> int:
    apply(json.loads(os.environ.get("MINIVOICE_BENCH_PATCH", "{}")))
    from gateway.cli import main as gateway_main

    return gateway_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
