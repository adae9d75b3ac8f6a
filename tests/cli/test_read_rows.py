"""Reading a trial's per-iteration results, including a trial resumed from a checkpoint.

Seen on a resumed headline group: after the resume, Tune logged the iterations between the
checkpoint and the interruption again, and the new rows of progress.csv had two more
fields than its header, so return and cost were read from other columns (a final cost of
2,173 on a task whose episode cost is at most 1,000).
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from rllib_kfcpo.cli.plot import read_rows, read_trial
from rllib_kfcpo.cli.run import COST_KEY, RETURN_KEY, STEPS_KEY


def _result(iteration: int, ret: float, cost: float, extra: bool = False) -> dict:
    env_runners = {"episode_return_mean": ret, "episode_cost_mean": cost}
    if extra:  # metrics that only the resumed run logs
        env_runners["num_episodes_lifetime"] = 7
    return {"training_iteration": iteration, "num_env_steps_sampled_lifetime": 100 * iteration,
            "env_runners": env_runners}


# Iterations 1-3, interrupted; resumed from the checkpoint of iteration 1: 2-4 again.
FIRST = [_result(1, 1.0, 0.0), _result(2, 2.0, 5.0), _result(3, 3.0, 6.0)]
RESUMED = [_result(2, 20.0, 50.0, True), _result(3, 30.0, 60.0, True),
           _result(4, 40.0, 70.0, True)]


def _expected(trial: dict) -> None:
    assert list(trial["steps"]) == [100, 200, 300, 400]
    assert list(trial["return"]) == [1.0, 20.0, 30.0, 40.0]  # the resumed rows win
    assert list(trial["cost"]) == [0.0, 50.0, 60.0, 70.0]  # a cost of 0.0 stays 0.0


def test_result_json_of_a_resumed_trial_keeps_one_row_per_iteration(tmp_path):
    with (tmp_path / "result.json").open("w") as f:
        for row in FIRST + RESUMED:
            f.write(json.dumps(row) + "\n")
    # A progress.csv as the resume leaves it: new rows longer than the header.
    header = [STEPS_KEY, RETURN_KEY, COST_KEY, "training_iteration"]
    with (tmp_path / "progress.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in FIRST:
            writer.writerow([row[STEPS_KEY], 1.0, 0.0, row["training_iteration"]])
        for row in RESUMED:
            writer.writerow([7, row[STEPS_KEY], 1000.0, 2173.0, row["training_iteration"]])
    _expected(read_trial(tmp_path))
    assert [r["training_iteration"] for r in read_rows(tmp_path)] == [1, 2, 3, 4]


def test_progress_csv_alone_is_read_with_the_same_rule(tmp_path):
    header = ["training_iteration", STEPS_KEY, RETURN_KEY, COST_KEY]
    with (tmp_path / "progress.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in FIRST + RESUMED:
            er = row["env_runners"]
            writer.writerow([row["training_iteration"], row[STEPS_KEY],
                             er["episode_return_mean"], er["episode_cost_mean"]])
        writer.writerow([5, 500, "", ""])  # an iteration in which no episode ended
    trial = read_trial(tmp_path)
    assert list(trial["steps"]) == [100, 200, 300, 400, 500]
    assert list(trial["return"][:4]) == [1.0, 20.0, 30.0, 40.0]
    assert math.isnan(trial["return"][4]) and math.isnan(trial["cost"][4])


def test_a_running_trials_half_written_last_line_is_left_out(tmp_path):
    """Tune appends result.json while the trial runs: reading it then (a plot or a summary
    of a running experiment) may catch the last line half written. The complete rows are
    read; a damaged line before the last is one clear error naming the file and line."""
    lines = [json.dumps(row) for row in FIRST]
    (tmp_path / "result.json").write_text("\n".join(lines) + "\n" + lines[0][:25])
    assert [r["training_iteration"] for r in read_rows(tmp_path)] == [1, 2, 3]
    (tmp_path / "result.json").write_text(lines[0][:25] + "\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"result.json, line 1, is not a JSON result .*"
                                         "remove that line or the trial directory"):
        read_rows(tmp_path)
