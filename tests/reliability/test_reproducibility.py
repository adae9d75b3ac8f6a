"""A fixed seed with one env runner gives identical first-iteration metrics and weights.

What is and is not deterministic with several env runners is documented in
docs/reliability.md (section "Reproducibility").
"""

from __future__ import annotations

import math

import numpy as np

from rllib_kfcpo import KFCPOConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from tests.helpers import learner_weights

ENV_KEYS = ("episode_return_mean", "episode_cost_mean", "num_env_steps_sampled",
            "num_episodes")
LEARNER_KEYS = ("vf_loss", "cost_vf_loss", "policy_loss", "step_size", "direction_dFd",
                "kl_after_step", "weight_reward", "weight_cost", "kfac_cond_A_max")


def first_iteration(seed: int) -> tuple[dict, dict]:
    config = (
        KFCPOConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=1, rollout_fragment_length=200)
        .training(train_batch_size=200, minibatch_size=100, num_epochs=2, cost_limit=5.0)
        .debugging(seed=seed)
    )
    algo = config.build_algo()
    try:
        result = algo.train()
        weights = learner_weights(algo)[0]
    finally:
        algo.stop()
    env = {k: result["env_runners"][k] for k in ENV_KEYS}
    learner = {k: result["learners"]["default_policy"][k] for k in LEARNER_KEYS}
    return {**env, **learner}, weights


def test_same_seed_one_runner_gives_identical_first_iteration(ray_local):
    metrics_a, weights_a = first_iteration(seed=3)
    metrics_b, weights_b = first_iteration(seed=3)
    assert all(math.isfinite(v) for v in metrics_a.values()), metrics_a
    assert metrics_a == metrics_b  # exactly equal, not approximately
    for key in weights_a:
        np.testing.assert_array_equal(weights_a[key], weights_b[key], err_msg=key)
