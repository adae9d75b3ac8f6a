"""The benchmark scripts run end to end in their tiny ``--smoke`` mode (real, subprocess).

Each script is started as its own interpreter, exactly as a user would run it, and its
output is checked for the lines the full run prints (ratio rows, results table), so the
scripts cannot silently rot when the package changes. Numbers are not checked: on a
shared machine they are noise at this size.
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

ROOT = Path(__file__).resolve().parents[2]
FLOAT = r"-?\d+(?:\.\d+)?"
BENCH = ROOT / "bench"


def run_script(name: str, *args: str, timeout: float = 240) -> str:
    """Runs ``bench/<name>`` with ``--smoke`` and returns its stdout (asserting rc 0)."""
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # always a private local Ray instance
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), "--smoke", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env,
    )
    assert proc.returncode == 0, (
        f"{name} --smoke failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_update_cost_smoke_prints_ratio_row():
    out = run_script("update_cost.py")
    assert "KFCPO/PPOLag" in out
    rows = re.findall(rf"^\s*16x16 \| +({FLOAT}) \| +({FLOAT}) \| +({FLOAT}) \| +({FLOAT})%",
                      out, flags=re.MULTILINE)
    assert rows, out
    t_ppo, t_kf, ratio, share = map(float, rows[0])
    assert t_ppo > 0 and t_kf > 0 and ratio > 0
    assert 0 <= share <= 100
    cpo = re.findall(rf"^\s*16x16 \|.*\| +({FLOAT}) \| +({FLOAT}) \| +({FLOAT})%$", out,
                     flags=re.MULTILINE)
    assert cpo, out
    t_cpo, cpo_ratio, cg_share = map(float, cpo[0])
    assert t_cpo > 0 and cpo_ratio > 0 and 0 < cg_share <= 100


def test_sampling_smoke_prints_ratio_rows():
    out = run_script("sampling.py")
    rows = re.findall(
        rf"^\s*SafetyHalfCheetahVelocity-v1 \| +off \| +off \| +(\d) \| +(\d) \| +({FLOAT}) \|"
        rf" +({FLOAT}) \| +({FLOAT}) \| +({FLOAT}) \| +({FLOAT})", out, flags=re.MULTILINE)
    assert {(r[0], r[1]) for r in rows} == {("1", "1"), ("2", "1")}, out
    for row in rows:
        assert all(float(v) > 0 for v in row[2:]), row


def test_learning_smoke_prints_table_and_writes_curves(tmp_path: Path):
    out = run_script("learning.py", "--ablations", "--out", str(tmp_path))
    for name in ("PPOLag", "KFCPO", "KFCPO-no-projection", "KFCPO-hard-switch",
                 "KFCPO-no-rollback", "KFCPO-plain-gradient"):
        assert re.search(rf"\| +{re.escape(name)} \| +{FLOAT} \+- +{FLOAT} \|", out), name
    results = json.loads((tmp_path / "results.json").read_text())
    (env_rows,) = results.values()
    assert env_rows["KFCPO"]["seeds"] == 1
    assert 0.0 <= env_rows["PPOLag"]["within_limit"] <= 1.0
    assert list(tmp_path.rglob("learning_curves.png"))
    # --summarise: each run's record with its learner diagnostics, the means over its last
    # 10 % of iterations (recomputed here from one KFCPO run's progress.csv).
    # With --window A:B, also the means of the episode return and cost over the iterations
    # whose env steps lie in [A, B] (here from the second iteration on).
    (progress,) = [p for p in tmp_path.rglob("progress.csv") if p.parent.parent.name == "KFCPO"]
    rows = list(csv.DictReader(progress.open()))
    steps = [int(float(r["num_env_steps_sampled_lifetime"])) for r in rows]
    window = (steps[1], steps[-1])
    summary = tmp_path / "summary.json"
    out = run_script("learning.py", "--summarise", str(tmp_path), "--records", str(summary),
                     "--window", f"{window[0]}:{window[1]}")
    assert re.search(r"^ +KFCPO \| steps +[\d,]+ \| return", out, re.MULTILINE), out
    assert "final 10 %, per seed: weight_cost " in out, out
    assert "whole run, per seed: margin_multiplier_peak " in out, out
    assert "violation by quarter of the run (mean over seeds): " in out, out
    assert f"env steps {window[0]:,}-{window[1]:,}: return" in out, out
    (run,) = json.loads(summary.read_text())["KFCPO"]["runs"]

    def column(name: str, among: list[dict]) -> list[float]:  # the logged, finite values
        return [v for r in among if r.get(name) not in ("", None)
                and not math.isnan(v := float(r[name]))]

    # The record names its env and wall time from the trial itself.
    params = json.loads((progress.parent / "params.json").read_text())
    assert run["env"] == params["env"] != ""
    assert run["wall_s"] == pytest.approx(float(rows[-1]["time_total_s"]))
    tail = rows[-max(1, math.ceil(0.1 * len(rows))):]
    for name in ("weight_cost", "margin_multiplier", "entropy", "policy_steps"):
        values = column(f"learners/default_policy/{name}", tail)
        assert run["diagnostics"][name] == pytest.approx(sum(values) / len(values)), name
    weights = column("learners/default_policy/weight_cost", rows)
    assert run["diagnostics"]["weight_cost_share_above_0.95"] == pytest.approx(
        sum(w > 0.95 for w in weights) / len(weights))
    assert run["diagnostics"]["margin_multiplier_peak"] == max(
        column("learners/default_policy/margin_multiplier", rows))
    inside = rows[1:]
    returns = column("env_runners/episode_return_mean", inside)
    costs = column("env_runners/episode_cost_mean", inside)
    assert len(run["violation_by_quarter"]) == 4
    assert run["window"]["iterations"] == len(inside)
    assert run["window"]["return"] == pytest.approx(sum(returns) / len(returns))
    assert run["window"]["cost"] == pytest.approx(sum(costs) / len(costs))


@pytest.mark.parametrize(("args", "message"), [
    (("--window", "0:1000"), "--window only applies to --summarise DIR: add --summarise."),
    (("--summarise", ".", "--window", "9:3"), "--window '9:3' is invalid: give env steps as "
                                              "A:B with 0 <= A <= B"),
])
def test_learning_window_errors_name_the_fix(args, message):
    proc = subprocess.run([sys.executable, str(BENCH / "learning.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_headline_smoke_records_runs_and_skips_them_when_run_again(tmp_path: Path):
    records = tmp_path / "headline.json"
    args = ("--headline", "--algos", "KFCPO,PPOLag", "--records", str(records),
            "--out", str(tmp_path / "runs"))
    out = run_script("learning.py", *args)
    rows = json.loads(records.read_text())
    assert {(r["algo"], r["seed"]) for r in rows} == {("KFCPO", 0), ("PPOLag", 0)}
    for r in rows:
        assert r["steps"] >= 600 and r["wall_s"] > 0
        assert r["mean_violation"] >= 0.0
        assert set(r) == {"env", "algo", "seed", "steps", "final_return", "final_cost",
                          "mean_violation", "wall_s"}
    assert "KFCPO: mean violation <= 0.5 x PPOLag's" in out
    assert list(tmp_path.glob("headline_*.png"))
    again = run_script("learning.py", *args)
    assert again.count("done, skipped") == 2, again
    assert json.loads(records.read_text()) == rows


def test_scale_out_smoke_prints_rows_and_skips():
    out = run_script("scale_out.py")
    rows = re.findall(rf"^\s+1 \| +1 \| +({FLOAT}) \| +({FLOAT}) \|", out, flags=re.MULTILINE)
    assert rows and float(rows[0][0]) > 0 and float(rows[0][1]) == 1.0, out
    assert "skipped: " in out and "cores, this machine has" in out, out
    assert re.search(r"GPU update 16x16(: skipped: CUDA| on cuda)", out), out


def test_env_speed_smoke_prints_ratio_rows():
    out = run_script("env_speed.py")
    rows = re.findall(rf"^\s*SafetyPointGoal1-v0 \| +({FLOAT}) \| +({FLOAT}) \| +({FLOAT})",
                      out, flags=re.MULTILINE)
    assert rows and all(float(v) > 0 for v in rows[0]), out


def test_learning_smoke_runs_the_baselines(tmp_path: Path):
    out = run_script("learning.py", "--algos", "PPOPIDLag,CPO", "--out", str(tmp_path))
    for name in ("PPOPIDLag", "CPO"):
        assert re.search(rf"\| +{re.escape(name)} \| +{FLOAT} \+- +{FLOAT} \|", out), name
    (env_rows,) = json.loads((tmp_path / "results.json").read_text()).values()
    assert set(env_rows) == {"PPOPIDLag", "CPO"}


def test_headline_targets_are_checked_for_kfcpo_and_its_variants_never_as_baselines():
    """A recorded KFCPO variant gets its own three target lines and is not a baseline:
    here the variant is within the limit and PPOLag is not, so 'no baseline within the
    limit' holds for both KFCPO rows."""
    sys.path.insert(0, str(BENCH))
    try:
        import learning
    finally:
        sys.path.remove(str(BENCH))

    def record(algo: str, ret: float, cost: float, violation: float) -> dict:
        return {"env": "E", "algo": algo, "seed": 0, "steps": 10, "final_return": ret,
                "final_cost": cost, "mean_violation": violation, "wall_s": 1.0}

    lines = learning.headline_table([record("PPOLag", 20.0, 40.0, 20.0),
                                     record("KFCPO", 12.0, 30.0, 12.0),
                                     record("KFCPO-offset0.3", 8.0, 22.0, 9.0)], 25.0)
    text = "\n".join(lines)
    assert "KFCPO: no baseline within the limit, so KFCPO must be: NOT met" in text
    assert ("KFCPO-offset0.3: no baseline within the limit, so KFCPO-offset0.3 must be: met"
            in text)
    assert "KFCPO-offset0.3: mean violation <= 0.5 x PPOLag's (20.00): 9.00 met" in text
    assert "KFCPO: mean violation <= 0.5 x PPOLag's (20.00): 12.00 NOT met" in text
    assert "best feasible baseline (KFCPO" not in text


