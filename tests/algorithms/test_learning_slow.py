"""Long learning runs (skipped unless RUN_SLOW=1; `make test-slow` runs them)."""

from __future__ import annotations

import numpy as np
import pytest

from rllib_kfcpo import KFCPOConfig

pytestmark = pytest.mark.slow


def test_kfcpo_learns_half_cheetah_velocity_within_the_limit(ray_local):
    """200k steps of SafetyHalfCheetahVelocity-v1 (the settings of docs/benchmarks.md's
    learning run, seed 0; one env runner, so the run is deterministic): return climbs from
    about -250 to several hundred while the episode cost stays under the limit. About
    2 minutes on 2 idle cores."""
    config = (
        KFCPOConfig()
        .environment("SafetyHalfCheetahVelocity-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=4)
        .training(train_batch_size=8000, minibatch_size=2000, num_epochs=10,
                  cost_limit=25.0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        history = [algo.train()["env_runners"] for _ in range(25)]
    finally:
        algo.stop()
    returns = [h["episode_return_mean"] for h in history]
    costs = [h["episode_cost_mean"] for h in history]
    assert returns[0] < 0
    assert np.mean(returns[-3:]) > 200.0
    assert np.mean(costs[-3:]) <= 25.0
