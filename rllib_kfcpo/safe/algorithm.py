"""The training loop shared by every safe algorithm.

Same shape as RLlib's PPO ``training_step`` (sample, update learners, sync weights), plus
one thing: the windowed mean episode cost Jc, measured on the env runners, is handed to
the learners in ``timesteps`` so the constraint logic (Lagrange multiplier, KFCPO's
margin) reads the very number users see as ``env_runners/episode_cost_mean``.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.ppo import PPO
from ray.rllib.execution.rollout_ops import synchronous_parallel_sample
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
)

from rllib_kfcpo.safe.columns import EPISODE_COST_FOR_LEARNER, EPISODE_COST_MEAN
from rllib_kfcpo.safe.validation import check_env_emits_cost


class SafeAlgorithm(PPO):
    """Base class of the safe algorithms: PPO's loop plus the episode cost for learners."""

    @override(PPO)
    def setup(self, config: Any) -> None:
        # Fail before any worker starts if the env gives no cost (one clear error).
        check_env_emits_cost(config if not isinstance(config, dict) else self.config)
        super().setup(config)

    def episode_cost_mean(self) -> float:
        """Jc: windowed mean episode cost over all env runners (NaN before any episode)."""
        value = self.metrics.peek((ENV_RUNNER_RESULTS, EPISODE_COST_MEAN), default=math.nan)
        return float(value)

    @override(PPO)
    def training_step(self) -> None:
        with self.metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            episodes, env_runner_results = synchronous_parallel_sample(
                worker_set=self.env_runner_group,
                max_env_steps=self.config.total_train_batch_size,
                sample_timeout_s=self.config.sample_timeout_s,
                _uses_new_env_runners=True,
                _return_metrics=True,
            )
            if not episodes:
                return
            self.metrics.aggregate(env_runner_results, key=ENV_RUNNER_RESULTS)

        with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = self.learner_group.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: self.metrics.peek(
                        (ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)
                    ),
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: self.metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME),
                        default=0,
                    ),
                    EPISODE_COST_FOR_LEARNER: self.episode_cost_mean(),
                },
                num_epochs=self.config.num_epochs,
                minibatch_size=self.config.minibatch_size,
                shuffle_batch_per_epoch=self.config.shuffle_batch_per_epoch,
            )
            self.metrics.aggregate(learner_results, key=LEARNER_RESULTS)

        with self.metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            modules_to_update = set(learner_results[0].keys()) - {ALL_MODULES}
            self.env_runner_group.sync_weights(
                from_worker_or_learner_group=self.learner_group,
                policies=modules_to_update,
                inference_only=True,
            )
