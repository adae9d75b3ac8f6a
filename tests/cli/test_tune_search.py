"""`rllib tune`: a real KFCPO hyperparameter search that respects the cost limit.

A tiny search on the toy ActionCost env (reward a, cost 1[a > 0], 50-step episodes, so a
near-random policy has an episode cost around 25): two trials, two iterations of 100 env
steps. One trial's cost limit (0.5) cannot be met in two iterations, the other's (100)
always is, so the ranking must put the infeasible trial last whatever its return. The
search is interrupted (SIGINT, as Ctrl+C does) after the first trial finishes, then
resumed with `rllib tune ... --resume` (tune.Tuner.restore), which runs only the rest.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
from ray import tune

from rllib_kfcpo.cli.experiment import Experiment, ExperimentError
from rllib_kfcpo.cli.main import main
from rllib_kfcpo.cli.search import (
    INFEASIBLE_OFFSET,
    OBJECTIVE_KEY,
    UNMEASURED,
    constrained_objective,
    parse_search_space,
    rank_trials,
    run_search,
)
from rllib_kfcpo.envs.toy import ACTION_COST_ENV

TINY = {"train_batch_size": 100, "minibatch_size": 50, "num_epochs": 1,
        "num_env_runners": 0, "num_envs_per_env_runner": 1}
SEARCH = {
    "cost_limit": [0.5, 100.0],  # grid: one infeasible and one feasible trial
    "margin_temperature": {"loguniform": [0.05, 0.2]},
    "kfac_damping": {"loguniform": [1e-3, 1e-1]},
    "trust_region_kl": {"loguniform": [1e-3, 4e-3]},
}
ITERATIONS = 2


class InterruptAfterFirstTrial(tune.Callback):
    """Sends this process SIGINT (Ctrl+C) when the first trial of the search completes.

    Tune restores this callback with the search; after the resume another trial has
    already completed, so it does not fire again.
    """

    def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: D102
        if any(t.status == "TERMINATED" for t in trials if t is not trial):
            return
        # Only into Tune's own handler: a SIGINT to pytest's would end the test session.
        handler = signal.getsignal(signal.SIGINT)
        if handler in (signal.default_int_handler, signal.SIG_DFL, signal.SIG_IGN, None):
            raise RuntimeError("Tune installed no SIGINT handler (not the main thread, or "
                               "TUNE_DISABLE_SIGINT_HANDLER=1): cannot interrupt the search")
        os.kill(os.getpid(), signal.SIGINT)


def _experiment() -> Experiment:
    return Experiment(name="toy-kfcpo", run="KFCPO", env=ACTION_COST_ENV,
                      stop={"training_iteration": ITERATIONS}, config=dict(TINY))


def test_objective_ranks_every_feasible_result_above_every_infeasible_one():
    assert constrained_objective(-500.0, 25.0, 25.0) == -500.0  # at the limit: feasible
    infeasible = constrained_objective(1e6, 25.1, 25.0)  # huge return, over the limit
    assert infeasible < constrained_objective(-1e6, 0.0, 25.0)
    assert infeasible == pytest.approx(INFEASIBLE_OFFSET - 0.1)
    assert constrained_objective(10.0, 30.0, 25.0) > constrained_objective(10.0, 40.0, 25.0)
    assert constrained_objective(10.0, math.nan, 25.0) == UNMEASURED


def test_bad_search_space_is_named():
    with pytest.raises(ExperimentError, match="'kfac_damping': loguniform needs"):
        parse_search_space({"kfac_damping": {"loguniform": [0.0, 1.0]}})
    with pytest.raises(ExperimentError, match="unknown distribution 'normal'"):
        parse_search_space({"kfac_damping": {"normal": [0.0, 1.0]}})
    with pytest.raises(ExperimentError, match="'margin_temprature'"):
        run_search(_experiment(), search={"margin_temprature": [0.1]})


def test_resume_without_a_search_is_refused(tmp_path, capsys):
    code = main(["tune", "--algo", "KFCPO", "--env", ACTION_COST_ENV, "--config",
                 json.dumps(TINY), "--storage-path", str(tmp_path), "--name", "nothing",
                 "--resume"])
    assert code == 2
    assert "Nothing to resume" in capsys.readouterr().err


def test_search_ranks_infeasible_last_and_resumes_after_interruption(ray_local, tmp_path,
                                                                     capsys):
    exp = _experiment()
    grid = run_search(exp, search=SEARCH, storage_path=str(tmp_path), name="search",
                      checkpoint_freq=1, max_concurrent_trials=1,
                      extra_callbacks=[InterruptAfterFirstTrial()])
    first = {r.config["cost_limit"]: (r.metrics or {}).get("training_iteration", 0)
             for r in grid}
    finished_first = [limit for limit, it in first.items() if it == ITERATIONS]
    assert len(finished_first) == 1, f"the search was not interrupted: {first}"
    done_dir = next(Path(r.path) for r in grid if r.config["cost_limit"] == finished_first[0])
    rows_before = (done_dir / "progress.csv").read_text()

    # Resume through the command line, as a user would after Ctrl+C.
    capsys.readouterr()
    code = main(["tune", "--algo", "KFCPO", "--env", ACTION_COST_ENV, "--config",
                 json.dumps(TINY), "--stop", json.dumps({"training_iteration": ITERATIONS}),
                 "--search", json.dumps(SEARCH), "--storage-path", str(tmp_path),
                 "--name", "search", "--resume"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "== resuming search" in out

    restored = tune.ExperimentAnalysis(str(tmp_path / "search"))
    restored = tune.ResultGrid(restored)
    assert len(restored) == 2 and not restored.errors
    assert all(r.metrics["training_iteration"] == ITERATIONS for r in restored)
    assert all(r.checkpoint is not None for r in restored)
    # The trial finished before the interruption was not run again.
    assert (done_dir / "progress.csv").read_text() == rows_before

    ranked = rank_trials(restored, list(SEARCH))
    assert [t.cost_limit for t in ranked] == [100.0, 0.5]
    best, last = ranked
    assert best.feasible and best.episode_cost <= 100.0
    assert not last.feasible and last.episode_cost > 0.5
    assert last.objective < INFEASIBLE_OFFSET < best.objective
    for t in ranked:  # the searched hyperparameters are reported with each trial
        assert 0.05 <= t.params["margin_temperature"] <= 0.2
        assert 1e-3 <= t.params["kfac_damping"] <= 1e-1
        assert 1e-3 <= t.params["trust_region_kl"] <= 4e-3
    # Tune's own best result (used by schedulers and checkpoint ranking) agrees.
    assert restored.get_best_result(OBJECTIVE_KEY, "max").config["cost_limit"] == 100.0
    # Every reported iteration carries the derived metric.
    for r in restored:
        assert r.metrics_dataframe[OBJECTIVE_KEY].notna().all()
    # The leaderboard printed by `rllib tune` lists the feasible trial first.
    table = out[out.index("== ranking"):].splitlines()
    assert " yes " in table[2] and " NO " in table[3]
