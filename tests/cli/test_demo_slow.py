"""The README's demo, run as the user runs it (slow: RUN_SLOW=1 / `make test-slow`).

`rllib train file tuned_examples/kfcpo/demo-point-goal1.yaml --plot` in a fresh local Ray
instance: the fixed-seed run must start well above the cost limit and bring Jc (the
windowed episode cost KFCPO constrains) down to under 1.5x the limit, with the last
iterations' own episodes within it; the printed course line and the PNG must be there.
(Issue 14 asks for Jc under the limit while the return rises; the demo does not do that
yet, see its YAML.) About 3 minutes on 2 idle cores.
"""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rllib_kfcpo.cli.run import COST_KEY, COST_WINDOW_KEY, RETURN_KEY
from tests.cli.test_cli_end_to_end import ROOT, rllib_command

pytestmark = pytest.mark.slow

YAML = ROOT / "tuned_examples" / "kfcpo" / "demo-point-goal1.yaml"
LIMIT = 25.0


def test_the_demo_brings_jc_down_from_several_times_the_limit(tmp_path: Path):
    argv = [*rllib_command(), "train", "file", str(YAML), "--storage-path", str(tmp_path),
            "--plot"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "course: return" in proc.stdout and ", Jc " in proc.stdout

    (progress,) = (tmp_path / "demo").glob("*/progress.csv")
    with progress.open() as f:
        rows = list(csv.DictReader(f))
    column = {key: np.array([float(r[key]) for r in rows])
              for key in (RETURN_KEY, COST_KEY, COST_WINDOW_KEY)}
    tail = max(1, int(np.ceil(0.1 * len(rows))))  # the course line's "final"
    assert column[COST_KEY][0] > 2 * LIMIT  # starts well above the limit
    assert column[COST_WINDOW_KEY][-tail:].mean() <= 1.5 * LIMIT
    assert column[COST_KEY][-tail:].mean() <= LIMIT
    assert np.isfinite(column[RETURN_KEY]).all()
    assert (tmp_path / "demo" / "learning_curves.png").stat().st_size > 10_000
