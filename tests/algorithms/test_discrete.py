"""Discrete action spaces: the categorical module, KFCPO's learner on it, and every safe
algorithm training on a Discrete(2) env with a cost in info (CartPoleCost-v0), on real Ray."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical

from rllib_kfcpo import CPOConfig, KFCPOConfig, PPOLagConfig, PPOPIDLagConfig
from rllib_kfcpo.action_spaces import UnsupportedActionSpaceError, action_kind
from rllib_kfcpo.envs.toy import CARTPOLE_COST_ENV, CartPoleCostEnv
from rllib_kfcpo.modules import SafeActorCriticTorchModule
from tests.helpers import assert_same_weights, cartpole_episodes, learner_weights, results

ENV = CartPoleCostEnv()
SPACES = {"default_policy": (ENV.observation_space, ENV.action_space)}
OBS_SPACE = ENV.observation_space


def test_module_builds_a_categorical_policy_without_log_std():
    module = SafeActorCriticTorchModule(observation_space=OBS_SPACE,
                                        action_space=gym.spaces.Discrete(3), model_config={})
    assert module.is_discrete and module.log_std is None
    assert module.get_inference_action_dist_cls() is TorchCategorical
    assert module.get_train_action_dist_cls() is TorchCategorical
    assert module.policy_parameters() == list(module.pi.parameters())
    assert not any("log_std" in name for name in module.state_dict())
    logits = module.action_dist_inputs(torch.zeros(5, 4))
    assert logits.shape == (5, 3)
    # The Box module is unchanged: mean and log-std inputs of a diagonal Gaussian.
    box = SafeActorCriticTorchModule(observation_space=OBS_SPACE,
                                     action_space=gym.spaces.Box(-1, 1, (2,), np.float32),
                                     model_config={})
    assert not box.is_discrete and box.log_std is not None
    assert box.action_dist_inputs(torch.zeros(5, 4)).shape == (5, 4)


@pytest.mark.parametrize("space", [
    gym.spaces.MultiDiscrete([2, 3]),
    gym.spaces.Discrete(3, start=1),
    gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(2))),
    gym.spaces.MultiBinary(3),
])
def test_other_spaces_are_refused_by_the_module_with_one_clear_message(space):
    with pytest.raises(UnsupportedActionSpaceError) as info:
        SafeActorCriticTorchModule(observation_space=OBS_SPACE, action_space=space,
                                   model_config={})
    message = str(info.value)
    assert str(space) in message and "supported: Box" in message
    assert "Discrete starting at 0" in message
    assert action_kind(gym.spaces.Discrete(2)) == "discrete"
    assert action_kind(gym.spaces.Box(-1, 1, (1,))) == "box"


def kfcpo_learner(**training):
    config = (KFCPOConfig().environment(CARTPOLE_COST_ENV)
              .training(train_batch_size=200, minibatch_size=100, num_epochs=1,
                        cost_limit=5.0, **training).debugging(seed=0))
    return config.build_learner(spaces=SPACES)


def one_update(learner, jc: float = 20.0) -> dict:
    episodes = cartpole_episodes(8)
    rows = sum(len(e) + 1 for e in episodes)  # one bootstrap row per episode
    out = learner.update(episodes=episodes, timesteps={"safe_episode_cost_mean": jc},
                         num_epochs=1, minibatch_size=rows)["default_policy"]
    return {k: float(v.peek()) if hasattr(v, "peek") else v for k, v in out.items()}


def test_kfcpo_learner_takes_a_natural_step_on_a_categorical_policy():
    learner = kfcpo_learner(trust_region_kl=1e-3, kl_rollback=False)
    kfac = learner.kfac["default_policy"]
    assert kfac.diagonal == []  # no log-std block: the logits network's layers only
    module = learner.module["default_policy"].unwrapped()
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    out = one_update(learner)
    assert out["policy_steps"] == 1 and out["kfac_factor_updates"] == 1
    # The K-FAC quadratic KL is the trust region; the real KL of the step is close to it
    # (a Kronecker approximation of the categorical Fisher, not the exact one).
    assert out["kl_quadratic_estimate"] == pytest.approx(1e-3, rel=1e-6)
    assert 0.2e-3 < out["kl_of_step"] < 5e-3
    assert all(math.isfinite(v) for v in out.values() if isinstance(v, float))
    after = module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("pi."))


def test_exact_step_metric_sizes_a_categorical_step_to_the_real_kl():
    """step_metric='exact' with a categorical policy: the span step's quadratic KL is in
    the exact softmax Fisher, so the real KL of the step matches it to second order."""
    out = one_update(kfcpo_learner(step_rule="span", step_metric="exact",
                                   trust_region_kl=1e-4, kl_rollback=False))
    assert out["policy_steps"] == 1
    assert out["kl_quadratic_estimate"] == pytest.approx(1e-4, rel=1e-6)
    assert out["kl_of_step"] == pytest.approx(1e-4, rel=0.05)


# --- Real Ray -------------------------------------------------------------------------------
def small_config(config_cls, **learners):
    return (config_cls().environment(CARTPOLE_COST_ENV)
            .env_runners(num_env_runners=0, rollout_fragment_length=200)
            .learners(**learners)
            .training(train_batch_size=400, minibatch_size=200, num_epochs=2, cost_limit=5.0)
            .rl_module(model_config={"fcnet_hiddens": [16, 16]})
            .debugging(seed=0))


@pytest.mark.parametrize("config_cls", [KFCPOConfig, PPOLagConfig, PPOPIDLagConfig,
                                        CPOConfig])
def test_every_safe_algorithm_trains_on_a_discrete_env(ray_local, config_cls):
    algo = small_config(config_cls).build_algo()
    try:
        before = learner_weights(algo)[0]
        result = algo.train()
        after = learner_weights(algo)[0]
    finally:
        algo.stop()
    runners = result["env_runners"]
    assert runners["num_env_steps_sampled"] >= 400
    assert math.isfinite(runners["episode_return_mean"])  # ~22 steps: episodes do end
    assert math.isfinite(runners["episode_cost_mean"]) and runners["episode_cost_mean"] >= 0
    stats = result["learners"]["default_policy"]
    assert math.isfinite(stats["cost_vf_loss"]) and math.isfinite(stats["entropy"])
    assert 0 < stats["entropy"] <= math.log(2) + 1e-6  # a 2-action categorical
    assert "log_std" not in after
    assert not np.array_equal(before["pi.0.weight"], after["pi.0.weight"])


def test_kfcpo_two_learners_take_identical_steps_on_a_discrete_env(ray_local):
    """Two CPU learners (gloo): identical categorical policies after two iterations."""
    algo = small_config(KFCPOConfig, num_learners=2).build_algo()
    try:
        start = learner_weights(algo)
        for _ in range(2):
            result = algo.train()
        weights = learner_weights(algo)
        steps = results(algo.learner_group.foreach_learner(
            lambda lr: lr.kfac["default_policy"].num_updates))
    finally:
        algo.stop()
    assert len(weights) == 2
    assert_same_weights(weights[0], weights[1])
    assert not np.array_equal(weights[0]["pi.0.weight"], start[0]["pi.0.weight"])
    assert steps[0] == steps[1] > 0
    assert result["learners"]["default_policy"]["policy_steps"] > 0
