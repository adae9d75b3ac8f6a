"""`rllib tune --scheduler asha`: the worst trial stops early, the ranking stays feasible-first.

Four real KFCPO trials on the toy ActionCost env (cost 1[a > 0], 50-step episodes: a
near-random policy's episode cost is about 25), run one after another with a budget of 2
iterations of 100 env steps. Three have cost limit 100 (always kept), the last 0.5
(never kept in 2 iterations), so on ASHA's constrained objective it is the worst trial at
the rung after iteration 1 (grace period 1, reduction factor 2) and must be stopped there.
"""

from __future__ import annotations

import json

import pytest
from ray import tune

from rllib_kfcpo.cli.experiment import ExperimentError
from rllib_kfcpo.cli.main import main
from rllib_kfcpo.cli.search import (
    INFEASIBLE_OFFSET,
    OBJECTIVE_KEY,
    asha_rungs,
    make_scheduler,
    rank_trials,
)
from rllib_kfcpo.envs.toy import ACTION_COST_ENV

TINY = {"train_batch_size": 100, "minibatch_size": 50, "num_epochs": 1,
        "num_env_runners": 0, "num_envs_per_env_runner": 1}
SEARCH = {"cost_limit": [100.0, 100.0, 100.0, 0.5],
          "margin_temperature": {"loguniform": [0.05, 0.2]}}
BUDGET = 2


def test_asha_stops_the_infeasible_trial_early_and_ranking_is_feasible_first(
        ray_local, tmp_path, capsys):
    code = main(["tune", "--algo", "KFCPO", "--env", ACTION_COST_ENV,
                 "--config", json.dumps(TINY),
                 "--stop", json.dumps({"training_iteration": BUDGET}),
                 "--search", json.dumps(SEARCH), "--num-samples", "1", "--max-concurrent", "1",
                 "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "2",
                 "--storage-path", str(tmp_path), "--name", "asha"])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert "scheduler: ASHA on constrained_objective: the worst trials stop at " \
           "iteration(s) 1 (reduction factor 2; budget 2)" in out

    grid = tune.ResultGrid(tune.ExperimentAnalysis(str(tmp_path / "asha")))
    assert len(grid) == 4 and not grid.errors
    iterations = {r.path: r.metrics["training_iteration"] for r in grid}
    (worst,) = [r for r in grid if r.config["cost_limit"] == 0.5]
    # The infeasible trial was stopped at the rung, before its budget ...
    assert iterations[worst.path] == 1 < BUDGET, iterations
    assert worst.metrics[OBJECTIVE_KEY] < INFEASIBLE_OFFSET
    # ... while the first trial (nothing to compare with yet) ran its whole budget.
    first = min(grid, key=lambda r: r.metrics["trial_id"])
    assert first.config["cost_limit"] == 100.0 and iterations[first.path] == BUDGET

    # The ranking is the feasible-first one: every feasible trial by return, then the
    # infeasible one, whatever its return, also in the table `rllib tune` printed.
    ranked = rank_trials(grid, list(SEARCH))
    assert [t.feasible for t in ranked] == [True, True, True, False]
    assert ranked[-1].cost_limit == 0.5 and ranked[-1].steps < ranked[0].steps
    returns = [t.episode_return for t in ranked[:3]]
    assert returns == sorted(returns, reverse=True)
    assert grid.get_best_result(OBJECTIVE_KEY, "max").config["cost_limit"] == 100.0
    table = out[out.index("== ranking"):].splitlines()
    assert all(" yes " in line for line in table[2:5]) and " NO " in table[5]


def test_asha_settings_are_checked():
    assert asha_rungs(100, 10, 4) == [10, 40]
    assert asha_rungs(2, 1, 2) == [1]
    default = make_scheduler("asha", {"num_env_steps_sampled_lifetime": 2_000_000})
    assert default.rllib_kfcpo_settings == ("num_env_steps_sampled_lifetime", 2_000_000,
                                            200_000, 4.0)
    assert make_scheduler("fifo", {}) is None
    with pytest.raises(ExperimentError, match="needs a budget"):
        make_scheduler("asha", {"env_runners/episode_return_mean": 10})
    with pytest.raises(ExperimentError, match="--grace-period 5 is invalid"):
        make_scheduler("asha", {"training_iteration": 4}, grace_period=5)
    with pytest.raises(ExperimentError, match="--reduction-factor 1 is invalid"):
        make_scheduler("asha", {"training_iteration": 4}, reduction_factor=1)
