"""Torch learner of PPO-PID-Lagrangian: PPO-Lagrangian's learner with a PID multiplier."""

from __future__ import annotations

from ray.rllib.utils.annotations import override

from rllib_kfcpo.algorithms.ppo_lag.ppo_lag_torch_learner import PPOLagTorchLearner
from rllib_kfcpo.safe.pid_lagrange import PIDLagrangian


class PPOPIDLagTorchLearner(PPOLagTorchLearner):
    """Same loss as PPO-Lagrangian; lambda is a PID controller's output (updated once per
    iteration before the policy update, from the same Jc on every learner, so identical
    on all of them); its state is checkpointed under ``safe_state["pid_lagrange"]``."""

    MULTIPLIER_STATE_KEY = "pid_lagrange"

    @override(PPOLagTorchLearner)
    def make_multiplier(self) -> PIDLagrangian:
        cfg = self.config
        return PIDLagrangian(
            kp=cfg.pid_kp, ki=cfg.pid_ki, kd=cfg.pid_kd, d_delay=cfg.pid_d_delay,
            delta_p_ema_alpha=cfg.pid_delta_p_ema_alpha,
            delta_d_ema_alpha=cfg.pid_delta_d_ema_alpha, sum_norm=cfg.sum_norm,
            diff_norm=cfg.diff_norm, penalty_max=cfg.penalty_max,
            init=cfg.lagrangian_multiplier_init,
        )
