"""K-FAC / KFCPO numerical safety, forced through a real KFCPO learner.

Each test builds the real learner (``build_learner_group`` with a local learner), feeds it
real episodes from the toy env with one injected numerical fault, and checks that the step
is skipped and counted (``skipped_steps``, ``kfac_skipped_updates``,
``kfac_eigh_failures``), that no weight became non-finite, and that the next clean
update trains normally.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_kfcpo import KFCPOConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV, ActionCostEnv
from tests.helpers import toy_episodes

LENGTH = 50
MINIBATCH = 4 * (LENGTH + 1)  # four episodes plus one bootstrap row each: one minibatch


def episodes(logp: float | None = None, obs_scale: float | None = None) -> list[Any]:
    """Four real toy-env episodes; optionally one behaviour log-prob or observation faulty."""
    return toy_episodes(4, LENGTH, logp=logp, obs_scale=obs_scale)


@pytest.fixture
def learner_group(ray_local):
    config = (
        KFCPOConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=0)
        .training(train_batch_size=200, minibatch_size=MINIBATCH, num_epochs=1,
                  shuffle_batch_per_epoch=False, target_kl=10.0, cost_limit=5.0)
        .debugging(seed=0)
    )
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    group = config.build_learner_group(spaces=spaces)
    yield group
    group.shutdown()


def update(group: Any, eps: list[SingleAgentEpisode]) -> dict[str, float]:
    """One update; the module's metrics as plain numbers."""
    result = group.update(episodes=eps, timesteps={"safe_episode_cost_mean": 20.0},
                          num_epochs=1, minibatch_size=MINIBATCH)[0]["default_policy"]
    return {k: float(v.peek()) if hasattr(v, "peek") else float(v) for k, v in result.items()
            if not isinstance(v, dict)}


def count(stats: dict[str, float], key: str) -> float:
    """A per-iteration count (sum) metric; absent or NaN (nothing logged) means 0."""
    value = stats.get(key, 0.0)
    return 0.0 if math.isnan(value) else value


def weights(group: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy()
            for k, v in group._learner.module["default_policy"].state_dict().items()}


def assert_finite(w: dict[str, np.ndarray]) -> None:
    for key, value in w.items():
        assert np.isfinite(value).all(), key


def policy_part(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in w.items() if k.startswith(("pi.", "log_std"))}


@pytest.mark.parametrize("logp", [float("nan"), -1e30],
                         ids=["nan-behaviour-logp", "huge-importance-ratio"])
def test_non_finite_direction_is_skipped_counted_and_training_continues(learner_group,
                                                                         logp):
    """A NaN log-prob, or one giving an infinite importance ratio, makes the reward and
    cost gradients non-finite: the policy step is skipped (``skipped_steps``), the policy
    stays bit-for-bit, and the next clean batch takes a normal step."""
    before = weights(learner_group)
    stats = update(learner_group, episodes(logp=logp))
    after = weights(learner_group)
    assert stats["skipped_steps"] == 1
    assert count(stats, "policy_steps") == 0
    for key, value in policy_part(before).items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert_finite(after)
    clean = update(learner_group, episodes())
    assert count(clean, "skipped_steps") == 0 and clean["policy_steps"] == 1
    assert_finite(weights(learner_group))


def test_non_finite_kfac_factors_are_not_folded_in(learner_group):
    """An observation of 1e30 overflows the activation factor A = E[x x^T] to inf in
    float32: the factor update is skipped (``kfac_skipped_updates``), the running factors
    and their decomposition stay finite, and training continues."""
    update(learner_group, episodes())
    stats = update(learner_group, episodes(obs_scale=1e30))
    assert stats["kfac_skipped_updates"] == 1
    assert stats["kfac_factor_updates"] == 1  # only the clean update was folded in
    kfac = learner_group._learner.kfac["default_policy"]
    for block in kfac.blocks:
        for tensor in block.state_dict().values():
            assert torch.isfinite(torch.as_tensor(tensor)).all()
    clean = update(learner_group, episodes())
    assert clean["kfac_factor_updates"] == 2 and clean["kfac_skipped_updates"] == 1
    assert clean["policy_steps"] == 1
    assert_finite(weights(learner_group))


def test_failed_eigendecomposition_is_undone_and_counted(learner_group, monkeypatch):
    """A real ``torch.linalg.eigh`` failure cannot be produced on demand, so this test
    (the only one that patches anything) makes eigh raise ``LinAlgError`` inside the real
    in-process learner: the factor update is undone (``kfac_eigh_failures``), the step
    still uses the previous curvature, and once eigh works again factors are folded in."""
    update(learner_group, episodes())
    real_eigh = torch.linalg.eigh

    def failing_eigh(*args: Any, **kwargs: Any) -> Any:
        raise torch.linalg.LinAlgError("injected: eigh did not converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    failed = update(learner_group, episodes())
    assert failed["kfac_eigh_failures"] == 1
    assert failed["kfac_factor_updates"] == 1  # the failed update was undone
    assert failed["policy_steps"] == 1  # the step used the previous decomposition
    monkeypatch.setattr(torch.linalg, "eigh", real_eigh)
    recovered = update(learner_group, episodes())
    assert recovered["kfac_factor_updates"] == 2 and recovered["kfac_eigh_failures"] == 1
    assert_finite(weights(learner_group))
