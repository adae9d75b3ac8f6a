"""Runs experiments with Ray Tune and prints one progress line per iteration."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from ray import tune

from rllib_kfcpo.cli.experiment import Experiment
from rllib_kfcpo.safe.columns import EPISODE_COST_MEAN

RETURN_KEY = "env_runners/episode_return_mean"
COST_KEY = f"env_runners/{EPISODE_COST_MEAN}"
STEPS_KEY = "num_env_steps_sampled_lifetime"


def _get(result: dict[str, Any], path: str, default: float = math.nan) -> Any:
    node: Any = result
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def progress_line(result: dict[str, Any], cost_limit: float, label: str = "") -> str:
    """``iter | env steps | return | episode cost vs limit | KL | time`` for one result."""
    learner = _get(result, "learners/default_policy", {})
    kl = learner.get("kl_after_step", learner.get("mean_kl", math.nan)) if learner else math.nan
    cost = _get(result, COST_KEY)
    flag = " " if not (cost > cost_limit) else "!"
    return (
        f"{label}iter {int(result.get('training_iteration', 0)):4d} | "
        f"steps {int(_get(result, STEPS_KEY, 0)):>9,} | "
        f"return {float(_get(result, RETURN_KEY)):9.3f} | "
        f"cost {float(cost):8.3f}{flag}/ limit {cost_limit:g} | "
        f"kl {float(kl):.5f} | "
        f"{float(result.get('time_this_iter_s', math.nan)):6.1f}s"
    )


class ProgressPrinter(tune.Callback):
    """Tune callback: one readable line per trial iteration instead of result tables.

    Lines start with ``[trial id]`` when the experiment has several trials (or always,
    with ``label=True``, e.g. for searches whose trials are created one by one).
    """

    def __init__(self, label: bool = False) -> None:
        self.label = label

    def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: D102
        limit = float(trial.config.get("cost_limit", math.nan))
        label = f"[{trial.trial_id}] " if self.label or len(trials) > 1 else ""
        print(progress_line(result, limit, label), flush=True)


def prepare_tune_run(config: Any, *, label: str, name: str, storage_path: str | None,
                     checkpoint_freq: int | None, resume: bool) -> tuple[str, str]:
    """What `rllib train` and `rllib tune` do before Tune starts; returns
    ``(storage root, experiment dir)``.

    Refuses ``resume`` when there is no Tune experiment to restore, saves Tune's
    experiment state every loop step when checkpointing (Tune's default is at most every
    10 s, so a killed driver could resume from an older checkpoint than the newest on
    disk; overridable by setting ``TUNE_GLOBAL_CHECKPOINT_S``), starts or joins Ray, and
    checks that one trial fits the cluster (before Tune queues a trial that could never
    start).

    Raises:
        ExperimentError: nothing to resume, or the trial does not fit the cluster.
    """
    import ray

    from rllib_kfcpo.cli.experiment import ExperimentError
    from rllib_kfcpo.safe.algorithm import ClusterResourceError, check_cluster_resources

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
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    try:
        check_cluster_resources(config, include_main_process=True)
    except ClusterResourceError as err:
        raise ExperimentError(f"[{label}] {err}") from err
    return storage, exp_dir


def run_experiment(exp: Experiment, *, storage_path: str | None = None,
                   checkpoint_freq: int | None = None, resume: bool = False,
                   extra_stop: dict[str, Any] | None = None) -> Any:
    """Trains one experiment with Tune (one trial per seed); returns the ResultGrid."""
    config = exp.build_config()
    param_space = config.to_dict()
    if exp.seeds:
        param_space["seed"] = tune.grid_search(exp.seeds)
    stop = {**exp.stop, **(extra_stop or {})}
    freq = exp.checkpoint_freq if checkpoint_freq is None else checkpoint_freq
    storage, exp_dir = prepare_tune_run(config, label=exp.name, name=exp.name,
                                        storage_path=storage_path, checkpoint_freq=freq,
                                        resume=resume)
    started = time.time()
    print(f"== {exp.name}: {exp.run} on {exp.env}, cost limit {config.cost_limit:g}, "
          f"stop {stop}, results in {storage}/{exp.name}", flush=True)
    run_config = tune.RunConfig(
        name=exp.name,
        storage_path=storage,
        stop=stop,
        verbose=0,
        callbacks=[ProgressPrinter()],
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
        print(f"   final: {progress_line(result.metrics, config.cost_limit)}")
        if result.checkpoint is not None:
            print(f"   checkpoint: {result.checkpoint.path}")
    return grid
