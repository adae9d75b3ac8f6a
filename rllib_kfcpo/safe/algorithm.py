"""The training loop shared by every safe algorithm.

Same shape as RLlib's PPO ``training_step`` (sample, update learners, sync weights), plus
one thing: the mean episode cost Jc is handed to the learners in ``timesteps`` so the
constraint logic (Lagrange multiplier, KFCPO's margin) reads one number, logged for users
as ``env_runners/episode_cost_window_mean`` (the last ``cost_window_episodes`` episodes,
OmniSafe's Jc) or, with ``cost_window_episodes=0``, ``env_runners/episode_cost_mean``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import shutil
import uuid
from typing import Any

from ray.rllib.algorithms.ppo import PPO
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from rllib_kfcpo.env_data import MissingCostError, NonFiniteEnvDataError
from rllib_kfcpo.rllib_seam import checkpoint_class_name, dead_learner_actors
from rllib_kfcpo.safe.columns import (
    EPISODE_COST_FOR_LEARNER,
    EPISODE_COST_MEAN,
    EPISODE_COST_WINDOW_MEAN,
)
from rllib_kfcpo.safe.episode_cost import EpisodeCostWindow
from rllib_kfcpo.safe.validation import check_env_emits_cost

logger = logging.getLogger(__name__)

#: Version of the checkpoint layout written by this package (algorithm metadata and the
#: learners' ``safe_state``). Bump it when either changes incompatibly.
CHECKPOINT_FORMAT_VERSION = 1
#: Keys added to every safe algorithm's checkpoint ``metadata.json``.
META_ALGORITHM = "rllib_kfcpo_algorithm"
META_FORMAT_VERSION = "rllib_kfcpo_format_version"
#: Set to 1 to skip the cluster-resource check (e.g. on an autoscaling cluster).
SKIP_RESOURCE_CHECK_ENV = "RLLIB_KFCPO_SKIP_RESOURCE_CHECK"
#: Algorithm-state key of the episode-cost window (restored with the checkpoint).
STATE_COST_WINDOW = "safe_episode_cost_window"


class ClusterResourceError(ValueError):
    """The config asks for more CPUs/GPUs than the running Ray cluster has."""


class CheckpointMismatchError(ValueError):
    """A checkpoint written by another algorithm or an incompatible format version."""


class LearnerFailureError(RuntimeError):
    """A learner actor died during an update."""


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


def read_checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata (``rllib_checkpoint.json``) of a local algorithm checkpoint ({} if none)."""
    file = pathlib.Path(path) / PPO.METADATA_FILE_NAME
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def check_checkpoint_compatible(path: str | os.PathLike, algorithm: type) -> None:
    """Raises :class:`CheckpointMismatchError` if ``path`` cannot be restored as ``algorithm``.

    The checkpoint's algorithm must be ``algorithm`` or one of its base classes, and its
    format version this package's. Checkpoints written before the version was recorded
    (no ``rllib_kfcpo_*`` metadata) are checked by the class RLlib stored with them. Only
    local paths are checked (cloud URIs are left to RLlib).
    """
    if "://" in str(path) or not pathlib.Path(path).is_dir():
        return
    name = algorithm.__name__
    accepted = {c.__name__ for c in algorithm.__mro__
                if isinstance(c, type) and issubclass(c, SafeAlgorithm)}
    meta = read_checkpoint_metadata(path)
    written_by = meta.get(META_ALGORITHM)
    version = meta.get(META_FORMAT_VERSION, CHECKPOINT_FORMAT_VERSION)
    if written_by is None:  # older checkpoint, or not one of ours
        written_by = checkpoint_class_name(path)
        if written_by is None:
            return
    if written_by not in accepted:
        raise CheckpointMismatchError(
            f"Checkpoint {str(path)!r} was written by {written_by}, not {name}: its "
            f"learner and optimizer state do not fit {name}. Restore it as {written_by} "
            f"(Algorithm.from_checkpoint(path)) or start {name} from scratch."
        )
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointMismatchError(
            f"Checkpoint {str(path)!r} has rllib_kfcpo format version {version!r}; this "
            f"rllib_kfcpo reads version {CHECKPOINT_FORMAT_VERSION}. Restore it with the "
            "rllib_kfcpo release that wrote it."
        )


