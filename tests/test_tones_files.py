"""The beep files written at start: several gateway processes sharing one cache directory
(make cluster used to) each write whole files; none fails, every file is a whole WAV."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

from tests.harness import ROOT


def test_processes_writing_the_beeps_at_once_all_succeed(tmp_path: Path) -> None:
    code = ("import sys, pathlib; from media import tones;"
            "[tones.write_beeps(pathlib.Path(sys.argv[1]), 8000) for _ in range(20)]")
    procs = []
    for _ in range(6):
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                                      stderr=subprocess.PIPE))
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    for kind in ("enter", "exit"):
        with wave.open(str(tmp_path / f"beep-{kind}-8000.wav")) as w:
            assert w.getframerate() == 8000 and w.getnframes() > 0
    assert not list(tmp_path.glob("*.tmp"))


def test_concurrent_first_writes_race_on_an_empty_directory(tmp_path: Path) -> None:
    """Each process deletes and rewrites the files in a loop: many first writes at once."""
    code = ("import sys, pathlib; from media import tones; d = pathlib.Path(sys.argv[1])\n"
            "for _ in range(40):\n"
            "    [p.unlink(missing_ok=True) for p in d.glob('beep-*.wav')]\n"
            "    tones.write_beeps(d, 8000)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                              stderr=subprocess.PIPE) for _ in range(4)]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
