"""The edge's Docker image carries gateway/, edge/, configs/ and, of sip/, only __init__.py and
config.py (Dockerfile, stage `edge`: no pjsua2, no media). A gateway module that imported more
of sip/ crashed the edge container at start (a cascade setting's range imported from
sip.commands), found only by the compose stack test. This checks the same file set in seconds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
# only the copied tree: not the repository (the venv's editable install maps it in)
sys.path = [sys.argv[2]] + [p for p in sys.path if p and Path(p).resolve() != root]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import gateway.cli, gateway.config, gateway.edge.kamailio, gateway.cluster.config  # noqa
from gateway.cli import main
try:
    main(["edge", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
bad = sorted(m for m in sys.modules if m in ("pjsua2", "media") or m.startswith("sip.")
             and m not in ("sip.config",))
assert not bad, f"the edge image has no {bad}"
print("ok")
"""


def test_the_edge_images_files_are_enough_to_start_the_edge(tmp_path: Path) -> None:
    for part in ("gateway", "edge", "configs"):
        shutil.copytree(ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "sip").mkdir()
    for name in ("__init__.py", "config.py"):
        shutil.copy(ROOT / "sip" / name, tmp_path / "sip" / name)
    r = subprocess.run([sys.executable, "-c", PROBE, str(ROOT), str(tmp_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
