"""PointGoalHazard-v0, the README demo's env: spaces, reward and cost semantics (checked
against values computed here by hand), goal placement, seeding, registration, and the
property the demo needs (a random policy pays far more than the limit 25)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from rllib_kfcpo.envs.point_goal_hazard import (
    DEFAULTS,
    POINT_GOAL_HAZARD_ENV,
    PointGoalHazardEnv,
)


def _env(**config) -> PointGoalHazardEnv:
    env = PointGoalHazardEnv(config)
    env.reset(seed=0)
    return env


def _place(env: PointGoalHazardEnv, position, goal) -> None:
    env.position = np.array(position, float)
    env.goal = np.array(goal, float)


def test_spaces_and_observation():
    env = PointGoalHazardEnv()
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    assert env.observation_space.shape == (5,)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)
    assert info == {"cost": 0.0}
    _place(env, (0.3, -0.4), (1.0, 1.0))
    # goal - p, hazard centre (origin) - p, |p| - hazard radius (0.5 - 0.7)
    np.testing.assert_allclose(env._obs(), [0.7, 1.4, -0.3, 0.4, -0.2], atol=1e-6)


def test_reward_is_the_decrease_of_the_goal_distance():
    env = _env()
    _place(env, (1.0, 0.0), (1.0, 1.5))
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0]))
    # 0.1 up: the distance 1.5 -> 1.4.
    assert reward == pytest.approx(0.1)
    np.testing.assert_allclose(env.position, [1.0, 0.1])
    assert (terminated, truncated, info["cost"], info["goal_reached"]) == (
        False, False, 0.0, False)
    # A diagonal action of norm sqrt(2) is capped at norm 1: 0.1 / sqrt(2) on each axis,
    # and moving away from the goal is a negative reward.
    _place(env, (1.0, 0.0), (1.0, 1.5))
    _, reward, _, _, _ = env.step(np.array([-1.0, -1.0]))
    step = 0.1 / math.sqrt(2)
    np.testing.assert_allclose(env.position, [1.0 - step, -step])
    assert reward == pytest.approx(1.5 - math.hypot(step, 1.5 + step))
    # Actions outside [-1, 1] are clipped first: (5, 0) moves like (1, 0).
    _place(env, (1.0, 0.0), (2.0, 0.0))
    _, reward, _, _, _ = env.step(np.array([5.0, 0.0]))
    np.testing.assert_allclose(env.position, [1.1, 0.0])
    assert reward == pytest.approx(0.1)


def test_reaching_the_goal_pays_the_bonus_and_places_the_next_goal_across_the_hazard():
    env = _env()
    _place(env, (1.45, 0.0), (1.5, 0.35))  # distance 0.354 > goal size 0.3
    _, reward, _, _, info = env.step(np.array([0.0, 1.0]))  # -> (1.45, 0.1): 0.255
    before, after = math.hypot(0.05, 0.35), math.hypot(0.05, 0.25)
    assert info["goal_reached"] is True
    assert reward == pytest.approx(before - after + 1.0)
    # The next goal: on the circle of radius 1.5, within 45 degrees of the opposite angle.
    assert np.linalg.norm(env.goal) == pytest.approx(1.5)
    opposite = math.atan2(0.1, 1.45) + math.pi
    offset = math.atan2(env.goal[1], env.goal[0]) - opposite
    offset = (offset + math.pi) % (2 * math.pi) - math.pi
    assert abs(offset) <= math.pi / 4 + 1e-9


def test_goal_reward_and_distance_weights_come_from_env_config():
    env = _env(reward_distance=2.0, reward_goal=5.0)
    _place(env, (0.0, 1.0), (0.0, 1.35))
    _, reward, _, _, info = env.step(np.array([0.0, 1.0]))
    assert info["goal_reached"]
    assert reward == pytest.approx(2.0 * 0.1 + 5.0)


@pytest.mark.parametrize("position,cost", [
    ((0.0, 0.0), 1.0), ((0.5, 0.0), 1.0), ((0.0, -0.69), 1.0), ((0.4, 0.56), 1.0),
    ((0.0, 0.75), 0.0), ((0.5, 0.5), 0.0), ((-2.0, 1.0), 0.0),
])
def test_cost_is_one_for_a_step_that_ends_inside_the_hazard(position, cost):
    env = _env()
    # Start 0.1 to the left of `position` and step right onto it (goal far away).
    _place(env, (position[0] - 0.1, position[1]), (0.0, 2.4))
    _, _, _, _, info = env.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(env.position, position, atol=1e-12)
    assert info["cost"] == cost == float(math.hypot(*position) < 0.7)


def test_arena_clips_the_position():
    env = _env()
    _place(env, (2.45, -2.48), (0.0, 1.5))
    env.step(np.array([1.0, -1.0]))
    assert env.position.tolist() == [2.5, -2.5]


def test_episodes_start_inside_the_hazard_and_truncate_without_terminating():
    env = PointGoalHazardEnv({"max_episode_steps": 7})
    for seed in range(50):
        obs, _ = env.reset(seed=seed)
        assert np.linalg.norm(env.position) <= DEFAULTS["start_radius"]
        assert obs[4] < 0  # inside: the signed distance to the hazard's edge is negative
        assert np.linalg.norm(env.goal) == pytest.approx(DEFAULTS["goal_distance"])
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(7)]
    assert flags == [(False, False)] * 6 + [(False, True)]


def _rollout(seed: int, steps: int = 40) -> np.ndarray:
    env = PointGoalHazardEnv()
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)  # the same actions for every env seed
    rows = [[*obs, 0.0, 0.0]]
    for _ in range(steps):
        obs, reward, _, _, info = env.step(rng.uniform(-1, 1, 2))
        rows.append([*obs, reward, info["cost"]])
    return np.array(rows)


def test_seeding_is_deterministic():
    np.testing.assert_array_equal(_rollout(4), _rollout(4))
    assert not np.array_equal(_rollout(4), _rollout(5))
    # Without a new seed, reset() continues the env's own random stream.
    env = PointGoalHazardEnv()
    first, _ = env.reset(seed=9)
    again, _ = env.reset()
    assert not np.array_equal(first, again)


def test_a_random_policy_pays_far_more_than_the_demo_limit():
    """The demo needs the first iteration's episode cost >= 2 x 25: uniform random actions
    (RLlib's first policy is a unit Gaussian, clipped) pay ~90 per 150-step episode."""
    env = PointGoalHazardEnv()
    env.reset(seed=0)
    env.action_space.seed(0)
    costs, returns = [], []
    for _ in range(30):
        env.reset()
        cost = ret = 0.0
        for _ in range(env.max_episode_steps):
            _, reward, _, _, info = env.step(env.action_space.sample())
            cost, ret = cost + info["cost"], ret + reward
        costs.append(cost)
        returns.append(ret)
    assert np.mean(costs) > 2 * 25
    assert abs(np.mean(returns)) < 1.0  # a random walk earns about nothing


def test_heading_straight_for_each_goal_crosses_the_hazard_so_the_limit_binds():
    """The reward-greedy policy reaches 6 goals per episode and pays well over 25 (every
    leg crosses the hazard): the constrained optimum is not the unconstrained one."""
    env = PointGoalHazardEnv()
    env.reset(seed=0)
    cost = ret = 0.0
    for _ in range(env.max_episode_steps):
        direction = env.goal - env.position
        _, reward, _, _, info = env.step(direction / np.linalg.norm(direction))
        cost, ret = cost + info["cost"], ret + reward
    assert cost > 2 * 25 and ret > 15


def test_unknown_env_config_key_is_refused():
    with pytest.raises(ValueError, match=r"Unknown env_config keys \['episode_len'\]"):
        PointGoalHazardEnv({"episode_len": 10})


def test_registered_with_tune_on_import():
    import rllib_kfcpo  # noqa: F401
    from rllib_kfcpo.rllib_seam import registered_env_creator

    creator = registered_env_creator(POINT_GOAL_HAZARD_ENV)
    assert creator is not None
    env = creator({"max_episode_steps": 20})
    assert isinstance(env, PointGoalHazardEnv) and env.max_episode_steps == 20


def test_the_module_needs_neither_mujoco_nor_ray():
    """Loaded on its own (without the package's __init__, which registers the
    Safety-Gymnasium tasks), the env imports only gymnasium and numpy."""
    path = importlib.util.find_spec("rllib_kfcpo.envs.point_goal_hazard").origin
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pgh', {path!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "env = module.PointGoalHazardEnv(); env.reset(seed=0); env.step([0.5, 0.5])\n"
        "print(sorted(m for m in ('mujoco', 'ray', 'torch', 'safety_gymnasium')"
        " if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
