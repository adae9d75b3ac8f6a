"""Faulty custom envs for the reliability tests (registered with Tune on import).

They are ordinary gymnasium envs that do NOT go through rllib_kfcpo's Safety-Gymnasium
wrapper, so the checks they hit are the package's own (callback, validation).
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from ray.tune.registry import register_env

from rllib_kfcpo.envs.toy import ActionCostEnv

NAN_REWARD_ENV = "reliability/NanReward-v0"
NAN_OBS_ENV = "reliability/NanObs-v0"
INF_COST_ENV = "reliability/InfCost-v0"
NO_COST_ENV = "reliability/NoCost-v0"
MULTI_DISCRETE_ENV = "reliability/MultiDiscrete-v0"
NAN_RESET_ENV = "reliability/NanResetObs-v0"
#: Step (1-based, as RLlib's episode.t counts) at which the faulty envs misbehave.
BAD_STEP = 5


class _FaultAt(ActionCostEnv):
    """ActionCostEnv that returns one bad value at step BAD_STEP of every episode."""

    fault = "reward"

    def step(self, action):  # noqa: D102
        obs, reward, terminated, truncated, info = super().step(action)
        if self.t == BAD_STEP:
            if self.fault == "reward":
                reward = float("nan")
            elif self.fault == "obs":
                obs = obs.copy()
                obs[1] = np.nan
            elif self.fault == "cost":
                info = {"cost": float("inf")}
        return obs, reward, terminated, truncated, info


class NanRewardEnv(_FaultAt):
    """NaN reward at step BAD_STEP."""

    fault = "reward"


class NanObsEnv(_FaultAt):
    """NaN in the observation at step BAD_STEP."""

    fault = "obs"


class InfCostEnv(_FaultAt):
    """Infinite cost at step BAD_STEP."""

    fault = "cost"


class NanResetObsEnv(ActionCostEnv):
    """NaN in the observation returned by reset()."""

    def reset(self, *, seed=None, options=None):  # noqa: D102
        obs, info = super().reset(seed=seed, options=options)
        return np.full_like(obs, np.nan), info


class NoCostEnv(ActionCostEnv):
    """Never puts a cost into info."""

    def step(self, action):  # noqa: D102
        obs, reward, terminated, truncated, _ = super().step(action)
        return obs, reward, terminated, truncated, {"other": 1}


class MultiDiscreteEnv(gym.Env):
    """MultiDiscrete actions, with a cost: refused by the safe algorithms."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, *, seed=None, options=None):  # noqa: D102
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):  # noqa: D102
        return np.zeros(2, np.float32), 0.0, False, False, {"cost": 0.0}


def register() -> None:
    """Registers every faulty env with Tune (idempotent)."""
    for name, cls in [(NAN_REWARD_ENV, NanRewardEnv), (NAN_OBS_ENV, NanObsEnv),
                      (INF_COST_ENV, InfCostEnv), (NO_COST_ENV, NoCostEnv),
                      (NAN_RESET_ENV, NanResetObsEnv),
                      (MULTI_DISCRETE_ENV, MultiDiscreteEnv)]:
        register_env(name, lambda cfg, _cls=cls: _cls(dict(cfg)))


# Ship these classes by value: Ray workers need not import the tests package.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
register()
