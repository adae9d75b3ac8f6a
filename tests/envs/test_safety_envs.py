"""Safety-Gymnasium 1.0.0 on RLlib's stack: the fixes, every robot/task family, the wrapper."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from rllib_kfcpo.env_data import NonFiniteEnvDataError
from rllib_kfcpo.envs import (
    SafetyGymnasiumEnv,
    applied_fixes,
    make_safety_env,
    safety_task_ids,
)
from rllib_kfcpo.envs.compat import FIXES, SourceFix

# One id per robot and task family, plus the velocity tasks the tuned examples use.
SAMPLE_IDS = [
    "SafetyPointGoal1-v0", "SafetyCarGoal1-v0", "SafetyDoggoGoal1-v0", "SafetyAntGoal1-v0",
    "SafetyRacecarButton1-v0", "SafetyPointPush2-v0", "SafetyCarCircle1-v0",
    "SafetyHalfCheetahVelocity-v1", "SafetyAntVelocity-v1", "SafetyHopperVelocity-v0",
]


def test_bare_import_fails_and_our_import_fixes_it():
    """The problem is real on this stack (a fresh interpreter), and the fixes solve it."""
    bare = subprocess.run([sys.executable, "-c", "import safety_gymnasium"],
                          capture_output=True, text=True)
    assert bare.returncode != 0, "safety_gymnasium imports unpatched: re-check the fixes"
    fixed = subprocess.run(
        [sys.executable, "-c",
         "from rllib_kfcpo.envs import make_safety_env, applied_fixes\n"
         "env = make_safety_env('SafetyCarGoal1-v0'); env.reset(seed=0)\n"
         "env.step(env.action_space.sample())\n"
         "print(sorted({k for k, _ in applied_fixes()}))"],
        capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    fired = eval(fixed.stdout.strip().splitlines()[-1])
    # A (gymnasium 1.x), B (py3.11 dataclasses), D (numpy 2.4), G (gymnasium-robotics)
    # are all present in safety-gymnasium 1.0.0 on this stack.
    assert {"A", "B", "D", "G"} <= set(fired), fired


def test_a_fix_is_a_no_op_when_the_broken_text_is_absent():
    fix = SourceFix("X", "m", "broken()", "fixed()")
    assert fix.apply("ok = 1\n") == ("ok = 1\n", False)
    assert fix.apply("x = broken()\n") == ("x = fixed()\n", True)
    regex = next(f for f in FIXES if f.key == "B")
    src = "    color: np.array = COLOR['hazard']\n"
    new, fired = regex.apply(src)
    assert fired and "default_factory" in new
    assert regex.apply(new) == (new, False)  # idempotent: the fixed text is not re-fixed


def test_task_ids_cover_every_family():
    ids = set(safety_task_ids())
    assert set(SAMPLE_IDS) <= ids
    assert not any("Debug" in i for i in ids)
    velocity = {i for i in ids if "Velocity" in i}
    assert len(velocity) == 12


@pytest.mark.parametrize("env_id", SAMPLE_IDS)
def test_reset_step_and_cost_in_info(env_id):
    env = make_safety_env(env_id)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    assert info["cost"] == 0.0
    total_cost = 0.0
    for _ in range(25):
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
        assert isinstance(reward, float) and np.isfinite(reward)
        assert isinstance(info["cost"], float) and info["cost"] >= 0.0
        total_cost += info["cost"]
        if term or trunc:
            break
    env.close()


def test_same_seed_same_trajectory():
    def rollout():
        env = make_safety_env("SafetyPointGoal1-v0")
        obs, _ = env.reset(seed=11)
        out = [obs]
        for t in range(30):
            obs, r, *_ , info = env.step(np.full(2, 0.5 * np.sin(t), np.float32))
            out.append(np.append(obs, [r, info["cost"]]))
        return np.concatenate(out)

    np.testing.assert_array_equal(rollout(), rollout())


def test_episode_truncates_at_the_time_limit():
    env = make_safety_env("SafetyPointGoal1-v0", {"max_episode_steps": 7})
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]
    assert gym.spec("SafetyPointGoal1-v0").max_episode_steps == 1000


def test_live_env_pickles_and_deepcopies():
    """Fix F: Builder's EzPickle kwargs include the task id."""
    env = make_safety_env("SafetyCarGoal1-v0")
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    assert clone.task_id == "SafetyCarGoal1-v0"
    assert copy.deepcopy(env.unwrapped).task_id == "SafetyCarGoal1-v0"
    assert ("F", "safety_gymnasium.builder") in applied_fixes()


class _NanEnv(gym.Env):
    """Native Safety-Gymnasium 6-tuple, NaN in one channel at step 3."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, what: str) -> None:
        self.what, self.t = what, 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        bad = self.t == 3
        obs = np.array([np.nan if bad and self.what == "obs" else 0.0, 0.0], np.float32)
        reward = np.inf if bad and self.what == "reward" else 0.0
        cost = np.nan if bad and self.what == "cost" else 0.0
        return obs, reward, cost, False, False, {}


@pytest.mark.parametrize("what", ["obs", "reward", "cost"])
def test_non_finite_env_output_is_caught_with_env_id_and_step(what):
    env = SafetyGymnasiumEnv(_NanEnv(what), "MyNanTask-v0", max_episode_steps=None)
    env.reset()
    env.step(np.zeros(1, np.float32))
    env.step(np.zeros(1, np.float32))
    with pytest.raises(NonFiniteEnvDataError, match=r"'MyNanTask-v0'.*step 3"):
        env.step(np.zeros(1, np.float32))


def test_action_space_builds_without_overflow_warning_and_is_unchanged():
    """Fix S: gymnasium warned "overflow encountered in cast" for every task built (float32
    bounds in a float64 Box); the space keeps its dtype and float32-rounded bounds."""
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('error', RuntimeWarning)\n"
        "from rllib_kfcpo.envs import make_safety_env, applied_fixes\n"
        "env = make_safety_env('SafetyPointGoal1-v0')\n"
        "space = env.action_space\n"
        "ctrl = env.unwrapped.task.agent.engine.model.actuator_ctrlrange\n"
        "assert space.dtype == np.float64, space.dtype\n"
        "assert (space.low == ctrl[:, 0].astype(np.float32)).all(), space.low\n"
        "assert (space.high == ctrl[:, 1].astype(np.float32)).all(), space.high\n"
        "print(('S', 'safety_gymnasium.bases.base_agent') in applied_fixes())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "overflow encountered in cast" not in proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "True"
