"""Room players started and stopped as fast as rooms can, on a real SIP thread, survive.

The SIP thread used to delete a stopped player at once, while pjmedia (which removes bridge
ports asynchronously) could still deliver the player's end-of-file callback into the freed
object: a segfault (exit -11), seen once in a start_on_enter room and reproduced here within
300 cycles every time. tests/player_churn.py runs in its own process, so a crash fails this
test instead of killing pytest, with the Python stacks (faulthandler) in the message.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import GATEWAY_ENV, PYTHON, ROOT

pytestmark = pytest.mark.sip


def test_room_players_started_and_stopped_fast_do_not_crash(tmp_path: Path) -> None:
    run = subprocess.run([PYTHON, "-m", "tests.player_churn", str(tmp_path), "300"],
                         cwd=ROOT, env=GATEWAY_ENV, capture_output=True, text=True,
                         timeout=300)
    stderr = "\n".join(ln for ln in run.stderr.splitlines() if "Fatal" in ln or
                       not ln[:2].isdigit())  # pjsua's own log lines left out
    assert run.returncode == 0 and "churn ok 300" in run.stdout, (run.returncode,
                                                                 stderr[-4000:])
    assert "Traceback" not in run.stderr, stderr[-4000:]