def test_headline_records_leave_out_iterations_that_sampled_nothing():
    """While a trial's env runner is down (killed for memory, restarting), Tune logs
    iterations with no samples (lifetime steps 0 or not logged, no return or cost). They
    are not part of the run: the final 10 % and the mean violation are those of the
    iterations that sampled, recomputed here by hand; the violation by quarter splits
    those iterations into four near-equal consecutive shares."""
    sys.path.insert(0, str(BENCH))
    try:
        import learning
    finally:
        sys.path.remove(str(BENCH))

    nan = math.nan
    # 4 idle iterations (0, NaN steps), then 12 that sampled 10 steps each, one of them
    # repeated (a re-logged iteration: no new steps), and the cost NaN in the first one.
    steps = [0, 0, nan, 0] + [10.0 * k for k in range(1, 13)]
    steps.insert(9, 50.0)  # a 6th row at 50: sampled nothing new
    costs = [nan] * 4 + [nan, 40, 31, 20, 27, 27, 10, 45, 25, 26, 33, 12, 60]
    returns = [nan] * 4 + [float(k) for k in range(13)]
    assert len(steps) == len(costs) == len(returns) == 17
    mask = learning.sampled_iterations(steps)
    assert mask.tolist() == [False] * 4 + [True] * 5 + [False] + [True] * 7
    kept_costs = [c for c, k in zip(costs, mask, strict=True) if k]
    kept_returns = [r for r, k in zip(returns, mask, strict=True) if k]
    record = learning.run_record({"steps": np.array(steps), "return": np.array(returns),
                                  "cost": np.array(costs)},
                                 env="E", algo="A", seed=0, limit=25.0, wall_s=1.0)
    excess = [max(0.0, (0.0 if c != c else c) - 25.0) for c in kept_costs]
    assert record["mean_violation"] == pytest.approx(sum(excess) / 12)
    assert record["final_cost"] == pytest.approx(sum(kept_costs[-2:]) / 2)  # 10 % of 12 -> 2
    assert record["final_return"] == pytest.approx(sum(kept_returns[-2:]) / 2)
    assert record["steps"] == 120
    quarters = learning.violation_by_part(kept_costs, 25.0)
    assert quarters == pytest.approx([sum(excess[i:i + 3]) / 3 for i in (0, 3, 6, 9)])
    assert learning.violation_by_part([30.0] * 5, 25.0, parts=2) == [5.0, 5.0]
    assert learning.sampled_iterations([0, math.nan, 0]).tolist() == [True] * 3  # none
