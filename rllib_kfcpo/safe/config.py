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
from ray.rllib.utils.annotations import override
from ray.rllib.utils import force_list

from rllib_kfcpo.modules.safe_actor_critic import SafeActorCriticTorchModule
from rllib_kfcpo.safe.callbacks import SafeMetricsCallback
from rllib_kfcpo.safe.connectors import AddCostsToBatch


class SafeAlgorithmConfig(PPOConfig):
    """Base config: cost limit, cost GAE, cost critic, observation normalisation."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class)
        # Constraint and cost estimation (shared by every safe algorithm).
        self.cost_limit = 25.0
        self.cost_gamma = 0.99
        self.cost_lambda = 0.95
        self.cost_vf_loss_coeff = 1.0
        self.normalize_observations = True
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

    @override(PPOConfig)
    def training(
        self,
        *,
        cost_limit: float | None = NotProvided,
        cost_gamma: float | None = NotProvided,
        cost_lambda: float | None = NotProvided,
        cost_vf_loss_coeff: float | None = NotProvided,
        **kwargs: Any,
    ) -> SafeAlgorithmConfig:
        """Sets training settings; the safe ones are below, the rest are PPOConfig's.

        Args:
            cost_limit: d, the bound on the expected episode cost (undiscounted sum of
                raw per-step costs). Compared with the windowed mean episode cost.
            cost_gamma: Discount of the cost critic and cost GAE.
            cost_lambda: GAE lambda for cost advantages.
            cost_vf_loss_coeff: Weight of the cost critic's squared error.
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
        return self

    def observation_normalization(self, enabled: bool = True) -> SafeAlgorithmConfig:
        """Turns the running mean/std observation filter on env runners on or off."""
        self.normalize_observations = enabled
        return self

    @override(PPOConfig)
    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=SafeActorCriticTorchModule)

    @override(PPOConfig)
    def build_env_to_module_connector(self, env=None, spaces=None, device=None):
        pipeline = super().build_env_to_module_connector(env=env, spaces=spaces, device=device)
        if self.normalize_observations:
            pipeline.prepend(MeanStdFilter(multi_agent=False))
        return pipeline

    @override(PPOConfig)
    def build_learner_connector(self, input_observation_space, input_action_space, device=None):
        pipeline = super().build_learner_connector(
            input_observation_space, input_action_space, device=device
        )
        pipeline.insert_before(BatchIndividualItems, AddCostsToBatch())
        return pipeline

    @override(PPOConfig)
    def validate(self) -> None:
        super().validate()
        if self.framework_str != "torch":
            self._value_error(
                f"framework={self.framework_str!r}: rllib_kfcpo supports only torch. "
                "Remove the framework setting or set config.framework('torch')."
            )
        checks = [
            ("cost_limit", self.cost_limit, lambda v: math.isfinite(v) and v >= 0,
             "a finite number >= 0 (OmniSafe's benchmarks use 25)"),
            ("cost_gamma", self.cost_gamma, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("cost_lambda", self.cost_lambda, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
            ("cost_vf_loss_coeff", self.cost_vf_loss_coeff,
             lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
        ]
        for name, value, ok, allowed in checks:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
                self._value_error(
                    f"training({name}={value!r}) is invalid: {name} must be {allowed}."
                )
        for name in ("minibatch_size", "train_batch_size_per_learner", "num_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                self._value_error(
                    f"{name}={value!r} is invalid: it must be a positive integer."
                )
        # The episode-cost metric is what every constraint rule reads: keep our callback
        # in the list whatever callbacks the user configured.
        callbacks = force_list(self.callbacks_class)
        if not any(isinstance(c, type) and issubclass(c, SafeMetricsCallback)
                   for c in callbacks):
            self.callbacks_class = [SafeMetricsCallback, *callbacks]
