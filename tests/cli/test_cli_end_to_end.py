"""`rllib train file <yaml>` end to end through the console script, then `rllib plot`.

One real run (a fresh local Ray in a subprocess, KFCPO on SafetyPointGoal1-v0, two seeds,
two iterations of 200 env steps, 50-step episodes: the `--smoke` budgets) is shared by
the tests of this module: the progress lines, the result files, TensorBoard event files,
a learning-curve PNG whose plotted data must match the run's progress.csv files, and the
evaluation of the run's checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rllib_kfcpo.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
YAML = ROOT / "tuned_examples" / "kfcpo" / "safety-point-goal1.yaml"
EXPERIMENT = "safety-point-goal1-kfcpo"
SEEDS = (0, 1)
ITERATIONS = 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def rllib_command() -> list[str]:
    """The installed `rllib` console script (python -m ... if it is not installed)."""
    script = Path(sys.executable).parent / "rllib"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rllib_kfcpo.cli.main"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> dict:
    storage = tmp_path_factory.mktemp("cli_results")
    argv = [
        *rllib_command(), "train", "file", str(YAML), "--smoke",
        "--stop", json.dumps({"training_iteration": ITERATIONS}),
        "--config", json.dumps({"num_epochs": 2}),  # --config wins over --smoke's 1
        "--seeds", ",".join(map(str, SEEDS)),
        "--storage-path", str(storage),
    ]
    # A fresh local Ray instance of its own, whatever cluster the caller may know of.
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"stdout": proc.stdout, "dir": storage / EXPERIMENT}


def _trial_dirs(exp_dir: Path) -> list[Path]:
    return sorted(p.parent for p in exp_dir.glob("*/progress.csv"))


def _progress(trial_dir: Path) -> list[dict[str, str]]:
    with (trial_dir / "progress.csv").open() as f:
        return list(csv.DictReader(f))


def test_train_file_prints_one_progress_line_per_iteration(cli_run):
    out = cli_run["stdout"]
    assert "== safety-point-goal1-kfcpo: KFCPO on SafetyPointGoal1-v0, cost limit 25" in out
    # The iteration counter shows the stop target, its percentage, and the line an ETA.
    lines = re.findall(rf"^\[(\w+)\] iter +(\d+)/{ITERATIONS} \(\d+ %\) \| steps +[\d,]+ \| "
                       r"return .*\| cost .*/ limit 25 \|.*\| eta \d+[smh]", out, re.MULTILINE)
    per_trial: dict[str, list[int]] = {}
    for trial, it in lines:
        per_trial.setdefault(trial, []).append(int(it))
    assert len(per_trial) == len(SEEDS)
    assert all(its == list(range(1, ITERATIONS + 1)) for its in per_trial.values()), lines
    assert out.count("   final: ") == len(SEEDS)
    assert out.count("   checkpoint: ") == len(SEEDS)


def test_train_file_writes_results_checkpoints_and_tensorboard(cli_run):
    trials = _trial_dirs(cli_run["dir"])
    assert len(trials) == len(SEEDS)
    seeds = set()
    for trial in trials:
        rows = _progress(trial)
        assert [int(r["training_iteration"]) for r in rows] == list(range(1, ITERATIONS + 1))
        assert all(math.isfinite(float(r["env_runners/episode_cost_mean"])) for r in rows)
        assert (trial / "result.json").read_text().count("\n") == ITERATIONS
        params = json.loads((trial / "params.json").read_text())
        assert params["cost_limit"] == 25.0 and params["train_batch_size"] == 200
        assert params["num_epochs"] == 2 and params["env_config"]["max_episode_steps"] == 50
        seeds.add(params["seed"])
        events = list(trial.glob("events.out.tfevents*"))
        assert events, f"no TensorBoard events in {trial}"
        # TensorBoard (installed with the package) reads them: return and cost are there.
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        scalars = EventAccumulator(str(trial)).Reload().Tags()["scalars"]
        for key in ("env_runners/episode_return_mean", "env_runners/episode_cost_mean"):
            assert f"ray/tune/{key}" in scalars, sorted(scalars)[:20]
        assert list(trial.glob("checkpoint_*/rllib_checkpoint.json")), f"no checkpoint in {trial}"
    assert seeds == set(SEEDS)


def test_plot_writes_png_whose_curves_match_progress_csv(cli_run, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["plot", str(cli_run["dir"]), "-o", str(png)]) == 0
    assert "wrote" in capsys.readouterr().out
    blob = png.read_bytes()
    assert blob.startswith(PNG_SIGNATURE) and blob.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    data = json.loads(png.with_suffix(".json").read_text())
    assert data["cost_limits"] == [25.0]  # the dashed cost-limit line
    curves = data["groups"][EXPERIMENT]
    # Expected curves straight from the progress.csv files: each seed interpolated onto
    # the plotted env-step grid, then mean and min/max over seeds.
    runs = []
    for trial in _trial_dirs(cli_run["dir"]):
        rows = _progress(trial)
        runs.append({key: np.array([float(r[col]) for r in rows]) for key, col in (
            ("steps", "num_env_steps_sampled_lifetime"),
            ("return", "env_runners/episode_return_mean"),
            ("cost", "env_runners/episode_cost_mean"))})
    for key in ("return", "cost"):
        plotted = curves[key]
        assert plotted["n"] == len(SEEDS)
        grid = np.array(plotted["steps"])
        assert grid[0] == max(r["steps"][0] for r in runs)
        assert grid[-1] == min(r["steps"][-1] for r in runs)
        stack = np.stack([np.interp(grid, r["steps"], r[key]) for r in runs])
        np.testing.assert_allclose(plotted["mean"], stack.mean(0), rtol=1e-9)
        np.testing.assert_allclose(plotted["min"], stack.min(0), rtol=1e-9)
        np.testing.assert_allclose(plotted["max"], stack.max(0), rtol=1e-9)
        # At the last iteration the mean is simply the mean of the seeds' final values.
        assert plotted["mean"][-1] == pytest.approx(np.mean([r[key][-1] for r in runs]))


def test_evaluate_the_run_checkpoint(cli_run, ray_local, capsys):
    checkpoint = sorted(cli_run["dir"].glob("*seed=0*/checkpoint_*"))[-1]
    assert main(["evaluate", str(checkpoint), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert report["env"] == "SafetyPointGoal1-v0" and report["episodes"] == 2
    assert report["cost_limit"] == 25.0
    assert math.isfinite(report["episode_return_mean"]) and report["episode_cost_mean"] >= 0
