"""PPO-Lagrangian: PPO on the advantage (A_r - lambda A_c) / (1 + lambda).

The multiplier lambda follows OmniSafe (init 0.001, Adam lr 0.035 on -lambda (Jc - d),
clamped at 0), updated once per iteration before the policy update from the windowed
episode cost Jc. See docs/algorithm.md.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.utils.annotations import override

from rllib_kfcpo.safe.algorithm import SafeAlgorithm
from rllib_kfcpo.safe.config import SafeAlgorithmConfig


class PPOLagConfig(SafeAlgorithmConfig):
    """Config of :class:`PPOLag`; ``training(cost_limit=...)`` sets the limit."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or PPOLag)
        self.clip_param = 0.2
        self.lagrangian_multiplier_init = 1e-3
        self.lagrangian_multiplier_lr = 0.035
        self.lagrangian_upper_bound = math.inf

    @override(SafeAlgorithmConfig)
    def training(
        self,
        *,
        lagrangian_multiplier_init: float | None = NotProvided,
        lagrangian_multiplier_lr: float | None = NotProvided,
        lagrangian_upper_bound: float | None = NotProvided,
        **kwargs: Any,
    ) -> PPOLagConfig:
        """PPO-Lagrangian settings (others as in SafeAlgorithmConfig/PPOConfig).

        Args:
            lagrangian_multiplier_init: Initial lambda (>= 0).
            lagrangian_multiplier_lr: Adam learning rate of lambda.
            lagrangian_upper_bound: lambda is clamped to [0, upper bound].
        """
        super().training(**kwargs)
        if lagrangian_multiplier_init is not NotProvided:
            self.lagrangian_multiplier_init = lagrangian_multiplier_init
        if lagrangian_multiplier_lr is not NotProvided:
            self.lagrangian_multiplier_lr = lagrangian_multiplier_lr
        if lagrangian_upper_bound is not NotProvided:
            self.lagrangian_upper_bound = lagrangian_upper_bound
        return self

    @override(SafeAlgorithmConfig)
    def get_default_learner_class(self) -> type:
        from rllib_kfcpo.algorithms.ppo_lag.ppo_lag_torch_learner import PPOLagTorchLearner

        return PPOLagTorchLearner

    @override(SafeAlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        rules = [
            ("lagrangian_multiplier_init", lambda v: math.isfinite(v) and v >= 0,
             "a finite number >= 0"),
            ("lagrangian_multiplier_lr", lambda v: math.isfinite(v) and v > 0,
             "a finite number > 0"),
            ("lagrangian_upper_bound", lambda v: not math.isnan(v) and v > 0,
             "a number > 0 (math.inf for no bound)"),
        ]
        for name, ok, allowed in rules:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(
                    f"training({name}={value!r}) is invalid: it must be {allowed}."
                )
        if self.lagrangian_multiplier_init > self.lagrangian_upper_bound:
            raise ValueError(
                f"training(lagrangian_multiplier_init={self.lagrangian_multiplier_init!r}) "
                f"is invalid: it is above lagrangian_upper_bound="
                f"{self.lagrangian_upper_bound!r}; lower it or raise the bound."
            )


class PPOLag(SafeAlgorithm):
    """PPO-Lagrangian on RLlib's new API stack (registered with Tune as ``PPOLag``)."""

    @classmethod
    @override(SafeAlgorithm)
    def get_default_config(cls) -> PPOLagConfig:
        return PPOLagConfig()