def _sample_on_runner(runner: Any) -> tuple[Any, Any, BaseException | None]:
    """Runs on an env runner: samples, returning bad-env-data errors instead of dying."""
    try:
        return runner.sample(), runner.get_metrics(), None
    except (MissingCostError, NonFiniteEnvDataError) as err:
        return None, None, err


def _is_local_path(path: Any, filesystem: Any) -> bool:
    return filesystem is None and path is not None and "://" not in str(path)


class SafeAlgorithm(PPO):
    """Base class of the safe algorithms: PPO's loop plus the episode cost for learners.

    Also: checks the env and the cluster's resources before any worker starts, surfaces
    bad env data from remote env runners as one clear error, names a dead learner, writes
    checkpoints atomically and refuses checkpoints of another algorithm or format version.
    """

    @override(PPO)
    def setup(self, config: Any) -> None:
        config_obj = config if not isinstance(config, dict) else self.config
        # Fail before any worker starts if the env gives no cost (one clear error).
        check_env_emits_cost(config_obj)
        # ... or if the cluster cannot host the requested learners/env runners.
        check_cluster_resources(config_obj)
        window = int(getattr(config_obj, "cost_window_episodes", 0) or 0)
        #: Jc over the last ``cost_window_episodes`` finished episodes (None: RLlib's
        #: latest-iteration mean; see rllib_kfcpo.safe.episode_cost).
        self.cost_window = EpisodeCostWindow(window) if window > 0 else None
        super().setup(config)

    # --- State --------------------------------------------------------------------------
    @override(PPO)
    def get_state(self, components: Any = None, *, not_components: Any = None,
                  **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(components, not_components=not_components, **kwargs)
        if self.cost_window is not None:
            state[STATE_COST_WINDOW] = self.cost_window.state_dict()
        return state

    @override(PPO)
    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if self.cost_window is not None and STATE_COST_WINDOW in state:
            self.cost_window.load_state_dict(state[STATE_COST_WINDOW])

    # --- Checkpoints --------------------------------------------------------------------
    @override(PPO)
    def get_metadata(self) -> dict[str, Any]:
        meta = super().get_metadata()
        meta[META_ALGORITHM] = type(self).__name__
        meta[META_FORMAT_VERSION] = CHECKPOINT_FORMAT_VERSION
        return meta

    @override(PPO)
    def save_to_path(self, path: Any = None, *, state: Any = None, filesystem: Any = None,
                     use_msgpack: bool = False) -> str:
        """``Checkpointable.save_to_path``, atomic for local paths.

        The checkpoint is written to a hidden sibling directory and renamed into place only
        once complete, so a crash mid-save leaves the previous checkpoint at ``path`` intact
        and no partial checkpoint behind (the temporary directory is removed on errors).
        """
        if not _is_local_path(path, filesystem):
            return super().save_to_path(path, state=state, filesystem=filesystem,
                                        use_msgpack=use_msgpack)
        target = pathlib.Path(path).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            super().save_to_path(str(tmp), state=state, use_msgpack=use_msgpack)
            _replace_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)

    @override(PPO)
    def restore_from_path(self, path: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("component") is None and not args:
            check_checkpoint_compatible(path, type(self))
        super().restore_from_path(path, *args, **kwargs)

    @classmethod
    @override(PPO)
    def from_checkpoint(cls, path: Any, filesystem: Any = None, **kwargs: Any) -> Any:
        if cls is not SafeAlgorithm and _is_local_path(path, filesystem):
            check_checkpoint_compatible(path, cls)
        return super().from_checkpoint(path, filesystem=filesystem, **kwargs)

    def episode_cost_mean(self) -> float:
        """Jc, the number every constraint rule compares with ``cost_limit``.

        The mean cost of the last ``cost_window_episodes`` finished episodes over all env
        runners (OmniSafe's Jc), or with ``cost_window_episodes=0`` RLlib's
        ``env_runners/episode_cost_mean`` (the latest iteration's episodes). NaN before
        any episode has finished.
        """
        if self.cost_window is not None:
            return self.cost_window.mean()
        value = self.metrics.peek((ENV_RUNNER_RESULTS, EPISODE_COST_MEAN), default=math.nan)
        return float(value)

    # --- Faults -------------------------------------------------------------------------
    def _sample(self) -> tuple[list[Any], list[Any]]:
        """``synchronous_parallel_sample`` (new stack, env steps), surfacing bad env data.

        RLlib's remote env runners exit on any exception (and are restarted under
        ``restart_failed_env_runners``), so the driver would only see "actor died" and a
        deterministic env bug (NaN reward, missing cost) would loop through restarts.
        Here each runner catches those errors and returns them; the driver raises the
        first one as one clear error. Any other runner failure is left to RLlib's fault
        tolerance (the failed runner is skipped and restarted).
        """
        group = self.env_runner_group
        target = self.config.total_train_batch_size
        steps, episodes, stats = 0, [], []
        while steps < target:
            if group.num_remote_workers() <= 0:
                runner = group.local_env_runner
                results = [(runner.sample(), runner.get_metrics(), None)]
            else:
                results = group.foreach_env_runner(
                    _sample_on_runner, local_env_runner=False,
                    timeout_seconds=self.config.sample_timeout_s,
                )
                if not results or group.num_healthy_remote_workers() <= 0:
                    logger.warning("No samples returned from healthy env runners this "
                                   "round (failed runners are restarted by RLlib).")
                    break
            for runner_episodes, runner_stats, error in results:
                if error is not None:
                    raise error
                steps += int(runner_stats.get(NUM_ENV_STEPS_SAMPLED, 0))
                episodes.extend(runner_episodes)
                stats.append(runner_stats)
        return episodes, stats

    @override(PPO)
    def training_step(self) -> None:
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = self._sample()
            if not episodes:
                return
            self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)
            if self.cost_window is not None:
                self.cost_window.observe(episodes)
                self.metrics.log_value((ENV_RUNNER_RESULTS, EPISODE_COST_WINDOW_MEAN),
                                       self.cost_window.mean(), window=1)

        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            try:
                learner_results = self._update_learners(episodes)
            except Exception as err:
                dead = ([] if self.learner_group.is_local
                        else dead_learner_actors(self.learner_group))
                if not dead:
                    raise
                raise LearnerFailureError(
                    f"Learner actor(s) {dead} of {self.config.num_learners} died during the "
                    f"update of iteration {self.iteration + 1} (the others then failed in "
                    f"their all-reduce: {type(err).__name__}). The learners must update "
                    "together, so training stopped. Restart from the last checkpoint "
                    "(`rllib train ... --resume`, or Algorithm.from_checkpoint); at most "
                    "the work since that checkpoint is lost."
                ) from None
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            modules_to_update = set(learner_results[0].keys()) - {ALL_MODULES}
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=modules_to_update,
                inference_only=True,
            )

    def _update_learners(self, episodes: Any) -> Any:
        return self.learner_group.update(episodes=episodes, timesteps=self._learner_timesteps(),
                                         **self._learner_update_kwargs())

    def _learner_timesteps(self) -> dict[str, Any]:
        """What the learners receive as ``timesteps`` (algorithms may add keys)."""
        return {
            NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
            ),
            NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME),
                default=0,
            ),
            EPISODE_COST_FOR_LEARNER: self.episode_cost_mean(),
        }

    def _learner_update_kwargs(self) -> dict[str, Any]:
        """Epoch and minibatch arguments of ``learner_group.update`` (PPO's by default)."""
        return {"num_epochs": self.config.num_epochs,
                "minibatch_size": self.config.minibatch_size,
                "shuffle_batch_per_epoch": self.config.shuffle_batch_per_epoch}


def _replace_dir(new: pathlib.Path, target: pathlib.Path) -> None:
    """Moves the complete directory ``new`` to ``target`` (same filesystem).

    An absent or empty ``target`` is replaced by one atomic ``rename``. A non-empty one is
    first renamed aside and deleted only after ``new`` is in place, so at every moment a
    complete checkpoint exists at ``target`` or at the hidden ``.old-`` sibling.
    """
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(new, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)
