"""Configuration shared by every safe algorithm (PPO-Lagrangian, KFCPO, ...).

Defaults follow OmniSafe's on-policy benchmark protocol (cost limit 25, 64x64 tanh
networks, observation normalisation on, gamma 0.99, GAE lambda 0.95 for reward and cost,
Adam 3e-4, gradient-norm clip 40, 20,000 env steps per iteration). Each safe algorithm
subclasses :class:`SafeAlgorithmConfig` and adds only its own settings.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.connectors.env_to_module import MeanStdFilter
from ray.rllib.connectors.learner import BatchIndividualItems
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.utils import force_list
from ray.rllib.utils.annotations import override

from rllib_kfcpo.modules.safe_actor_critic import SafeActorCriticTorchModule
from rllib_kfcpo.safe.callbacks import SafeMetricsCallback
from rllib_kfcpo.safe.connectors import (
    COST_ADVANTAGE_MODES,
    DEFAULT_CONNECTOR_TIMING_INTERVAL,
    AddCostsToBatch,
    SampledTimingEnvToModulePipeline,
    SampledTimingModuleToEnvPipeline,
)


class SafeAlgorithmConfig(PPOConfig):
    """Base config of every safe algorithm: what they share, not a "safe PPO".

    It holds the constraint (cost limit, Jc window), cost estimation (cost GAE, cost critic,
    cost-advantage normalisation), observation normalisation, and RLlib's sampling,
    batching and resource settings. It subclasses ``PPOConfig`` for RLlib's on-policy
    machinery (GAE connector, minibatch iteration); PPO's own loss settings that an
    algorithm does not read are listed in its ``UNUSED_INHERITED_SETTINGS`` and refused
    when set (nothing is silently ignored).
    """

    #: Inherited PPOConfig settings no safe algorithm reads (every one trains a critic and
    #: uses GAE, and none adds PPO's KL penalty or clips the value function): setting one
    #: to a value other than its default is refused by ``validate()``. Subclasses extend it.
    UNUSED_INHERITED_SETTINGS: tuple[str, ...] = (
        "use_critic", "use_gae", "use_kl_loss", "kl_coeff", "kl_target", "vf_clip_param",
    )

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class)
        # Constraint and cost estimation (shared by every safe algorithm).
        self.cost_limit = 25.0
        self.cost_gamma = 0.99
        self.cost_lambda = 0.95
        self.cost_vf_loss_coeff = 1.0
        # OmniSafe's protocol: Jc over the last 100 finished episodes, standardised cost
        # advantages (docs/cost-semantics.md).
        self.cost_window_episodes = 100
        self.cost_advantages = "standardize"
        self.normalize_observations = True
        # Env runners record their connector-pipeline timers on 1 call in this many
        # (sampling cost; see rllib_kfcpo.safe.connectors). 1 = every call, like RLlib.
        self.connector_timing_interval = DEFAULT_CONNECTOR_TIMING_INTERVAL
        # OmniSafe protocol defaults for the shared machinery.
        self.gamma = 0.99
        self.lambda_ = 0.95
        self.lr = 3e-4
        self.grad_clip = 40.0
        self.grad_clip_by = "global_norm"
        self.train_batch_size = 20000
        self.minibatch_size = 64
        self.num_epochs = 40
        self.use_kl_loss = False
        self.entropy_coeff = 0.0
        self.vf_clip_param = float("inf")
        self.callbacks_class = SafeMetricsCallback
        # Fault tolerance: a crashed env runner is restarted and training goes on (RLlib's
        # default today; set here so it stays the package's default). Bad env data is
        # still raised, see SafeAlgorithm._sample.
        self.restart_failed_env_runners = True

    @override(PPOConfig)
    def training(
        self,
        *,
        cost_limit: float | None = NotProvided,
        cost_gamma: float | None = NotProvided,
        cost_lambda: float | None = NotProvided,
        cost_vf_loss_coeff: float | None = NotProvided,
        cost_window_episodes: int | None = NotProvided,
        cost_advantages: str | None = NotProvided,
        **kwargs: Any,
    ) -> SafeAlgorithmConfig:
        """Sets training settings; the safe ones are below, the rest are PPOConfig's.

        Args:
            cost_limit: d, the bound on the expected episode cost (undiscounted sum of
                raw per-step costs). Compared with the windowed mean episode cost.
            cost_gamma: Discount of the cost critic and cost GAE.
            cost_lambda: GAE lambda for cost advantages.
            cost_vf_loss_coeff: Weight of the cost critic's squared error.
            cost_window_episodes: Jc, the episode cost every constraint rule reads, is the
                mean over the last this-many finished episodes of all env runners
                (OmniSafe: 100). 0: RLlib's ``episode_cost_mean``, the mean over the
                latest iteration's episodes.
            cost_advantages: ``"standardize"`` (OmniSafe) or ``"center"`` the cost
                advantages over the batch (reward advantages are always standardised).
        """
        super().training(**kwargs)
        if cost_limit is not NotProvided:
            self.cost_limit = cost_limit
        if cost_gamma is not NotProvided:
            self.cost_gamma = cost_gamma
        if cost_lambda is not NotProvided:
            self.cost_lambda = cost_lambda
        if cost_vf_loss_coeff is not NotProvided:
            self.cost_vf_loss_coeff = cost_vf_loss_coeff
        if cost_window_episodes is not NotProvided:
            self.cost_window_episodes = cost_window_episodes
        if cost_advantages is not NotProvided:
            self.cost_advantages = cost_advantages
        return self

    def observation_normalization(self, enabled: bool = True) -> SafeAlgorithmConfig:
        """Turns the running mean/std observation filter on env runners on or off."""
        self.normalize_observations = enabled
        return self

    def connector_timing(self, interval: int = DEFAULT_CONNECTOR_TIMING_INTERVAL
                         ) -> SafeAlgorithmConfig:
        """How often the env runners' connector pipelines record their timing metrics.

        RLlib times every env-to-module and module-to-env pipeline call and each of their
        pieces (14 timers per env step), a large share of the per-step sampling cost on
        fast envs. With ``interval=n`` one call in n is timed (the metrics keep their keys
        and per-call means); the sampled data is the same for every ``n``. ``1`` restores
        RLlib's behaviour.
        """
        self.connector_timing_interval = interval
        return self

    @override(PPOConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=SafeActorCriticTorchModule)

    @override(PPOConfig)
    def build_env_to_module_connector(self, env=None, spaces=None, device=None):
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        if self.normalize_observations:
            pipeline.prepend(MeanStdFilter(multi_agent=False))
        return SampledTimingEnvToModulePipeline.from_pipeline(
            pipeline, self.connector_timing_interval)

    @override(PPOConfig)
    def build_module_to_env_connector(self, env=None, spaces=None):
        pipeline = super().build_module_to_env_connector(env=env, spaces=spaces)
        return SampledTimingModuleToEnvPipeline.from_pipeline(
            pipeline, self.connector_timing_interval)

    @override(PPOConfig)
    def build_learner_connector(self, input_observation_space, input_action_space, device=None):
        pipeline = super().build_learner_connector(
            input_observation_space, input_action_space, device=device
        )
        pipeline.insert_before(BatchIndividualItems, AddCostsToBatch())
        return pipeline

    @override(PPOConfig)
    def validate(self) -> None:
        # Our checks run before RLlib's, so bad values get one message naming the key, the
        # value and what is allowed (RLlib's own checks can loop or fail obscurely on them).
        self._validate_safe_settings()
        super().validate()
        if self.framework_str != "torch":
            raise ValueError(
                f"framework={self.framework_str!r}: rllib_kfcpo supports only torch. "
                "Remove the framework setting or set config.framework('torch')."
            )
        # The episode-cost metric is what every constraint rule reads: keep our callback
        # in the list whatever callbacks the user configured.
        callbacks = force_list(self.callbacks_class)
        if not any(isinstance(c, type) and issubclass(c, SafeMetricsCallback)
                   for c in callbacks):
            self.callbacks_class = [SafeMetricsCallback, *callbacks]

    def _refuse_unused_settings(self) -> None:
        """One error naming an inherited setting this algorithm would ignore, if any is set."""
        defaults = type(self)()
        algo = type(self).__name__.removesuffix("Config")
        for name in self.UNUSED_INHERITED_SETTINGS:
            value, default = getattr(self, name), getattr(defaults, name)
            if value != default and not (value is None and default is None):
                raise ValueError(
                    f"training({name}={value!r}) is not used by {algo}: it is a PPO setting "
                    f"{algo} does not read. Remove it (default {default!r})."
                )

    def _validate_safe_settings(self) -> None:
        """Cost, batch-size and resource-count settings (one clear error per bad key)."""
        self._refuse_unused_settings()
        checks = [
            ("cost_limit", self.cost_limit, lambda v: math.isfinite(v) and v >= 0,
             "a finite number >= 0 (OmniSafe's benchmarks use 25)"),
            ("cost_gamma", self.cost_gamma, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("cost_lambda", self.cost_lambda, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("cost_vf_loss_coeff", self.cost_vf_loss_coeff,
             lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
        ]
        for name, value, ok, allowed in checks:
            if not _is_number(value) or not ok(value):
                raise ValueError(
                    f"training({name}={value!r}) is invalid: {name} must be {allowed}."
                )
        window = self.cost_window_episodes
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(
                f"training(cost_window_episodes={window!r}) is invalid: it must be an "
                "integer >= 0 (OmniSafe: 100; 0 = the latest iteration's episodes)."
            )
        if self.cost_advantages not in COST_ADVANTAGE_MODES:
            raise ValueError(
                f"training(cost_advantages={self.cost_advantages!r}) is invalid: it must be "
                f"one of {COST_ADVANTAGE_MODES}."
            )
        counts = [("learners", "num_learners", self.num_learners),
                  ("env_runners", "num_env_runners", self.num_env_runners),
                  ("env_runners", "num_envs_per_env_runner", self.num_envs_per_env_runner),
                  ("learners", "num_gpus_per_learner", self.num_gpus_per_learner)]
        for method, name, value in counts:
            minimum = 1 if name == "num_envs_per_env_runner" else 0
            if not _is_number(value) or not math.isfinite(value) or value < minimum:
                raise ValueError(
                    f"{method}({name}={value!r}) is invalid: {name} must be a number "
                    f">= {minimum}."
                )

        interval = self.connector_timing_interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f"connector_timing(interval={interval!r}) is invalid: it must be an integer "
                ">= 1 (1 = time every connector call, RLlib's behaviour)."
            )

        sizes = [("train_batch_size", self.train_batch_size),
                 ("minibatch_size", self.minibatch_size),
                 ("num_epochs", self.num_epochs)]
        sizes.append(("train_batch_size_per_learner", self.train_batch_size_per_learner))
        for name, value in sizes:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"training({name}={value!r}) is invalid: {name} must be a positive "
                    "integer."
                )
        tbs = self.train_batch_size_per_learner
        if isinstance(tbs, int) and isinstance(self.minibatch_size, int) \
                and self.minibatch_size > tbs:
            raise ValueError(
                f"training(minibatch_size={self.minibatch_size}) is invalid: it is larger "
                f"than the per-learner train batch ({tbs} = train_batch_size "
                f"{self.train_batch_size} / num_learners {max(self.num_learners, 1)}). Make "
                f"minibatch_size at most {tbs} or raise train_batch_size."
            )
        if self.rollout_fragment_length != "auto" and not (
            isinstance(self.rollout_fragment_length, int)
            and not isinstance(self.rollout_fragment_length, bool)
            and self.rollout_fragment_length > 0
        ):
            raise ValueError(
                f"env_runners(rollout_fragment_length={self.rollout_fragment_length!r}) is "
                "invalid: it must be 'auto' or a positive integer."
            )


def _is_number(value: Any) -> bool:
    """A real int or float (not a bool, not a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
