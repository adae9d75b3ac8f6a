"""`rllib train --algo CPO|PPOPIDLag` through the console script, then evaluate and plot;
their default Tune search spaces name only their own settings."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from rllib_kfcpo.cli.experiment import Experiment
from rllib_kfcpo.cli.main import main
from rllib_kfcpo.cli.search import _check_search_keys, default_search_space
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from tests.cli.test_cli_end_to_end import ROOT, rllib_command


@pytest.mark.parametrize("algo", ["CPO", "PPOPIDLag"])
def test_train_algo_then_evaluate_and_plot(ray_local, tmp_path: Path, capsys, algo: str):
    argv = [*rllib_command(), "train", "--algo", algo, "--env", ACTION_COST_ENV, "--smoke",
            "--stop", json.dumps({"training_iteration": 2}), "--storage-path", str(tmp_path)]
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exp_dir = tmp_path / f"{algo}-{ACTION_COST_ENV}"
    progress = list(exp_dir.rglob("progress.csv"))
    assert len(progress) == 1 and len(progress[0].read_text().splitlines()) == 3  # 2 rows

    checkpoint = sorted(exp_dir.rglob("checkpoint_*"))[-1]
    assert main(["evaluate", str(checkpoint), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["episodes"] == 2 and math.isfinite(report["episode_return_mean"])

    png = tmp_path / "curves.png"
    assert main(["plot", str(exp_dir), "-o", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("algo", ["CPO", "PPOPIDLag", "PPOLag", "KFCPO"])
def test_default_search_space_fits_the_algorithm(algo: str):
    space = default_search_space(algo)
    exp = Experiment(name="s", run=algo, env=ACTION_COST_ENV, config={"cost_limit": 5.0})
    _check_search_keys(exp, space)  # builds and validates the config with each key set
    if algo != "KFCPO":
        assert "kfac_damping" not in space
