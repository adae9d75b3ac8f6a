"""``reuse_compiled_model``: navigation resets keep the compiled model, same task semantics.

Side by side, two envs built from the same id and seeded alike, one with the option: the
grafted model equals the freshly compiled one array for array, trajectories (observation,
reward, cost) are bit-identical over several episodes, layouts still change every episode,
and the fast resets are several times faster.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from rllib_kfcpo.envs import make_safety_env
from rllib_kfcpo.envs.fast_reset import _ASSETS, _STAT_FIELDS, _arrays, counts

EPISODES, STEPS = 3, 25


def _pair(env_id: str):
    fast = make_safety_env(env_id, {"reuse_compiled_model": True, "max_episode_steps": STEPS})
    slow = make_safety_env(env_id, {"reuse_compiled_model": False, "max_episode_steps": STEPS})
    return fast, slow


def _layout(env) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in env.unwrapped.task.world_info.layout.items()}


@pytest.mark.parametrize("env_id", ["SafetyPointGoal1-v0", "SafetyCarButton1-v0",
                                    "SafetyPointPush1-v0"])
def test_same_models_trajectories_and_random_layouts(env_id: str):
    fast, slow = _pair(env_id)
    rng = np.random.default_rng(0)
    layouts = []
    grafted_before = counts()["grafted"]
    for episode in range(EPISODES):
        seed = 123 if episode == 0 else None
        obs_f, _ = fast.reset(seed=seed)
        obs_s, _ = slow.reset(seed=seed)
        np.testing.assert_array_equal(obs_f, obs_s)
        model_f, model_s = fast.unwrapped.task.world.model, slow.unwrapped.task.world.model
        arrays_s = _arrays(model_s)
        for name, value in _arrays(model_f).items():
            np.testing.assert_array_equal(value, arrays_s[name], err_msg=name)
        for field in _STAT_FIELDS:
            np.testing.assert_array_equal(getattr(model_f.stat, field),
                                          getattr(model_s.stat, field), err_msg=field)
        np.testing.assert_array_equal(model_f.tex_data, model_s.tex_data)  # skybox kept
        layouts.append(_layout(fast))
        for _ in range(STEPS):
            action = rng.uniform(-1, 1, size=fast.action_space.shape).astype(np.float32)
            out_f, out_s = fast.step(action), slow.step(action)
            np.testing.assert_array_equal(out_f[0], out_s[0])
            assert out_f[1:4] == out_s[1:4] and out_f[4]["cost"] == out_s[4]["cost"]
    # Every later episode was grafted, not compiled, and got a new random layout.
    assert counts()["grafted"] - grafted_before == EPISODES - 1
    assert any(str(k).endswith("assets.yaml") for k in _ASSETS)  # parsed once, then copied
    for a, b in zip(layouts, layouts[1:], strict=False):
        assert not np.allclose(a["agent"], b["agent"])
        assert any(not np.allclose(a[k], b[k]) for k in a if k != "agent")
    fast.close()
    slow.close()


def test_fast_reset_is_much_faster():
    fast, slow = _pair("SafetyPointGoal1-v0")
    fast.reset(seed=0)
    slow.reset(seed=0)
    timings = {"fast": [], "slow": []}
    for _ in range(3):  # interleaved, so load from other processes hits both alike
        for name, env in (("fast", fast), ("slow", slow)):
            started = time.perf_counter()
            env.reset()
            timings[name].append(time.perf_counter() - started)
    assert min(timings["fast"]) * 4 < min(timings["slow"]), timings


def test_option_is_on_by_default_and_harmless_for_velocity_tasks():
    env = make_safety_env("SafetyPointGoal1-v0")
    assert env.reuse_compiled_model is True
    assert make_safety_env("SafetyHalfCheetahVelocity-v1").reuse_compiled_model is False
    # Harmless on a velocity task: the same seed and actions give the same data either way.
    runs = []
    for reuse in (True, False):
        cheetah = make_safety_env("SafetyHalfCheetahVelocity-v1",
                                  {"reuse_compiled_model": reuse})
        first, _ = cheetah.reset(seed=0)
        second, _ = cheetah.reset()
        action = np.linspace(-0.5, 0.5, cheetah.action_space.shape[0])
        stepped, reward, *_, info = cheetah.step(action)
        runs.append((first, second, stepped, reward, info["cost"]))
        cheetah.close()
    for got, want in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(got, want)
