"""PPO-PID-Lagrangian (OmniSafe's CPPOPID)."""

from rllib_kfcpo.algorithms.ppo_pid_lag.ppo_pid_lag import PPOPIDLag, PPOPIDLagConfig

__all__ = ["PPOPIDLag", "PPOPIDLagConfig"]
