"""The per-step cost reaches the train batch and the episode cost metric exactly."""

from __future__ import annotations

import numpy as np
import pytest
from ray.rllib.core.columns import Columns

from rllib_kfcpo import PPOLagConfig
from rllib_kfcpo.envs.toy import KNOWN_COST_ENV, known_cost
from rllib_kfcpo.safe.columns import (
    COSTS,
    EPISODE_COST_MAX,
    EPISODE_COST_MEAN,
    EPISODE_COST_WINDOW_MEAN,
)

EPISODE_LEN = 13  # not a divisor of the fragment length: episodes cross chunk borders


def config(**env_config):
    return (
        PPOLagConfig()
        .environment(KNOWN_COST_ENV, env_config={"episode_len": EPISODE_LEN, **env_config})
        .env_runners(num_env_runners=2, rollout_fragment_length=20)
        .training(train_batch_size=80, minibatch_size=40, num_epochs=1)
    )


@pytest.mark.parametrize("terminate", [False, True])
def test_episode_cost_mean_is_the_exact_episodic_sum(ray_local, terminate):
    algo = config(terminate=terminate).build_algo()
    try:
        for _ in range(3):
            result = algo.train()
    finally:
        algo.stop()
    expected = sum(known_cost(t) for t in range(EPISODE_LEN))
    runners = result["env_runners"]
    assert runners[EPISODE_COST_MEAN] == pytest.approx(expected, abs=1e-9)
    assert runners[EPISODE_COST_MAX] == pytest.approx(expected, abs=1e-9)
    # The learner receives the same number for its constraint logic.
    seen = result["learners"]["default_policy"]["episode_cost_seen_by_learner"]
    assert seen == pytest.approx(expected, abs=1e-9)


def test_cost_column_matches_what_the_env_emitted(ray_local):
    cfg = config().env_runners(num_env_runners=0)
    algo = cfg.build_algo()
    try:
        episodes = algo.env_runner.sample(num_timesteps=50, random_actions=True)
        learner = algo.learner_group._learner
        emitted = []
        for ep in episodes:
            # The env's own record: step t of the chunk emitted infos[t + 1]["cost"].
            emitted.extend(info["cost"] for info in ep.get_infos()[1:])
            # And it is the env's schedule: t is the step index within the episode.
            start = ep.t_started
            assert [info["cost"] for info in ep.get_infos()[1:]] == [
                known_cost(t) for t in range(start, start + len(ep))
            ]
        batch = learner._learner_connector(rl_module=learner.module, episodes=episodes,
                                           batch={}, shared_data={})["default_policy"]
        mask = batch[Columns.LOSS_MASK].numpy().astype(bool)
        np.testing.assert_array_equal(batch[COSTS].numpy()[mask], np.array(emitted))
    finally:
        algo.stop()


def _indexed_cost_config(window: int) -> PPOLagConfig:
    length = 10
    return (
        PPOLagConfig()
        .environment(KNOWN_COST_ENV, env_config={"episode_len": length,
                                                 "cost_per_episode_index": True})
        .env_runners(num_env_runners=1, rollout_fragment_length=2 * length)
        .training(train_batch_size=2 * length, minibatch_size=length, num_epochs=1,
                  cost_window_episodes=window)
    )


@pytest.mark.parametrize("window", [0, 3, 100])
def test_jc_windows(ray_local, window, tmp_path):
    """Episode k costs k; two whole episodes per iteration: iteration i (1-based) ends
    episodes 2i-2 and 2i-1. Measured on RLlib 2.60: its windowed metric on the driver
    (window = metrics_num_episodes_for_smoothing = 100) is the mean over the episodes
    that ended in the latest iteration, 2i-1.5, not over the last 100 episodes. The
    learners' Jc is that number with ``cost_window_episodes=0``, and otherwise the mean of
    the last N finished episodes (OmniSafe's Jc): i-0.5 for N=100 (all so far here), and
    for N=3 the mean of episodes 2i-3..2i-1, 2i-2. The window survives a checkpoint."""
    algo = _indexed_cost_config(window).build_algo()
    try:
        for i in range(1, 5):
            result = algo.train()
            seen = result["learners"]["default_policy"]["episode_cost_seen_by_learner"]
            assert result["env_runners"][EPISODE_COST_MEAN] == pytest.approx(2 * i - 1.5,
                                                                             abs=1e-6), i
            expected = {0: 2 * i - 1.5, 3: (2 * i - 2 if i > 1 else 0.5), 100: i - 0.5}
            assert seen == pytest.approx(expected[window], abs=1e-6), i
            if window:
                assert result["env_runners"][EPISODE_COST_WINDOW_MEAN] == pytest.approx(
                    expected[window], abs=1e-6)
        algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    if window:
        algo = _indexed_cost_config(window).build_algo()
        try:
            algo.restore_from_path(str(tmp_path / "ckpt"))
            assert list(algo.cost_window.costs) == pytest.approx(
                list(range(8))[-window:], abs=1e-9)
        finally:
            algo.stop()
