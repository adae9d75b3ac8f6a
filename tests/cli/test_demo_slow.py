"""The README's demo, run as the user runs it (slow: RUN_SLOW=1 / `make test-slow`).

`rllib train file tuned_examples/kfcpo/demo-point-goal-hazard.yaml --plot` in a fresh
local Ray instance (KFCPO on the built-in PointGoalHazard-v0, seed 0): the fixed-seed run
must start at least twice over the cost limit and end within it, by the iterations' own
episode cost and by Jc (the windowed episode cost KFCPO constrains), both as the course
line's "final" (the mean of the last 10 % of iterations), while the return rises clearly;
the printed course line and the PNG must be there. About 2 minutes on 2 idle cores; 20
minutes or more while other trainings share them.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rllib_kfcpo.cli.run import COST_KEY, COST_WINDOW_KEY, RETURN_KEY, final_rows
from tests.cli.test_cli_end_to_end import ROOT, rllib_command

pytestmark = pytest.mark.slow

YAML = ROOT / "tuned_examples" / "kfcpo" / "demo-point-goal-hazard.yaml"
LIMIT = 25.0


def test_the_demo_ends_within_the_limit_while_the_return_rises(tmp_path: Path):
    argv = [*rllib_command(), "train", "file", str(YAML), "--storage-path", str(tmp_path),
            "--plot"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    course = re.search(r"course: return (\S+) -> (\S+), episode cost (\S+) -> (\S+), "
                       r"Jc (\S+) -> (\S+) \(Jc within the limit 25;", proc.stdout)
    assert course, proc.stdout[-3000:]

    (progress,) = (tmp_path / "demo").glob("*/progress.csv")
    with progress.open() as f:
        rows = list(csv.DictReader(f))
    column = {key: np.array([float(r[key]) for r in rows])
              for key in (RETURN_KEY, COST_KEY, COST_WINDOW_KEY)}
    tail = final_rows(len(rows))  # the course line's "final"
    first = {key: values[0] for key, values in column.items()}
    final = {key: values[-tail:].mean() for key, values in column.items()}
    # The course line prints exactly these numbers.
    printed = [float(x) for x in course.groups()]
    assert printed == pytest.approx(
        [first[RETURN_KEY], final[RETURN_KEY], first[COST_KEY], final[COST_KEY],
         first[COST_WINDOW_KEY], final[COST_WINDOW_KEY]], abs=0.051)

    assert first[COST_KEY] >= 2 * LIMIT  # the first policy is far over the limit
    assert final[COST_KEY] <= LIMIT and final[COST_WINDOW_KEY] <= LIMIT
    # The return rises clearly (measured: -0.09 -> 4.65; seeds 1, 2: 8.35, 4.97).
    assert final[RETURN_KEY] >= first[RETURN_KEY] + 3.0
    assert (tmp_path / "demo" / "learning_curves.png").stat().st_size > 10_000
