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
from rllib_kfcpo.safe.rules import Rule, check_rules, number

#: PPO-Lagrangian's settings' rules (rllib_kfcpo.safe.rules).
PPOLAG_RULES = (
    Rule("lagrangian_multiplier_init", number(0), "a finite number >= 0"),
    Rule("lagrangian_multiplier_lr", number(0, low_open=True), "a finite number > 0"),
    Rule("lagrangian_upper_bound", number(0, low_open=True, finite=False),
         "a number > 0 (math.inf for no bound)"),
)


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
        self._set_provided(lagrangian_multiplier_init=lagrangian_multiplier_init,
                           lagrangian_multiplier_lr=lagrangian_multiplier_lr,
                           lagrangian_upper_bound=lagrangian_upper_bound)
        return self

    @override(SafeAlgorithmConfig)
    def get_default_learner_class(self) -> type:
        from rllib_kfcpo.algorithms.ppo_lag.ppo_lag_torch_learner import PPOLagTorchLearner

        return PPOLagTorchLearner

    @override(SafeAlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        check_rules(self, PPOLAG_RULES)
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
