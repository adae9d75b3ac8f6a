"""Small helpers for tests that inspect real learners and env runners."""

from __future__ import annotations

from typing import Any

import numpy as np


def results(call_results: Any) -> list[Any]:
    """Values of a LearnerGroup/EnvRunnerGroup foreach call, whatever wrapper it returns."""
    return [r.get() if hasattr(r, "get") else r for r in call_results]


def learner_weights(algo: Any, module_id: str = "default_policy") -> list[dict[str, np.ndarray]]:
    """The module weights held by every learner (one dict per learner)."""
    return results(algo.learner_group.foreach_learner(
        lambda learner: {k: v.detach().cpu().numpy().copy() for k, v in
                         learner.module[module_id].unwrapped().state_dict().items()}
    ))


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                        atol: float = 0.0) -> None:
    """Equal (bit-for-bit by default) weights under every key."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


def filter_state(algo: Any) -> dict[str, Any]:
    """The driver's observation-filter (MeanStdFilter) state."""
    return algo.get_state()["env_runner"]["env_to_module_connector"]["MeanStdFilter"]


def toy_episodes(n: int = 4, length: int = 50, *, logp: float | None = None,
                 obs_scale: float | None = None) -> list[Any]:
    """``n`` real ActionCostEnv episodes of ``length`` steps with uniform random actions,
    as if sampled by the module's initial policy (mean 0, log-std -0.5).

    Equal lengths, so learners get equally sized shards. ``logp`` / ``obs_scale`` make
    step 3 of the first episode faulty (a given behaviour log-prob, a scaled observation).
    """
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from rllib_kfcpo.envs.toy import ActionCostEnv

    env = ActionCostEnv()
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(n):
        obs, info = env.reset(seed=i)
        observations, actions, rewards, infos = [obs], [], [], [info]
        for _ in range(length):
            action = rng.uniform(-1, 1, size=1).astype(np.float32)
            obs, reward, _, _, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            infos.append(info)
        logps = [np.float32(-0.5 * (a[0] / np.exp(-0.5)) ** 2 + 0.5 - 0.5 * np.log(2 * np.pi))
                 for a in actions]
        if i == 0 and logp is not None:
            logps[3] = np.float32(logp)
        if i == 0 and obs_scale is not None:
            observations[3] = (observations[3] * obs_scale).astype(np.float32)
        episodes.append(SingleAgentEpisode(
            observation_space=env.observation_space, action_space=env.action_space,
            observations=observations, actions=actions, rewards=rewards, infos=infos,
            truncated=True, len_lookback_buffer=0,
            extra_model_outputs={
                Columns.ACTION_DIST_INPUTS: [np.array([0.0, -0.5], np.float32)] * length,
                Columns.ACTION_LOGP: logps,
            },
        ))
    return episodes


def assert_nested_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested dicts/lists of tensors, arrays and numbers (NaN == NaN)."""
    import math

    import torch

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            assert_nested_equal(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_nested_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(
            torch.nan_to_num(a, nan=1.2345), torch.nan_to_num(b, nan=1.2345))), path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, (path, a, b)


def small_toy_config(config_cls: type, *, num_env_runners: int = 1,
                     rollout_fragment_length: int = 200, **learners: Any) -> Any:
    """A safe algorithm's config on the action-cost toy env: batch 400, minibatch 100,
    2 epochs, cost limit 5, seed 0; ``learners`` go to ``.learners(...)``."""
    from rllib_kfcpo.envs.toy import ACTION_COST_ENV

    return (
        config_cls()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=num_env_runners,
                     rollout_fragment_length=rollout_fragment_length)
        .learners(**learners)
        .training(train_batch_size=400, minibatch_size=100, num_epochs=2, cost_limit=5.0)
        .debugging(seed=0)
    )


def cartpole_episodes(n: int = 6, *, episode_len: int = 40, seed: int = 0) -> list[Any]:
    """``n`` real CartPoleCostEnv episodes (Discrete(2)) with uniformly random actions, as
    if sampled by a categorical policy with zero logits (log-prob log(1/2) each)."""
    from ray.rllib.core.columns import Columns
    from ray.rllib.env.single_agent_episode import SingleAgentEpisode

    from rllib_kfcpo.envs.toy import CartPoleCostEnv

    env = CartPoleCostEnv({"episode_len": episode_len})
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        obs, info = env.reset(seed=seed + i)
        observations, actions, rewards, infos = [obs], [], [], [info]
        terminated = truncated = False
        while not (terminated or truncated):
            action = int(rng.integers(2))
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            infos.append(info)
        length = len(actions)
        episodes.append(SingleAgentEpisode(
            observation_space=env.observation_space, action_space=env.action_space,
            observations=observations, actions=actions, rewards=rewards, infos=infos,
            terminated=terminated, truncated=truncated and not terminated,
            len_lookback_buffer=0,
            extra_model_outputs={
                Columns.ACTION_DIST_INPUTS: [np.zeros(2, np.float32)] * length,
                Columns.ACTION_LOGP: [np.float32(np.log(0.5))] * length,
            },
        ))
    return episodes
