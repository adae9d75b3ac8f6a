"""``fast_observations``: the vectorised navigation path gives safety-gymnasium's numbers.

Side by side, the same task id built twice (the fast path, the default, and
``fast_observations: false``, safety-gymnasium's own code), seeded alike and driven by the
same actions for 2,000 steps with episodes of 500 steps (resets included): observations
equal to 1e-9 (in practice bit for bit), rewards, costs, terminations, truncations and the
whole info dicts equal. The actions are fixed noise plus, where the task has a target, a
homing term computed from the upstream env's state, so that goals are reached and costs
paid (asserted, so the comparison is not vacuous).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import rllib_kfcpo.envs.fast_obs as fast_obs
from rllib_kfcpo.envs import make_safety_env
from rllib_kfcpo.envs.fast_obs import is_installed

STEPS, EPISODE = 2000, 500


def _target(task) -> np.ndarray | None:
    """Where a scripted agent heads: the goal, the goal button, or behind the box."""
    if hasattr(task, "push_box"):
        box, goal = task.push_box.pos[:2], task.goal.pos[:2]
        direction = (goal - box) / (np.linalg.norm(goal - box) + 1e-9)
        behind = box - 0.25 * direction
        return behind if np.linalg.norm(task.agent.pos[:2] - behind) > 0.15 else goal
    if hasattr(task, "buttons"):
        return task.buttons.pos[task.buttons.goal_button][:2]
    if hasattr(task, "goal"):
        return task.goal.pos[:2]
    return None


def _action(task, noise: np.ndarray) -> np.ndarray:
    target = _target(task)
    if target is None or noise.shape != (2,):  # legged agents: noise only
        return np.clip(noise + 0.3, -1, 1).astype(np.float32)
    ex, ey = task._ego_xy(np.asarray(target, dtype=np.float64))
    angle = np.arctan2(ey, ex)
    forward = 1.0 if abs(angle) < 0.6 else 0.1
    turn = float(np.clip(2 * angle, -1, 1))
    homing = (np.array([forward, turn]) if type(task.agent).__name__ == "Point"
              else np.array([forward + turn, forward - turn]))
    return np.clip(homing + noise, -1, 1).astype(np.float32)


def _set_options(env, options: dict) -> None:
    """Sets ``"conf.field"`` attributes of the task (``sensor_conf``: of its agent)."""
    task = env.unwrapped.task
    for key, value in options.items():
        conf, name = key.split(".")
        owner = task.agent if conf == "sensor_conf" else task
        setattr(getattr(owner, conf), name, value)
    task.build_observation_space()


def _compare(env_id: str, config: dict, steps: int = STEPS, seed: int = 3,
             options: dict | None = None, episode: int = EPISODE) -> dict:
    fast = make_safety_env(env_id, {**config, "max_episode_steps": episode})
    slow = make_safety_env(env_id, {**config, "max_episode_steps": episode,
                                    "fast_observations": False})
    assert is_installed(fast) and not is_installed(slow)
    if options:
        for env in (fast, slow):
            _set_options(env, options)
    noise = np.random.default_rng(seed).normal(scale=0.3, size=(steps, *slow.action_space.shape))
    obs_f, info_f = fast.reset(seed=seed)
    obs_s, info_s = slow.reset(seed=seed)
    worst = float(np.max(np.abs(obs_f - obs_s)))
    assert info_f == info_s
    seen = {"goals": 0, "cost_steps": 0, "resets": 0, "cost_keys": set(), "worst": worst}
    for t in range(steps):
        action = _action(slow.unwrapped.task, noise[t])
        obs_f, rew_f, term_f, trunc_f, info_f = fast.step(action)
        obs_s, rew_s, term_s, trunc_s, info_s = slow.step(action)
        assert obs_f.shape == obs_s.shape and obs_f.dtype == obs_s.dtype
        seen["worst"] = max(seen["worst"], float(np.max(np.abs(obs_f - obs_s))))
        assert seen["worst"] <= 1e-9, (env_id, t, seen["worst"])
        assert (rew_f, term_f, trunc_f) == (rew_s, term_s, trunc_s), (env_id, t)
        assert info_f == info_s, (env_id, t, info_f, info_s)
        seen["goals"] += "goal_met" in info_s
        seen["cost_steps"] += info_s["cost"] > 0
        seen["cost_keys"] |= {k for k, v in info_s.items() if k.startswith("cost_") and v > 0}
        if term_s or trunc_s:
            seen["resets"] += 1
            obs_f, _ = fast.reset()
            obs_s, _ = slow.reset()
            seen["worst"] = max(seen["worst"], float(np.max(np.abs(obs_f - obs_s))))
    fast.close()
    slow.close()
    return seen


# (task id, env_config of both sides, what the run must have exercised)
CASES = [
    ("SafetyPointGoal1-v0", {}, {"goals", "cost_hazards"}),
    ("SafetyCarGoal1-v0", {}, set()),
    ("SafetyPointButton1-v0", {}, {"goals", "cost_buttons", "cost_gremlins", "cost_hazards"}),
    ("SafetyPointPush1-v0", {}, {"cost_hazards"}),
    ("SafetyPointCircle1-v0", {}, {"cost_out_of_boundary"}),
    ("SafetyCarButton2-v0", {}, {"cost_buttons", "cost_gremlins", "cost_hazards"}),
    # Level 2 with vases (contact and velocity costs); the model recompiled every reset.
    ("SafetyPointGoal2-v0", {"reuse_compiled_model": False}, {"cost_vases_velocity"}),
]


@pytest.mark.parametrize(("env_id", "config", "exercised"), CASES,
                         ids=[case[0] for case in CASES])
def test_fast_path_equals_safety_gymnasium(env_id: str, config: dict, exercised: set):
    steps = 1000 if config.get("reuse_compiled_model") is False else STEPS
    seen = _compare(env_id, config, steps=steps)
    assert seen["resets"] == steps // EPISODE
    assert seen["worst"] <= 1e-9
    if "goals" in exercised:
        assert seen["goals"] > 0, seen
    assert exercised - {"goals"} <= seen["cost_keys"], seen
    if env_id != "SafetyCarGoal1-v0":
        assert seen["cost_steps"] > 0


# Task settings no registered id uses (safety-gymnasium's config cannot set them either:
# they are attributes set after construction), each taking another branch of the fast
# code: natural lidar (upstream's method), 2 bins (the ufunc.at path), no aliasing with
# exponential lidar, 7 bins, raw hinge/quaternion sensors.
OPTION_CASES = [
    ("SafetyPointGoal1-v0", {"lidar_conf.type": "natural"}),
    ("SafetyPointButton1-v0", {"lidar_conf.num_bins": 2}),
    ("SafetyPointGoal2-v0", {"lidar_conf.alias": False, "lidar_conf.max_dist": None}),
    ("SafetyCarCircle2-v0", {"lidar_conf.num_bins": 7}),
    ("SafetyCarPush1-v0", {"sensor_conf.sensors_angle_components": False}),
    ("SafetyDoggoGoal1-v0", {}),  # hinge sensors as sin/cos
    ("SafetyAntGoal1-v0", {}),  # hinges, free-joint height; the agent can die (terminated)
]


@pytest.mark.parametrize(("env_id", "options"), OPTION_CASES,
                         ids=[f"{c[0]}-{'-'.join(c[1])}" for c in OPTION_CASES])
def test_fast_path_equals_safety_gymnasium_with_task_options(env_id: str, options: dict):
    seen = _compare(env_id, {}, steps=400, options=options, episode=200)
    assert seen["resets"] >= 1 and seen["worst"] <= 1e-9


def test_defaults_and_switches():
    env = make_safety_env("SafetyPointGoal1-v0")
    assert is_installed(env) and env.reuse_compiled_model is True
    off = make_safety_env("SafetyPointGoal1-v0", {"fast_observations": False,
                                                  "reuse_compiled_model": False})
    assert not is_installed(off) and off.reuse_compiled_model is False
    assert type(off.unwrapped.task).__name__ == "GoalLevel1"
    assert type(env.unwrapped.task).__name__ == "FastGoalLevel1"
    assert isinstance(env.unwrapped.task, type(off.unwrapped.task))
    # Velocity tasks have no navigation code: the switch is accepted and changes nothing.
    cheetah = make_safety_env("SafetyHalfCheetahVelocity-v1", {"fast_observations": True})
    assert not is_installed(cheetah) and cheetah.reuse_compiled_model is False
    cheetah.reset(seed=0)
    cheetah.step(cheetah.action_space.sample())


@pytest.mark.parametrize("key", ["fast_observations", "reuse_compiled_model"])
@pytest.mark.parametrize("bad", ["yes", 1, 0.0, "false"])
def test_switches_refuse_non_bools(key: str, bad: object):
    with pytest.raises(ValueError, match=rf"env_config\['{key}'\] must be true or false"):
        make_safety_env("SafetyPointGoal1-v0", {key: bad})


def test_other_safety_gymnasium_versions(monkeypatch: pytest.MonkeyPatch):
    import safety_gymnasium

    monkeypatch.setattr(safety_gymnasium, "__version__", "1.1.0")
    with pytest.raises(RuntimeError, match=r"fast_observations.*1\.0\.0.*1\.1\.0"):
        make_safety_env("SafetyPointGoal1-v0", {"fast_observations": True})
    with pytest.raises(RuntimeError, match="1.1.0"):
        fast_obs.install(make_safety_env("SafetyPointGoal1-v0", {
            "fast_observations": False}).unwrapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_safety_env("SafetyPointGoal1-v0")
    assert not is_installed(env)
    assert any("1.1.0" in str(w.message) for w in caught)
    env.reset(seed=0)
    env.step(env.action_space.sample())


def test_fast_step_is_faster():
    """Interleaved timing (load from other processes hits both alike)."""
    import time

    fast = make_safety_env("SafetyPointButton1-v0")
    slow = make_safety_env("SafetyPointButton1-v0", {"fast_observations": False})
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(150, 2)).astype(np.float32)
    timings: dict[str, list[float]] = {"fast": [], "slow": []}
    for env in (fast, slow):
        env.reset(seed=0)
    for _ in range(3):
        for name, env in (("fast", fast), ("slow", slow)):
            started = time.perf_counter()
            for action in actions:
                env.step(action)
            timings[name].append(time.perf_counter() - started)
    assert min(timings["fast"]) * 2 < min(timings["slow"]), timings


def test_per_step_callback_skips_checks_the_env_already_did():
    from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner

    from rllib_kfcpo import KFCPOConfig
    from rllib_kfcpo.envs.toy import KNOWN_COST_ENV
    from rllib_kfcpo.safe.callbacks import _envs_check_themselves

    def runner(env: str) -> SingleAgentEnvRunner:
        return SingleAgentEnvRunner(config=KFCPOConfig().environment(env).env_runners(
            num_env_runners=0, num_envs_per_env_runner=2))

    safety, toy = runner("SafetyPointGoal1-v0"), runner(KNOWN_COST_ENV)
    upstream = SingleAgentEnvRunner(config=KFCPOConfig().environment(
        "SafetyPointGoal1-v0", env_config={"fast_observations": False}).env_runners(
            num_env_runners=0, num_envs_per_env_runner=1))
    try:
        # The switch reaches the envs of RLlib's env runners through the registered id.
        assert all(is_installed(env) for env in safety.env.unwrapped.envs)
        assert not any(is_installed(env) for env in upstream.env.unwrapped.envs)
        assert _envs_check_themselves(safety) is True
        assert _envs_check_themselves(toy) is False  # custom envs: checked every step
        assert _envs_check_themselves(None) is False
        episodes = safety.sample(num_timesteps=60)
        assert sum(len(e) for e in episodes) >= 60
    finally:
        for r in (safety, toy, upstream):
            r.stop()
