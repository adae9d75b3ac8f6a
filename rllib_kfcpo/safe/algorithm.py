"""The training loop shared by every safe algorithm (its other jobs live beside it:
``resources.py`` checks the cluster, ``checkpoints.py`` writes and guards checkpoints,
``validation.py`` checks the env before any worker starts).

Same shape as RLlib's PPO ``training_step`` (sample, update learners, sync weights), plus
one thing: the mean episode cost Jc is handed to the learners in ``timesteps`` so the
constraint logic (Lagrange multiplier, KFCPO's margin) reads one number, logged for users
as ``env_runners/episode_cost_window_mean`` (the last ``cost_window_episodes`` episodes,
OmniSafe's Jc) or, with ``cost_window_episodes=0``, ``env_runners/episode_cost_mean``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

from ray.rllib.algorithms.ppo import PPO
from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE
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
from rllib_kfcpo.rllib_seam import dead_learner_actors
from rllib_kfcpo.safe.checkpoints import (
    CHECKPOINT_FORMAT_VERSION,
    META_ALGORITHM,
    META_FORMAT_VERSION,
    check_checkpoint_compatible,
    is_local_path,
    save_atomically,
)
from rllib_kfcpo.safe.columns import (
    EPISODE_COST_FOR_LEARNER,
    EPISODE_COST_MEAN,
    EPISODE_COST_WINDOW_MEAN,
)
from rllib_kfcpo.safe.episode_cost import EpisodeCostWindow
from rllib_kfcpo.safe.resources import check_cluster_resources
from rllib_kfcpo.safe.validation import check_env_emits_cost

logger = logging.getLogger(__name__)

#: Algorithm-state key of the episode-cost window (restored with the checkpoint).
STATE_COST_WINDOW = "safe_episode_cost_window"


class LearnerFailureError(RuntimeError):
    """A learner actor died during an update."""


class SamplingOutageError(RuntimeError):
    """No env runner returned a sample for ``max_sampling_outage_s``."""


def _sample_on_runner(runner: Any, module_state: Any = None
                      ) -> tuple[Any, Any, BaseException | None]:
    """Runs on an env runner: samples, returning bad-env-data errors instead of dying.

    ``module_state`` (the learners' weights, after a restore) is set on the runner's
    module in the same remote call, right before it samples.
    """
    if module_state is not None:  # no weights_seq_no: the runner takes them unconditionally
        runner.set_state({COMPONENT_RL_MODULE: module_state})
    try:
        return runner.sample(), runner.get_metrics(), None
    except (MissingCostError, NonFiniteEnvDataError) as err:
        return None, None, err


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
        #: Set by a restore: the next iteration's sampling takes the learners' weights to
        #: the env runners (see _sample).
        self._sync_weights_before_sampling = False
        #: When an env runner last returned samples (see _check_sampling_outage).
        self._last_sampled_at = time.monotonic()
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
        if not is_local_path(path, filesystem):
            return super().save_to_path(path, state=state, filesystem=filesystem,
                                        use_msgpack=use_msgpack)
        return save_atomically(path, lambda tmp: super(SafeAlgorithm, self).save_to_path(
            tmp, state=state, use_msgpack=use_msgpack))

    @override(PPO)
    def restore_from_path(self, path: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("component") is None and not args:
            check_checkpoint_compatible(path, type(self))
        super().restore_from_path(path, *args, **kwargs)
        # RLlib restores the learners and the env runners' states, broadcasting the latter
        # to the remote runners asynchronously; measured, the remote runners then sampled
        # the first iteration after a restore with weights that were not the learners'
        # (max |diff| 0.38, weights_seq_no 0, on a 1M-step PointGoal1 checkpoint: return
        # -0.1 instead of ~12, and those episodes' cost entered Jc), also when the weights
        # were synced here. The next iteration sends them with its sample call (_sample).
        self._sync_weights_before_sampling = True

    @classmethod
    @override(PPO)
    def from_checkpoint(cls, path: Any, filesystem: Any = None, **kwargs: Any) -> Any:
        if cls is not SafeAlgorithm and is_local_path(path, filesystem):
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
        sample = _sample_on_runner
        if self._sync_weights_before_sampling:
            # After a restore: the learners' weights travel with the remote sample call
            # itself, so no state broadcast still in flight from the restore can come after
            # them; the sync covers the local runner (no remote runners).
            group.sync_weights(from_worker_or_learner_group=self.learner_group,
                               inference_only=True)
            weights = self.learner_group.get_state(
                components=COMPONENT_LEARNER + "/" + COMPONENT_RL_MODULE,
                inference_only=True)[COMPONENT_LEARNER][COMPONENT_RL_MODULE]
            sample = functools.partial(_sample_on_runner, module_state=weights)
            self._sync_weights_before_sampling = False
        while steps < target:
            if group.num_remote_workers() <= 0:
                runner = group.local_env_runner
                results = [(runner.sample(), runner.get_metrics(), None)]
            else:
                results = group.foreach_env_runner(
                    sample, local_env_runner=False,
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
                self._check_sampling_outage()
                return
            self._last_sampled_at = time.monotonic()
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

    def _check_sampling_outage(self) -> None:
        """Raises once no env runner has returned samples for ``max_sampling_outage_s``.

        RLlib restarts failed runners and training skips the iterations without samples
        meanwhile; if every runner stays down (killed again on each restart, e.g. by Ray's
        memory monitor when the node is out of memory), those empty iterations would go on
        forever, each "finished" in seconds with no env step.
        """
        limit = float(self.config.max_sampling_outage_s)
        idle = time.monotonic() - self._last_sampled_at
        if idle <= limit:
            return
        group = self.env_runner_group
        raise SamplingOutageError(
            f"No env runner returned a sample for {idle:.0f} s (max_sampling_outage_s="
            f"{limit:g}): {group.num_healthy_remote_workers()} of "
            f"{group.num_remote_workers()} env runners are healthy and RLlib could not "
            "restore the others. Training stopped instead of running iterations without "
            "data. Look for why the runners die (Ray's logs, e.g. raylet.out: 'Killing ... "
            "Memory on the node' means the node ran out of memory: run fewer trials or "
            "runners at once), then resume from the last checkpoint (`rllib train ... "
            "--resume`, or Algorithm.from_checkpoint). To wait longer for restarts, raise "
            "config.fault_tolerance(max_sampling_outage_s=...)."
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


