"""PPO-Lagrangian."""

from rllib_kfcpo.algorithms.ppo_lag.ppo_lag import PPOLag, PPOLagConfig

__all__ = ["PPOLag", "PPOLagConfig"]
