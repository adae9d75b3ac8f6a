"""The env-runner/learner layout of a CLI run, chosen to fit the Ray cluster it runs on.

RLlib's PPO defaults (2 remote env runners, the learner in the trial's own process)
need 3 CPUs, so ``rllib train --algo KFCPO --env SafetyPointGoal1-v0`` on a 2-CPU laptop
would be refused. When the user sets no layout key (:data:`LAYOUT_KEYS`, in the YAML or
with ``--config``), :func:`fit_layout` shrinks the defaults to what Ray sees:

- a GPU for every trial that runs at once (one per seed): the learner trains on one GPU
  in the trial's process (``num_gpus_per_learner=1``, ``num_learners=0``); with fewer
  GPUs than trials the learners stay on CPU, so the seeds still run side by side
  (measured on a 1-GPU, 16-core machine: 3 seeds with GPU learners ran one at a time);
- env runners: the algorithm's default number (2), at most the CPUs left after the
  trial's own process and any learner actors; 0 means sampling in the trial's process.

Keys the user did set are kept as given. A layout that still does not fit is refused by
:func:`rllib_kfcpo.safe.resources.check_cluster_resources`; :func:`fitting_override`
names a ``--config`` override that fits.
"""

from __future__ import annotations

import json
from typing import Any

from rllib_kfcpo.rllib_seam import translate_config_key

#: Config keys that make up the layout; setting any of them is choosing it.
RUNNER_KEYS = ("num_env_runners", "num_cpus_per_env_runner")
LEARNER_KEYS = ("num_learners", "num_gpus_per_learner", "num_cpus_per_learner")
LAYOUT_KEYS = (*RUNNER_KEYS, *LEARNER_KEYS, "num_cpus_for_main_process")


def user_layout_keys(config: Any, user_config: dict[str, Any]) -> set[str]:
    """The layout keys set in ``user_config`` (aliases such as ``num_workers`` included)."""
    keys = set()
    for key in user_config or {}:
        real = translate_config_key(key)
        if real in LAYOUT_KEYS:
            keys.add(real)
    return keys


def _learner_cpus(config: Any) -> float:
    per = config.num_cpus_per_learner
    if per == "auto":
        per = 0 if config.num_gpus_per_learner else 1
    return float(per) * int(config.num_learners or 0)


def layout_line(config: Any, cpus: float, gpus: float, chosen: bool, trials: int = 1) -> str:
    """One line describing the layout, e.g. ``1 env runner + learner on CPU ...``; with
    several trials, the resources are each trial's."""
    runners = int(config.num_env_runners or 0)
    learners = int(config.num_learners or 0)
    gpu = float(config.num_gpus_per_learner or 0)
    device = f"{gpu:g} GPU" if gpu else "CPU"
    if learners:
        learner = f"{learners} learner actor(s) on {device} each"
    else:
        learner = f"learner on {device} in the trial process"
    runner = (f"{runners} env runner{'s' if runners != 1 else ''}" if runners
              else "sampling in the trial process")
    main = float(config.num_cpus_for_main_process or 0)
    need = main + runners * float(config.num_cpus_per_env_runner or 0) + _learner_cpus(config)
    origin = ("chosen to fit; set num_env_runners / num_learners / num_gpus_per_learner "
              "with --config to choose") if chosen else "as configured"
    each = f" per trial, {trials} trials" if trials > 1 else ""
    return (f"== layout: {runner} + {learner}: {need:g} of {cpus:g} CPUs, "
            f"{gpu * max(learners, 1) if gpu else 0:g} of {gpus:g} GPUs{each} ({origin})")


def fit_layout(config: Any, user_keys: set[str], cpus: float, gpus: float,
               trials: int = 1) -> bool:
    """Shrinks the layout keys the user did not set so one trial fits; True if changed.

    Args:
        config: the algorithm config (unfrozen; changed in place).
        user_keys: layout keys the user set (:func:`user_layout_keys`): kept as given.
        cpus: CPUs of the Ray cluster.
        gpus: GPUs of the Ray cluster.
        trials: trials meant to run at once (seeds): a GPU learner is chosen only when
            every one of them can have its own GPU.
    """
    changed = False
    if gpus >= max(trials, 1) and not (set(LEARNER_KEYS) & user_keys) \
            and not config.num_gpus_per_learner:
        config.learners(num_learners=0, num_gpus_per_learner=1)
        changed = True
    if not (set(RUNNER_KEYS) & user_keys):
        per_runner = float(config.num_cpus_per_env_runner or 1) or 1.0
        left = cpus - float(config.num_cpus_for_main_process or 0) - _learner_cpus(config)
        runners = max(0, min(int(config.num_env_runners or 0), int(left // per_runner)))
        if runners != int(config.num_env_runners or 0):
            config.env_runners(num_env_runners=runners)
            changed = True
    return changed


def fitting_override(config: Any, cpus: float, gpus: float) -> dict[str, Any]:
    """The smallest ``--config`` change of the layout that fits ``cpus``/``gpus``."""
    override: dict[str, Any] = {}
    learners = int(config.num_learners or 0)
    gpu = float(config.num_gpus_per_learner or 0)
    if gpu * max(learners, 1) > gpus:
        if gpus >= 1:
            learners = min(learners, int(gpus // gpu)) if gpu <= gpus else 0
            gpu = min(gpu, 1.0)
        else:
            gpu = 0.0
        override["num_gpus_per_learner"] = gpu
        if learners != int(config.num_learners or 0):
            override["num_learners"] = learners
    per_learner = config.num_cpus_per_learner
    if per_learner == "auto":
        per_learner = 0 if gpu else 1
    main = float(config.num_cpus_for_main_process or 0)
    left = cpus - main
    if float(per_learner) * learners > left:
        learners = int(left // float(per_learner)) if per_learner else learners
        learners = 0 if learners < 2 else learners  # one learner actor: use the local one
        override["num_learners"] = learners
    left -= float(per_learner) * learners
    per_runner = float(config.num_cpus_per_env_runner or 1) or 1.0
    runners = int(config.num_env_runners or 0)
    if runners * per_runner > left:
        override["num_env_runners"] = max(0, int(left // per_runner))
    return override


def override_hint(override: dict[str, Any]) -> str:
    """``--config '{...}'`` text of an override."""
    return f"--config '{json.dumps(override)}'"
