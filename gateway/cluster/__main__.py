"""python -m gateway.cluster configs/cluster.yaml: the whole cluster on one machine."""

import sys

from gateway.cluster.stack import run

if len(sys.argv) != 2:
    raise SystemExit("usage: python -m gateway.cluster <stack.yaml>  (configs/cluster.yaml)")
raise SystemExit(run(sys.argv[1]))
