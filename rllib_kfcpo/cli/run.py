"""Runs experiments with Ray Tune and prints one progress line per iteration."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from rllib_kfcpo.cli.experiment import Experiment
from rllib_kfcpo.safe.columns import EPISODE_COST_MEAN, EPISODE_COST_WINDOW_MEAN

RETURN_KEY = "env_runners/episode_return_mean"
COST_KEY = f"env_runners/{EPISODE_COST_MEAN}"
#: Jc as the safe algorithms see it: the mean over the last ``cost_window_episodes``.
COST_WINDOW_KEY = f"env_runners/{EPISODE_COST_WINDOW_MEAN}"
STEPS_KEY = "num_env_steps_sampled_lifetime"
#: Share of a run's last iterations whose mean is its "final" value (here and in bench/).
FINAL_SHARE = 0.10


def final_rows(iterations: int) -> int:
    """How many of a run's last iterations make its final value (10 %, at least one)."""
    return max(1, math.ceil(FINAL_SHARE * iterations))


def _get(result: dict[str, Any], path: str, default: float = math.nan) -> Any:
    node: Any = result
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


#: Stop criteria the progress line measures progress against (result key -> label).
PROGRESS_STOPS = {"training_iteration": "iter", STEPS_KEY: "steps"}


def format_duration(seconds: float) -> str:
    """``45s``, ``14m``, ``2h05m``: a coarse duration for an ETA."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if round(seconds / 60) < 60:
        return f"{round(seconds / 60)}m"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours}h{minutes:02d}m"


def stop_progress(result: dict[str, Any], stop: dict[str, Any] | None) -> tuple[str, float]:
    """``(stop key, fraction done)`` of the stop criterion that will end the run first.

    Only ``training_iteration`` and ``num_env_steps_sampled_lifetime`` are measured;
    ``("", nan)`` when ``stop`` has neither.
    """
    best_key, best = "", math.nan
    for key in PROGRESS_STOPS:
        target = (stop or {}).get(key)
        if isinstance(target, bool) or not isinstance(target, (int, float)) or target <= 0:
            continue
        done = float(_get(result, key, 0) or 0) / float(target)
        if not best >= done:  # also replaces nan
            best_key, best = key, min(done, 1.0)
    return best_key, best


def _counter(value: float, width: int, key: str, measured: str, stop: dict[str, Any] | None,
             fraction: float) -> str:
    if key != measured:
        return f"{int(value):>{width},}"
    return f"{int(value):>{width},}/{int(stop[key]):,} ({int(fraction * 100)} %)"


def _metric(value: Any, width: int) -> str:
    """A per-episode metric with 3 decimals, or ``-`` when no episode ended (NaN)."""
    value = float(value)
    return f"{value:{width}.3f}" if math.isfinite(value) else f"{'-':>{width}}"


def progress_line(result: dict[str, Any], cost_limit: float, label: str = "",
                  stop: dict[str, Any] | None = None) -> str:
    """``iter | env steps | return | episode cost vs limit | KL | time [| eta]`` for one result.

    With a ``training_iteration`` or ``num_env_steps_sampled_lifetime`` stop criterion,
    that counter shows its target and the percentage done, e.g. ``steps
    120,000/1,000,000 (12 %)``, and the line ends with the estimated time left at the
    mean speed so far (``| eta 14m``). Return and cost show ``-`` for an iteration in
    which no episode ended (long episodes spread over many envs: 1000-step episodes on
    96 envs end about every fifth 20,000-step iteration).
    """
    learner = _get(result, "learners/default_policy", {})
    kl = learner.get("kl_after_step", learner.get("mean_kl", math.nan)) if learner else math.nan
    cost = _get(result, COST_KEY)
    flag = " " if not (cost > cost_limit) else "!"
    measured, fraction = stop_progress(result, stop)
    iteration = _counter(result.get("training_iteration", 0), 4, "training_iteration",
                         measured, stop, fraction)
    steps = _counter(_get(result, STEPS_KEY, 0), 9, STEPS_KEY, measured, stop, fraction)
    line = (
        f"{label}iter {iteration} | "
        f"steps {steps} | "
        f"return {_metric(_get(result, RETURN_KEY), 9)} | "
        f"cost {_metric(cost, 8)}{flag}/ limit {cost_limit:g} | "
        f"kl {float(kl):.5f} | "
        f"{float(result.get('time_this_iter_s', math.nan)):6.1f}s"
    )
    if measured:
        elapsed = float(result.get("time_total_s", math.nan))
        eta = elapsed * (1.0 - fraction) / fraction if fraction > 0 else math.nan
        line += f" | eta {format_duration(eta)}"
    return line


def course_line(frame: Any, cost_limit: float) -> str:
    """``first -> final`` return, episode cost and Jc of one trial, and the cost verdict.

    ``frame`` is the trial's per-iteration results (Tune's ``Result.metrics_dataframe``);
    "final" is the mean over the last :func:`final_rows` iterations, the rule of
    ``bench/learning.py``. Iterations in which no episode ended (NaN return) are left out
    of both ends, and the line says so. The verdict is on Jc, the windowed episode cost
    the algorithm constrains (``cost_window_episodes``), when the results have it;
    otherwise on the iterations' episode cost. Empty when the return or cost column is
    missing.
    """
    if frame is None or RETURN_KEY not in frame or COST_KEY not in frame or not len(frame):
        return ""
    ended = np.isfinite(frame[RETURN_KEY].astype(float).to_numpy())
    if not ended.any():
        return "no episode ended in the run: its episodes are longer than what it sampled"
    rows = frame[ended]
    tail = final_rows(len(rows))

    def first_and_final(key: str) -> tuple[float, float]:
        values = rows[key].astype(float).to_numpy()
        return float(values[0]), float(np.nanmean(values[-tail:]))

    (r0, r1), (c0, c1) = first_and_final(RETURN_KEY), first_and_final(COST_KEY)
    line = f"return {r0:.2f} -> {r1:.2f}, episode cost {c0:.1f} -> {c1:.1f}"
    judged, what = c1, "episode cost"
    if COST_WINDOW_KEY in frame and np.isfinite(frame[COST_WINDOW_KEY].astype(float)).any():
        w0, w1 = first_and_final(COST_WINDOW_KEY)
        line += f", Jc {w0:.1f} -> {w1:.1f}"
        judged, what = w1, "Jc"
    verdict = "within the limit" if judged <= cost_limit else "over the limit"
    if ended.all():
        span = f"first iteration -> mean of the last {tail}"
    else:
        span = (f"first iteration with an ended episode -> mean of the last {tail} such; "
                f"{int((~ended).sum())} of {len(ended)} iterations ended none")
    return f"{line} ({what} {verdict} {cost_limit:g}; {span})"


class ProgressPrinter(tune.Callback):
    """Tune callback: one readable line per trial iteration instead of result tables.

    Lines start with ``[trial id]`` when the experiment has several trials (or always,
    with ``label=True``, e.g. for searches whose trials are created one by one). With
    ``stop`` (the run's stop criteria) each line shows progress against it and an ETA.
    """

    def __init__(self, label: bool = False, stop: dict[str, Any] | None = None) -> None:
        self.label = label
        self.stop = dict(stop or {})

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: D102
        limit = float(trial.config.get("cost_limit", math.nan))
        label = f"[{trial.trial_id}] " if self.label or len(trials) > 1 else ""
        print(progress_line(result, limit, label, self.stop), flush=True)


def prepare_tune_run(config: Any, *, label: str, name: str, storage_path: str | None,
                     checkpoint_freq: int | None, resume: bool,
                     user_config: dict[str, Any] | None = None,
                     trials: int = 1) -> tuple[str, str]:
    """What `rllib train` and `rllib tune` do before Tune starts; returns
    ``(storage root, experiment dir)``.

    Refuses ``resume`` when there is no Tune experiment to restore, saves Tune's
    experiment state every loop step when checkpointing (Tune's default is at most every
    10 s, so a killed driver could resume from an older checkpoint than the newest on
    disk; overridable by setting ``TUNE_GLOBAL_CHECKPOINT_S``), starts or joins Ray, and
    checks that one trial fits the cluster (before Tune queues a trial that could never
    start).

    With ``user_config`` (the config keys the user set), the layout keys it does not set
    are first shrunk to fit the cluster (:func:`rllib_kfcpo.cli.layout.fit_layout`,
    ``config`` is changed in place) and the layout is printed in one line; a layout that
    does not fit is refused with a ``--config`` override that would. ``trials`` (the
    seeds run at once) decides whether a GPU learner is chosen: only with a GPU each.

    Raises:
        ExperimentError: nothing to resume, or the trial does not fit the cluster.
    """
    import ray

    from rllib_kfcpo.cli import quiet
    from rllib_kfcpo.cli.experiment import ExperimentError
    from rllib_kfcpo.cli.layout import (
        fit_layout,
        fitting_override,
        layout_line,
        override_hint,
        user_layout_keys,
    )
    from rllib_kfcpo.safe.resources import ClusterResourceError, check_cluster_resources

    storage = str(Path(storage_path or os.path.join(os.getcwd(), "results")).resolve())
    exp_dir = os.path.join(storage, name)
    if resume and not tune.Tuner.can_restore(exp_dir):
        raise ExperimentError(
            f"Nothing to resume in {exp_dir!r}: no Tune experiment state there. Give the "
            "same --storage-path (and --name) as the interrupted run, or drop --resume."
        )
    if checkpoint_freq:
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 **quiet.ray_init_kwargs())
        if quiet.enabled():
            quiet.filter_forwarded_worker_logs()
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    chosen = False
    if user_config is not None:
        chosen = fit_layout(config, user_layout_keys(config, user_config), cpus, gpus,
                            trials)
    try:
        check_cluster_resources(config, include_main_process=True)
    except ClusterResourceError as err:
        hint = fitting_override(config, cpus, gpus)
        fix = f" This fits: {override_hint(hint)}." if hint else ""
        raise ExperimentError(f"[{label}] {err}{fix}") from err
    if user_config is not None:
        print(layout_line(config, cpus, gpus, chosen, trials), flush=True)
    return storage, exp_dir


def run_experiment(exp: Experiment, *, storage_path: str | None = None,
                   checkpoint_freq: int | None = None, resume: bool = False,
                   extra_stop: dict[str, Any] | None = None) -> Any:
    """Trains one experiment with Tune (one trial per seed); returns the ResultGrid."""
    config = exp.build_config()
    stop = {**exp.stop, **(extra_stop or {})}
    freq = exp.checkpoint_freq if checkpoint_freq is None else checkpoint_freq
    storage, exp_dir = prepare_tune_run(config, label=exp.name, name=exp.name,
                                        storage_path=storage_path, checkpoint_freq=freq,
                                        resume=resume, user_config=exp.config,
                                        trials=max(len(exp.seeds), 1))
    param_space = config.to_dict()
    if exp.seeds:
        param_space["seed"] = tune.grid_search(exp.seeds)
    started = time.time()
    print(f"== {exp.name}: {exp.run} on {exp.env}, cost limit {config.cost_limit:g}, "
          f"stop {stop}, results in {storage}/{exp.name}", flush=True)
    run_config = tune.RunConfig(
        name=exp.name,
        storage_path=storage,
        stop=stop,
        verbose=0,
        callbacks=[ProgressPrinter(stop=stop)],
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=freq, checkpoint_at_end=True, num_to_keep=3
        ),
        failure_config=tune.FailureConfig(max_failures=1),
    )
    if resume:
        tuner = tune.Tuner.restore(exp_dir, trainable=exp.run, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(exp.run, param_space=param_space, run_config=run_config)
    grid = tuner.fit()
    print(f"== {exp.name}: done in {time.time() - started:.0f}s", flush=True)
    for result in grid:
        if result.error:
            raise RuntimeError(f"trial of {exp.name} failed: {result.error}")
        print(f"   final: {progress_line(result.metrics, config.cost_limit, stop=stop)}")
        course = course_line(result.metrics_dataframe, config.cost_limit)
        if course:
            print(f"   course: {course}")
        if result.checkpoint is not None:
            print(f"   checkpoint: {result.checkpoint.path}")
    return grid
