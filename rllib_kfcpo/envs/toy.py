"""Tiny envs with known costs, for tests, debugging and teaching (no MuJoCo).

- ``KnownCostEnv``: the cost of step t is ``cost_scale * ((t + 1) % 4)``, so the
  episode cost of an episode of ``episode_len`` steps is known in closed form.
- ``ActionCostEnv``: reward ``a`` and cost ``1[a > 0]`` for a 1-D action ``a`` in
  [-1, 1]: reward and cost conflict, and the cost is controlled by the action.
- ``CartPoleCostEnv``: gymnasium's CartPole (``Discrete(2)`` actions) with cost 1 for
  every step that ends with the cart farther than ``cost_threshold`` from the centre: a
  cost-annotated classic-control env with discrete actions.

They truncate at ``episode_len`` steps (``terminate_at`` makes KnownCostEnv terminate
instead; CartPole also terminates when the pole falls) and put the cost in
``info["cost"]``. Registered with Tune as ``rllib_kfcpo/KnownCost-v0``,
``rllib_kfcpo/ActionCost-v0`` and ``rllib_kfcpo/CartPoleCost-v0``.
:func:`register_toy_envs` also registers the README demo's env,
``rllib_kfcpo/PointGoalHazard-v0`` (:mod:`rllib_kfcpo.envs.point_goal_hazard`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

KNOWN_COST_ENV = "rllib_kfcpo/KnownCost-v0"
ACTION_COST_ENV = "rllib_kfcpo/ActionCost-v0"
CARTPOLE_COST_ENV = "rllib_kfcpo/CartPoleCost-v0"


def known_cost(t: int, cost_scale: float = 0.5) -> float:
    """The cost KnownCostEnv emits after step ``t`` (0-based)."""
    return cost_scale * ((t + 1) % 4)


class KnownCostEnv(gym.Env):
    """Deterministic per-step cost schedule; observation is (t / len, noise).

    With ``env_config["cost_per_episode_index"]`` every step of this instance's k-th
    episode (0-based) costs ``k / episode_len`` instead, so that episode's cost is ``k``.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.episode_len = int(config.get("episode_len", 20))
        self.cost_scale = float(config.get("cost_scale", 0.5))
        self.terminate = bool(config.get("terminate", False))
        self.cost_per_episode_index = bool(config.get("cost_per_episode_index", False))
        self.episode_index = -1
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.episode_len, self.np_random.normal()], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: D102
        super().reset(seed=seed)
        self.t = 0
        self.episode_index += 1
        return self._obs(), {"cost": 0.0}

    def step(self, action):  # noqa: D102
        cost = (self.episode_index / self.episode_len if self.cost_per_episode_index
                else known_cost(self.t, self.cost_scale))
        self.t += 1
        done = self.t >= self.episode_len
        return self._obs(), 1.0, done and self.terminate, done and not self.terminate, {
            "cost": cost
        }


class ActionCostEnv(gym.Env):
    """Reward ``a``, cost ``1[a > 0]``: the best safe policy picks a > 0 just often enough."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.episode_len = int(config.get("episode_len", 50))
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return self.np_random.uniform(-1, 1, size=2).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: D102
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):  # noqa: D102
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1.0, 1.0))
        self.t += 1
        return self._obs(), a, False, self.t >= self.episode_len, {"cost": float(a > 0)}


class CartPoleCostEnv(gym.Wrapper):
    """CartPole-v1 with a position cost: ``info["cost"] = 1[|x| > cost_threshold]``.

    The reward is CartPole's (1 per step the pole stays up), so a longer episode is a
    better one; the cost charges every step the cart spends away from the centre. A
    policy that balances the pole while drifting pays a cost that grows with the episode;
    keeping the cart near the centre keeps both. ``env_config``: ``episode_len``
    (truncation, default 200) and ``cost_threshold`` (default 0.5; the episode
    terminates at |x| > 2.4).
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.episode_len = int(config.get("episode_len", 200))
        self.cost_threshold = float(config.get("cost_threshold", 0.5))
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        super().__init__(CartPoleEnv())
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: D102
        self.t = 0
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "cost": 0.0}

    def step(self, action):  # noqa: D102
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        cost = float(abs(float(obs[0])) > self.cost_threshold)
        return obs, reward, terminated, truncated or self.t >= self.episode_len, {
            **info, "cost": cost}


def register_toy_envs() -> None:
    """Registers the toy envs with Ray Tune (idempotent)."""
    from ray.tune.registry import register_env

    from rllib_kfcpo.envs.point_goal_hazard import POINT_GOAL_HAZARD_ENV, PointGoalHazardEnv

    register_env(KNOWN_COST_ENV, lambda cfg: KnownCostEnv(dict(cfg)))
    register_env(ACTION_COST_ENV, lambda cfg: ActionCostEnv(dict(cfg)))
    register_env(CARTPOLE_COST_ENV, lambda cfg: CartPoleCostEnv(dict(cfg)))
    register_env(POINT_GOAL_HAZARD_ENV, lambda cfg: PointGoalHazardEnv(dict(cfg)))
