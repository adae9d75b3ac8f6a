"""RL modules of the safe algorithms."""

from rllib_kfcpo.modules.safe_actor_critic import SafeActorCriticTorchModule

__all__ = ["SafeActorCriticTorchModule"]
