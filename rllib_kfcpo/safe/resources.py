"""The cluster-resource check made before any worker starts (one clear error)."""

from __future__ import annotations

import os
from typing import Any

#: Set to 1 to skip the cluster-resource check (e.g. on an autoscaling cluster).
SKIP_RESOURCE_CHECK_ENV = "RLLIB_KFCPO_SKIP_RESOURCE_CHECK"


class ClusterResourceError(ValueError):
    """The config asks for more CPUs/GPUs than the running Ray cluster has."""


def check_cluster_resources(config: Any, *, include_main_process: bool = False) -> None:
    """Raises :class:`ClusterResourceError` if the running Ray cluster cannot host ``config``.

    Counts CPUs of env runners and learners (and the Tune trial's own process when
    ``include_main_process``) and GPUs of learners against ``ray.cluster_resources()``.
    Does nothing while Ray is not running, or when ``RLLIB_KFCPO_SKIP_RESOURCE_CHECK=1``
    (autoscaling clusters add nodes on demand).
    """
    import ray

    if not ray.is_initialized() or os.environ.get(SKIP_RESOURCE_CHECK_ENV) == "1":
        return
    total = ray.cluster_resources()
    have_cpus, have_gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    num_learners = int(config.num_learners or 0)
    gpus_per_learner = float(config.num_gpus_per_learner or 0)
    cpus_per_learner = config.num_cpus_per_learner
    if cpus_per_learner == "auto":
        cpus_per_learner = 0 if gpus_per_learner else 1
    need_gpus = gpus_per_learner * max(num_learners, 1)
    learner_cpus = float(cpus_per_learner) * num_learners
    runner_cpus = float(config.num_cpus_per_env_runner or 0) * int(config.num_env_runners or 0)
    main_cpus = float(config.num_cpus_for_main_process or 0) if include_main_process else 0.0
    need_cpus = learner_cpus + runner_cpus + main_cpus
    skip = f"(set {SKIP_RESOURCE_CHECK_ENV}=1 to skip this check on an autoscaling cluster)"
    if need_gpus > have_gpus:
        raise ClusterResourceError(
            f"learners(num_learners={num_learners}, num_gpus_per_learner={gpus_per_learner:g})"
            f" needs {need_gpus:g} GPU(s), but the Ray cluster has {have_gpus:g}. Lower "
            f"num_learners or num_gpus_per_learner (0 trains on CPU) {skip}."
        )
    if need_cpus > have_cpus:
        raise ClusterResourceError(
            f"learners(num_learners={num_learners}) and env_runners(num_env_runners="
            f"{config.num_env_runners}) need {need_cpus:g} CPUs ({learner_cpus:g} for learners, "
            f"{runner_cpus:g} for env runners"
            + (f", {main_cpus:g} for the trial" if main_cpus else "")
            + f"), but the Ray cluster has {have_cpus:g}. Lower num_learners or "
            f"num_env_runners so the total is at most {have_cpus:g} {skip}."
        )
