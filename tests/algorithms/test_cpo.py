"""CPO on real Ray: identical learners, the step it takes, checkpoint/restore/continue."""

from __future__ import annotations

import math

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm

from rllib_kfcpo import CPOConfig
from rllib_kfcpo.algorithms.cpo import metrics as M
from tests.helpers import (
    assert_same_weights,
    learner_weights,
    results,
    small_toy_config,
    toy_episodes,
)


def small_config(**learners) -> CPOConfig:
    return small_toy_config(CPOConfig, **learners)


def test_two_learners_take_the_same_step(ray_local):
    algo = small_config(num_learners=2).build_algo()
    try:
        before = learner_weights(algo)
        assert_same_weights(before[0], before[1])  # rank 0's weights broadcast at build
        history = [algo.train() for _ in range(2)]
        weights = learner_weights(algo)
    finally:
        algo.stop()
    assert_same_weights(weights[0], weights[1])  # policy AND critics
    assert not np.array_equal(weights[0]["pi.0.weight"], before[0]["pi.0.weight"])
    stats = history[-1]["learners"]["default_policy"]
    # Cost ~25 per episode against a limit of 5: the old policy is infeasible, so the
    # step is a (feasible or infeasible) recovery step, within the KL bound.
    assert stats[M.OPTIM_CASE] in (0.0, 1.0)
    assert stats[M.CONSTRAINT_VALUE] > 0
    assert 1 <= stats[M.ACCEPTED_AT] <= 20
    assert 0 < stats[M.KL_AFTER_STEP] <= 0.01
    assert stats[M.COST_CHANGE] <= 0.0  # the step did not raise the cost surrogate


def test_line_search_keeps_the_kl_within_the_target(ray_local):
    """One local learner update on fixed episodes, for two trust regions: the kept step's
    real KL is within target_kl, and the step shrinks with the target."""
    episodes = toy_episodes(n=4, length=50)
    spaces = {"default_policy": (episodes[0].observation_space, episodes[0].action_space)}
    timesteps = {"safe_episode_cost_mean": 25.0, "safe_episode_len_mean": 50.0}
    kls = {}
    for target in (1e-2, 1e-4):
        learner = small_config().training(target_kl=target).build_learner(spaces=spaces)
        module = learner.module["default_policy"].unwrapped()
        before = [p.detach().clone() for p in module.policy_parameters()]
        stats = learner.update(episodes=episodes, timesteps=timesteps, num_epochs=1)
        stats = stats["default_policy"]
        assert stats[M.ACCEPTED_AT].peek() >= 1
        kls[target] = stats[M.KL_AFTER_STEP].peek()
        assert 0 < kls[target] <= target
        moved = sum(float((a - b).pow(2).sum()) for a, b in
                    zip(module.policy_parameters(), before, strict=True))
        assert moved > 0
        assert math.isfinite(stats["vf_loss"].peek())
    # KL ~ quadratic in the step: a 100x smaller trust region, a ~100x smaller KL.
    assert 20 < kls[1e-2] / kls[1e-4] < 500


def test_checkpoint_restore_and_continue(ray_local, tmp_path):
    algo = small_config().build_algo()
    try:
        for _ in range(2):
            algo.train()
        weights = learner_weights(algo)[0]
        state = results(algo.learner_group.foreach_learner(
            lambda lr: (lr.episode_cost, lr.episode_len)))[0]
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()
    assert all(math.isfinite(v) for v in state)

    restored = Algorithm.from_checkpoint(str(tmp_path))
    try:
        assert type(restored).__name__ == "CPO"
        assert_same_weights(learner_weights(restored)[0], weights)
        assert results(restored.learner_group.foreach_learner(
            lambda lr: (lr.episode_cost, lr.episode_len)))[0] == state
        result = restored.train()
        assert result["training_iteration"] == 3
    finally:
        restored.stop()
