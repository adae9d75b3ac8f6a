"""PPO-Lagrangian: several learners, checkpoint/restore/continue, on real Ray."""

from __future__ import annotations

import numpy as np
from ray.rllib.algorithms.algorithm import Algorithm

from rllib_kfcpo import PPOLagConfig
from tests.helpers import (
    assert_nested_equal,
    assert_same_weights,
    filter_state,
    learner_weights,
    results,
    small_toy_config,
)


def small_config(**learners) -> PPOLagConfig:
    return small_toy_config(PPOLagConfig, num_env_runners=2, rollout_fragment_length=100,
                            **learners)


def test_two_learners_hold_identical_weights_and_multiplier(ray_local):
    algo = small_config(num_learners=2).build_algo()
    try:
        before = learner_weights(algo)
        for _ in range(2):
            algo.train()
        weights = learner_weights(algo)
        lams = results(algo.learner_group.foreach_learner(lambda lr: lr.lagrange.value))
    finally:
        algo.stop()
    assert len(weights) == 2
    assert_same_weights(weights[0], weights[1])
    assert not np.array_equal(weights[0]["pi.0.weight"], before[0]["pi.0.weight"])
    assert lams[0] == lams[1] > 1e-3  # cost (~25) > limit (5): lambda grew


def test_checkpoint_restore_and_continue(ray_local, tmp_path):
    algo = small_config().build_algo()
    try:
        for _ in range(2):
            algo.train()
        weights = learner_weights(algo)[0]
        lam = results(algo.learner_group.foreach_learner(lambda lr: lr.lagrange.value))[0]
        filt = filter_state(algo)
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()

    restored = Algorithm.from_checkpoint(str(tmp_path))
    try:
        assert_same_weights(learner_weights(restored)[0], weights)
        lam2 = results(restored.learner_group.foreach_learner(lambda lr: lr.lagrange.value))[0]
        assert lam2 == lam
        restored_filter = filter_state(restored)
        assert_nested_equal(restored_filter, filt)
        result = restored.train()
        assert result["training_iteration"] == 3
        assert result["learners"]["default_policy"]["lagrange_multiplier"] > lam
    finally:
        restored.stop()
