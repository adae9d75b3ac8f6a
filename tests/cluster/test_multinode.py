"""Env runners spread over the nodes of a real multi-node Ray cluster (one machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_env_runners_spread_across_nodes():
    script = Path(__file__).with_name("multinode_script.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    # The head has 0 CPUs and each worker node 1: two runners need both worker nodes.
    assert sorted(report["runner_nodes"]) == sorted(report["worker_nodes"])
    assert report["steps"] >= 200
