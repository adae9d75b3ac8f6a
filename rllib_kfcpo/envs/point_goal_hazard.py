"""A point that must reach goals past a hazard: Safety-Gymnasium's Goal task in numpy.

``PointGoalHazardEnv`` (registered with Tune as ``rllib_kfcpo/PointGoalHazard-v0``) is
the README demo's env: small enough that KFCPO shows in about a minute on 2 CPUs what
the Safety-Gymnasium tasks take far longer to show (a cost that starts far over the limit
and ends within it while the return rises). No MuJoCo, no physics: a point on a plane
moved by its action.

- **Agent:** a point ``p`` in the square arena ``[-arena_size, arena_size]^2``. The action
  is a velocity ``a`` in ``Box(-1, 1, (2,))``; its Euclidean norm is capped at 1 (so every
  direction has the same top speed) and the point moves by ``max_speed * a`` per step,
  then is clipped to the arena.
- **Hazard:** a disk of radius ``hazard_radius`` at the origin. The episode starts inside
  it, at a uniformly random point of the disk of radius ``start_radius`` (a robot that
  wakes up in a spill).
- **Goal:** a disk of radius ``goal_size`` whose centre lies on the circle of radius
  ``goal_distance`` around the hazard, on the far side of it from the agent: at the
  agent's polar angle plus pi, plus a uniform offset in ``[-goal_angle_spread,
  goal_angle_spread]``. Reaching it places the next goal the same way (as
  Safety-Gymnasium's Goal task relocates its goal), so every leg's straight route crosses
  the hazard and the detour around it is longer.
- **Reward** (Safety-Gymnasium's Goal task, ``reward_distance`` and ``reward_goal``):
  ``reward_distance * (d_before - d_after)``, the decrease of the distance from the point
  to the goal centre this step, plus ``reward_goal`` on the step that reaches the goal
  (distance <= ``goal_size``; the decrease is measured to the goal just reached).
- **Cost** (``info["cost"]``): 1 for every step that ends inside the hazard
  (distance to its centre < ``hazard_radius``), else 0.
- **Observation** (5 floats): the goal centre relative to the point (2), the hazard
  centre relative to the point (2), and the signed distance to the hazard's edge
  (negative inside).
- **Episodes** are truncated after ``max_episode_steps`` steps (the key the
  Safety-Gymnasium tasks take too); they never terminate.

With the defaults a random policy pays ~90 per episode and earns ~0; heading straight for
each goal earns ~21 (6 goals) and pays ~80; going around the hazard pays ~0 and earns
less. A cost limit between the two (the demo uses 25) makes the constrained optimum cut
the hazard's edge only as much as the limit allows.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

POINT_GOAL_HAZARD_ENV = "rllib_kfcpo/PointGoalHazard-v0"

#: env_config keys and defaults.
DEFAULTS: dict[str, float] = {
    "max_episode_steps": 150,
    "max_speed": 0.1,
    "arena_size": 2.5,
    "hazard_radius": 0.7,
    "start_radius": 0.35,
    "goal_distance": 1.5,
    "goal_size": 0.3,
    "goal_angle_spread": math.pi / 4,
    "reward_distance": 1.0,
    "reward_goal": 1.0,
}


class PointGoalHazardEnv(gym.Env):
    """Goals on the far side of a hazard disk; cost 1 per step inside it (module doc)."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"Unknown env_config keys {unknown} of {POINT_GOAL_HAZARD_ENV}; "
                             f"known: {sorted(DEFAULTS)}.")
        settings = {**DEFAULTS, **config}
        self.max_episode_steps = int(settings["max_episode_steps"])
        self.max_speed = float(settings["max_speed"])
        self.arena_size = float(settings["arena_size"])
        self.hazard_radius = float(settings["hazard_radius"])
        self.start_radius = float(settings["start_radius"])
        self.goal_distance = float(settings["goal_distance"])
        self.goal_size = float(settings["goal_size"])
        self.goal_angle_spread = float(settings["goal_angle_spread"])
        self.reward_distance = float(settings["reward_distance"])
        self.reward_goal = float(settings["reward_goal"])
        self.hazard = np.zeros(2)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
        self.position = np.zeros(2)
        self.goal = np.zeros(2)
        self.t = 0

    def _place_goal(self) -> None:
        """Next goal centre: across the hazard from the point, angle offset at random."""
        angle = (math.atan2(self.position[1], self.position[0]) + math.pi
                 + self.np_random.uniform(-self.goal_angle_spread, self.goal_angle_spread))
        self.goal = self.goal_distance * np.array([math.cos(angle), math.sin(angle)])

    def _obs(self) -> np.ndarray:
        to_hazard = self.hazard - self.position
        edge = float(np.linalg.norm(to_hazard)) - self.hazard_radius
        return np.array([*(self.goal - self.position), *to_hazard, edge], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # noqa: D102
        super().reset(seed=seed)
        self.t = 0
        angle = self.np_random.uniform(0.0, 2 * math.pi)
        radius = self.start_radius * math.sqrt(self.np_random.uniform())  # uniform in the disk
        self.position = radius * np.array([math.cos(angle), math.sin(angle)])
        self._place_goal()
        return self._obs(), {"cost": 0.0}

    def step(self, action):  # noqa: D102
        action = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
        action = action / max(1.0, float(np.linalg.norm(action)))
        before = float(np.linalg.norm(self.goal - self.position))
        self.position = np.clip(self.position + self.max_speed * action,
                                -self.arena_size, self.arena_size)
        after = float(np.linalg.norm(self.goal - self.position))
        reward = self.reward_distance * (before - after)
        reached = after <= self.goal_size
        if reached:
            reward += self.reward_goal
            self._place_goal()
        inside = float(np.linalg.norm(self.position - self.hazard)) < self.hazard_radius
        self.t += 1
        info = {"cost": float(inside), "goal_reached": bool(reached)}
        return self._obs(), reward, False, self.t >= self.max_episode_steps, info
