"""PPO-PID-Lagrangian: PPO-Lagrangian's surrogate, the multiplier from a PID controller.

Stooke, Achiam & Abbeel (2020); settings and update order as OmniSafe's CPPOPID
(``configs/on-policy/CPPOPID.yaml``, ``omnisafe/common/pid_lagrange.py``): the surrogate
advantage is ``(A_r - lambda A_c) / (1 + lambda)`` with lambda the output of a PID
controller on ``Jc - d``, updated once per iteration before the policy update from the
windowed episode cost Jc. See rllib_kfcpo/safe/pid_lagrange.py and docs/algorithm.md.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.algorithms.algorithm_config import NotProvided
from ray.rllib.utils.annotations import override

from rllib_kfcpo.safe.algorithm import SafeAlgorithm
from rllib_kfcpo.safe.config import SafeAlgorithmConfig
from rllib_kfcpo.safe.rules import Rule, boolean, check_rules, integer, number

#: PPO-PID-Lagrangian's settings' rules (rllib_kfcpo.safe.rules).
_GAIN = "a finite number >= 0"
PID_RULES = (
    Rule("pid_kp", number(0), _GAIN),
    Rule("pid_ki", number(0), _GAIN),
    Rule("pid_kd", number(0), _GAIN),
    Rule("pid_d_delay", integer(1), "an integer >= 1"),
    Rule("pid_delta_p_ema_alpha", number(0, 1, high_open=True), "a number in [0, 1)"),
    Rule("pid_delta_d_ema_alpha", number(0, 1, high_open=True), "a number in [0, 1)"),
    Rule("sum_norm", boolean, "True or False"),
    Rule("diff_norm", boolean, "True or False"),
    Rule("penalty_max", number(0, low_open=True, finite=False),
         "a number > 0 (math.inf for no bound)"),
    Rule("lagrangian_multiplier_init", number(0), _GAIN),
    Rule("clip_param", number(0, low_open=True), "a finite number > 0"),
)


class PPOPIDLagConfig(SafeAlgorithmConfig):
    """Config of :class:`PPOPIDLag`; defaults are OmniSafe CPPOPID's."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or PPOPIDLag)
        self.clip_param = 0.2
        self.pid_kp = 0.1
        self.pid_ki = 0.01
        self.pid_kd = 0.01
        self.pid_d_delay = 10
        self.pid_delta_p_ema_alpha = 0.95
        self.pid_delta_d_ema_alpha = 0.95
        self.sum_norm = True
        self.diff_norm = False
        self.penalty_max = 100.0
        self.lagrangian_multiplier_init = 1e-3

    @override(SafeAlgorithmConfig)
    def training(
        self,
        *,
        pid_kp: float | None = NotProvided,
        pid_ki: float | None = NotProvided,
        pid_kd: float | None = NotProvided,
        pid_d_delay: int | None = NotProvided,
        pid_delta_p_ema_alpha: float | None = NotProvided,
        pid_delta_d_ema_alpha: float | None = NotProvided,
        sum_norm: bool | None = NotProvided,
        diff_norm: bool | None = NotProvided,
        penalty_max: float | None = NotProvided,
        lagrangian_multiplier_init: float | None = NotProvided,
        **kwargs: Any,
    ) -> PPOPIDLagConfig:
        """PPO-PID-Lagrangian settings (others as in SafeAlgorithmConfig/PPOConfig).

        Args:
            pid_kp: Proportional gain, on the EMA of ``Jc - d``.
            pid_ki: Integral gain: the integral grows by ``ki (Jc - d)`` per iteration.
            pid_kd: Derivative gain, on the rise of the smoothed Jc over ``pid_d_delay``
                iterations (only rises count).
            pid_d_delay: Iterations between the smoothed costs the derivative compares.
            pid_delta_p_ema_alpha: EMA weight of the old value in the proportional term.
            pid_delta_d_ema_alpha: EMA weight of the old value in the smoothed cost.
            sum_norm: OmniSafe's flag: when True (default) lambda is not clamped at
                ``penalty_max`` (the surrogate is always divided by ``1 + lambda``).
            diff_norm: OmniSafe's flag: clamp the integral and lambda to [0, 1].
            penalty_max: Upper clamp of lambda when neither ``sum_norm`` nor ``diff_norm``.
            lagrangian_multiplier_init: Initial value of the integral term.
        """
        super().training(**kwargs)
        self._set_provided(
            pid_kp=pid_kp, pid_ki=pid_ki, pid_kd=pid_kd, pid_d_delay=pid_d_delay,
            pid_delta_p_ema_alpha=pid_delta_p_ema_alpha,
            pid_delta_d_ema_alpha=pid_delta_d_ema_alpha, sum_norm=sum_norm,
            diff_norm=diff_norm, penalty_max=penalty_max,
            lagrangian_multiplier_init=lagrangian_multiplier_init,
        )
        return self

    @override(SafeAlgorithmConfig)
    def get_default_learner_class(self) -> type:
        from rllib_kfcpo.algorithms.ppo_pid_lag.ppo_pid_lag_torch_learner import (
            PPOPIDLagTorchLearner,
        )

        return PPOPIDLagTorchLearner

    @override(SafeAlgorithmConfig)
    def validate(self) -> None:
        super().validate()
        check_rules(self, PID_RULES)


class PPOPIDLag(SafeAlgorithm):
    """PPO-PID-Lagrangian on RLlib's new API stack (registered with Tune as ``PPOPIDLag``)."""

    @classmethod
    @override(SafeAlgorithm)
    def get_default_config(cls) -> PPOPIDLagConfig:
        return PPOPIDLagConfig()
