"""A user's own env, as a user would write it: it warns, and so does a library it uses.

Importing this module registers ``UserWarningCost-v0`` with gymnasium, so the CLI can run
it as ``--env user_warning_env:UserWarningCost-v0`` (gymnasium imports the module first,
in the driver and in every Ray worker) when this directory is on ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import warnings

import gymnasium as gym
import numpy as np

ENV_ID = "UserWarningCost-v0"
#: Emitted with warnings.warn on the env's first reset.
USER_WARNING = "user env: observation scale looks off (deliberate test warning)"
#: Logged by "another library" (a logger that is not Ray's) on the env's first reset.
LIBRARY_WARNING = "otherlib: cache directory almost full (deliberate test warning)"


class UserWarningCostEnv(gym.Env):
    """Reward ``a``, cost ``1[a > 0]``, 20-step episodes; warns on its first reset."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, **kwargs) -> None:
        self.t = 0
        self.warned = False

    def reset(self, *, seed=None, options=None):  # noqa: D102
        super().reset(seed=seed)
        if not self.warned:
            self.warned = True
            warnings.warn(USER_WARNING, UserWarning, stacklevel=1)
            logging.getLogger("otherlib").warning(LIBRARY_WARNING)
        self.t = 0
        return np.zeros(2, np.float32), {"cost": 0.0}

    def step(self, action):  # noqa: D102
        self.t += 1
        a = float(np.asarray(action).reshape(-1)[0])
        return (np.zeros(2, np.float32), a, False, self.t >= 20, {"cost": float(a > 0)})


gym.register(ENV_ID, entry_point=UserWarningCostEnv)
