"""The per-iteration progress line: progress against the stop criterion and an ETA."""

from __future__ import annotations

import math

import pandas as pd

from rllib_kfcpo.cli.run import (
    COST_KEY,
    COST_WINDOW_KEY,
    RETURN_KEY,
    course_line,
    format_duration,
    progress_line,
    stop_progress,
)


def _result(iteration: int, steps: int, elapsed: float) -> dict:
    return {
        "training_iteration": iteration,
        "num_env_steps_sampled_lifetime": steps,
        "time_this_iter_s": 4.8,
        "time_total_s": elapsed,
        "env_runners": {"episode_return_mean": 1.5, "episode_cost_mean": 30.0},
        "learners": {"default_policy": {"mean_kl": 0.01}},
    }


def test_steps_stop_shows_target_percentage_and_eta():
    # 120,000 of 1,000,000 steps after 114.5 s: 88 % left at the same speed = 840 s.
    line = progress_line(_result(6, 120_000, 114.5), 25.0,
                         stop={"num_env_steps_sampled_lifetime": 1_000_000})
    assert "| steps   120,000/1,000,000 (12 %) |" in line
    assert line.endswith("| eta 14m")
    assert "iter    6 |" in line  # the other counter stays as it was
    assert "cost   30.000!/ limit 25" in line


def test_iteration_stop_shows_target_percentage_and_eta():
    line = progress_line(_result(3, 12_000, 30.0), 25.0, label="[abc_00000] ",
                         stop={"training_iteration": 10})
    assert line.startswith("[abc_00000] iter    3/10 (30 %) | steps    12,000 |")
    assert line.endswith("| eta 1m")  # 7 iterations left at 10 s each: 70 s


def test_the_stop_that_ends_the_run_first_is_shown():
    stop = {"training_iteration": 100, "num_env_steps_sampled_lifetime": 40_000}
    assert stop_progress(_result(3, 12_000, 30.0), stop) == (
        "num_env_steps_sampled_lifetime", 0.3)
    line = progress_line(_result(3, 12_000, 30.0), 25.0, stop=stop)
    assert "steps    12,000/40,000 (30 %)" in line and "iter    3 |" in line


def test_no_progress_without_a_measurable_stop():
    for stop in (None, {}, {"env_runners/episode_return_mean": 10}, {"time_total_s": 60}):
        line = progress_line(_result(3, 12_000, 30.0), 25.0, stop=stop)
        assert "eta" not in line and "%" not in line and "/" not in line.split("|")[0]
    assert stop_progress(_result(3, 12_000, 30.0), {"time_total_s": 60})[0] == ""


def test_durations_and_the_last_iteration():
    assert [format_duration(s) for s in (0, 45, 59.4, 840, 3599, 3600, 7500)] == [
        "0s", "45s", "59s", "14m", "1h00m", "1h00m", "2h05m"]
    assert format_duration(math.nan) == "?"
    line = progress_line(_result(10, 40_000, 100.0), 25.0, stop={"training_iteration": 10})
    assert "iter   10/10 (100 %)" in line and line.endswith("| eta 0s")


def test_course_line_compares_the_first_iteration_with_the_last_tenth():
    """25 iterations: the last 10 % are the last 3 (ceil 2.5); their means are computed
    here from the same series. The verdict is on Jc when the results have it."""
    returns = [float(i) for i in range(25)]
    costs = [150.0 - 6.0 * i for i in range(25)]
    window = [150.0 - 4.0 * i for i in range(25)]  # ends at 54 (mean of the last 3)
    frame = pd.DataFrame({RETURN_KEY: returns, COST_KEY: costs})
    line = course_line(frame, 25.0)
    assert line.startswith(f"return 0.00 -> {sum(returns[-3:]) / 3:.2f}, episode cost 150.0 -> "
                           f"{sum(costs[-3:]) / 3:.1f} (episode cost within the limit 25;")
    assert "mean of the last 3" in line
    assert "episode cost over the limit 5" in course_line(frame, 5.0)
    frame[COST_WINDOW_KEY] = window
    line = course_line(frame, 25.0)
    assert f"Jc 150.0 -> {sum(window[-3:]) / 3:.1f} (Jc over the limit 25;" in line
    assert "Jc within the limit 60" in course_line(frame, 60.0)
    assert course_line(pd.DataFrame({RETURN_KEY: returns}), 25.0) == ""
    assert course_line(None, 25.0) == ""


def test_iterations_without_an_ended_episode_show_a_dash_and_are_left_out_of_the_course():
    """Seen on a 16-core GPU machine: 1000-step episodes on 96 envs end about every fifth
    20,000-step iteration, so most results carry NaN return and cost."""
    result = _result(4, 80_000, 40.0)
    result["env_runners"] = {"episode_return_mean": math.nan, "episode_cost_mean": math.nan}
    line = progress_line(result, 25.0)
    assert "| return         - | cost        - / limit 25 |" in line
    assert "nan" not in line
    nan = math.nan
    returns = [nan, nan, 1.0, nan, nan, 3.0, nan, nan, 5.0, nan, nan, 7.0]
    costs = [nan, nan, 40.0, nan, nan, 30.0, nan, nan, 20.0, nan, nan, 10.0]
    line = course_line(pd.DataFrame({RETURN_KEY: returns, COST_KEY: costs}), 25.0)
    # 4 iterations ended episodes: first 1.0 / 40.0, final = the last of them (10 % of 4).
    assert line.startswith("return 1.00 -> 7.00, episode cost 40.0 -> 10.0 (episode cost "
                           "within the limit 25; first iteration with an ended episode")
    assert "8 of 12 iterations ended none" in line
    empty = pd.DataFrame({RETURN_KEY: [nan, nan], COST_KEY: [nan, nan]})
    assert course_line(empty, 25.0).startswith("no episode ended in the run")
