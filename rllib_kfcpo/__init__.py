"""rllib-kfcpo: constrained (safe) reinforcement learning for Ray RLlib.

Importing the package registers every Safety-Gymnasium task id (e.g.
``SafetyPointGoal1-v0``) and the toy cost envs with Ray Tune, and the algorithms
``KFCPO``, ``PPOLag``, ``PPOPIDLag`` and ``CPO`` as Tune trainables.
"""

from rllib_kfcpo.algorithms.cpo import CPO, CPOConfig
from rllib_kfcpo.algorithms.kfcpo import KFCPO, KFCPOConfig
from rllib_kfcpo.algorithms.ppo_lag import PPOLag, PPOLagConfig
from rllib_kfcpo.algorithms.ppo_pid_lag import PPOPIDLag, PPOPIDLagConfig

__version__ = "0.1.0"


def register() -> None:
    """Registers envs and algorithms with Ray Tune (idempotent; runs at import)."""
    from ray.tune import register_trainable

    from rllib_kfcpo.gl_backend import import_mujoco

    import_mujoco()  # before the envs import MuJoCo: a MUJOCO_GL without its library
    from rllib_kfcpo.envs import register_safety_envs
    from rllib_kfcpo.envs.toy import register_toy_envs

    register_trainable("KFCPO", KFCPO)
    register_trainable("PPOLag", PPOLag)
    register_trainable("PPOPIDLag", PPOPIDLag)
    register_trainable("CPO", CPO)
    register_toy_envs()
    register_safety_envs()


register()

__all__ = ["CPO", "CPOConfig", "KFCPO", "KFCPOConfig", "PPOLag", "PPOLagConfig", "PPOPIDLag",
           "PPOPIDLagConfig", "register"]
