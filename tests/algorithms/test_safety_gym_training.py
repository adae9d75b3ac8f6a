"""The safe algorithms train on a real Safety-Gymnasium task (KFCPO and PPOLag with 2 env
runners, the baselines with 0 and 2 learners), and the
GPU-learner configuration (run where a GPU exists, skipped cleanly elsewhere)."""

from __future__ import annotations

import math

import pytest
import torch

from rllib_kfcpo import CPOConfig, KFCPOConfig, PPOLagConfig, PPOPIDLagConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from tests.helpers import results

ENV = "SafetyPointGoal1-v0"


@pytest.mark.parametrize("config_cls", [KFCPOConfig, PPOLagConfig])
def test_trains_on_point_goal1_with_two_env_runners(ray_local, config_cls):
    config = (
        config_cls()
        .environment(ENV)
        .env_runners(num_env_runners=2, rollout_fragment_length=500)
        # One full 1000-step episode per runner and iteration.
        .training(train_batch_size=2000, minibatch_size=500, num_epochs=2, cost_limit=25.0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        history = [algo.train() for _ in range(3)]
    finally:
        algo.stop()
    steps = [h["num_env_steps_sampled_lifetime"] for h in history]
    assert steps == sorted(steps) and steps[-1] >= 3 * 2000
    runners = history[-1]["env_runners"]
    assert runners["num_episodes_lifetime"] >= 4  # 1000-step episodes really finished
    cost = runners["episode_cost_mean"]
    assert math.isfinite(cost) and 0.0 <= cost <= 1000.0  # at most 1 per step on this task
    assert math.isfinite(runners["episode_return_mean"])
    learner = history[-1]["learners"]["default_policy"]
    assert math.isfinite(learner["vf_loss"]) and math.isfinite(learner["cost_vf_loss"])


def _tiny_gpu_config(num_learners: int) -> KFCPOConfig:
    return (
        KFCPOConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=1, rollout_fragment_length=200)
        .learners(num_learners=num_learners, num_gpus_per_learner=1)
        .training(train_batch_size=400, minibatch_size=200, num_epochs=2, cost_limit=5.0)
        .debugging(seed=0)
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_learner_trains_on_cuda(ray_local):
    algo = _tiny_gpu_config(num_learners=0).build_algo()
    try:
        result = [algo.train() for _ in range(2)][-1]
        devices = {str(p.device) for p in
                   algo.learner_group._learner.module["default_policy"].parameters()}
    finally:
        algo.stop()
    assert all(d.startswith("cuda") for d in devices), devices
    stats = result["learners"]["default_policy"]
    assert stats["policy_steps"] >= 1 and math.isfinite(stats["kl_after_step"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")
def test_two_gpu_learners_stay_identical(ray_local):
    algo = _tiny_gpu_config(num_learners=2).build_algo()
    try:
        algo.train()
        weights = results(algo.learner_group.foreach_learner(
            lambda lr: {k: v.detach().cpu().numpy() for k, v in
                        lr.module["default_policy"].unwrapped().state_dict().items()}))
    finally:
        algo.stop()
    for key in weights[0]:
        assert (weights[0][key] == weights[1][key]).all(), key


@pytest.mark.parametrize("num_learners", [0, 2])
@pytest.mark.parametrize("config_cls", [CPOConfig, PPOPIDLagConfig])
def test_baselines_train_on_point_goal1(ray_local, config_cls, num_learners):
    """CPO and PPO-PID-Lagrangian: a 2-iteration smoke on SafetyPointGoal1-v0 (50-step
    episodes so they finish) with a local learner and with 2 learners (gloo)."""
    config = (
        config_cls()
        .environment(ENV, env_config={"max_episode_steps": 50})
        .env_runners(num_env_runners=0, rollout_fragment_length=200)
        .learners(num_learners=num_learners)
        .training(train_batch_size=400, minibatch_size=100, num_epochs=1, cost_limit=25.0)
        .debugging(seed=0)
    )
    algo = config.build_algo()
    try:
        history = [algo.train() for _ in range(2)]
        weights = results(algo.learner_group.foreach_learner(
            lambda lr: lr.module["default_policy"].unwrapped().pi[0].weight.detach().clone()))
    finally:
        algo.stop()
    runners = history[-1]["env_runners"]
    assert runners["num_episodes_lifetime"] >= 8
    assert math.isfinite(runners["episode_cost_mean"])
    assert math.isfinite(runners["episode_return_mean"])
    learner = history[-1]["learners"]["default_policy"]
    assert math.isfinite(learner["vf_loss"]) and math.isfinite(learner["cost_vf_loss"])
    assert len(weights) == max(num_learners, 1)
    assert all(bool((w == weights[0]).all()) for w in weights)
