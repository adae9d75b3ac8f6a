"""Reward and cost GAE in the learner pipeline vs a brute-force reference."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.evaluation.postprocessing import Postprocessing

from rllib_kfcpo import PPOLagConfig
from rllib_kfcpo.safe.columns import COST_ADVANTAGES, COST_VALUE_TARGETS, COSTS

OBS = gym.spaces.Box(-10, 10, (3,), np.float32)
ACT = gym.spaces.Box(-1, 1, (2,), np.float32)
GAMMA, LAM, CGAMMA, CLAM = 0.97, 0.9, 0.95, 0.8


def make_episode(rng: np.random.Generator, n: int, *, terminated: bool) -> SingleAgentEpisode:
    obs = [rng.normal(size=3).astype(np.float32) for _ in range(n + 1)]
    infos = [{}] + [{"cost": float(rng.integers(0, 3))} for _ in range(n)]
    return SingleAgentEpisode(
        observation_space=OBS,
        action_space=ACT,
        observations=obs,
        actions=[rng.uniform(-1, 1, size=2).astype(np.float32) for _ in range(n)],
        rewards=[float(r) for r in rng.normal(size=n)],
        infos=infos,
        terminated=terminated,
        truncated=not terminated,
        extra_model_outputs={
            Columns.ACTION_LOGP: [np.float32(0.0)] * n,
            Columns.ACTION_DIST_INPUTS: [np.zeros(4, np.float32)] * n,
        },
        len_lookback_buffer=0,
    )


def brute_force_gae(values, next_values, rewards, terminated, gamma, lam):
    """A_t = sum_k (gamma lam)^k delta_{t+k}; V(s_T) bootstraps unless terminated."""
    n = len(rewards)
    adv = np.zeros(n)
    for t in range(n):
        total = 0.0
        for k in range(t, n):
            nv = 0.0 if (k == n - 1 and terminated) else next_values[k]
            delta = rewards[k] + gamma * nv - values[k]
            total += (gamma * lam) ** (k - t) * delta
        adv[t] = total
    return adv


def _learner(cost_advantages: str = "standardize"):
    config = (
        PPOLagConfig()
        .training(gamma=GAMMA, lambda_=LAM, cost_gamma=CGAMMA, cost_lambda=CLAM,
                  cost_advantages=cost_advantages)
    )
    return config.build_learner(spaces={"default_policy": (OBS, ACT)})


@pytest.fixture(scope="module")
def learner():
    return _learner()


@pytest.mark.parametrize("cost_advantages", ["standardize", "center"])
def test_reward_and_cost_gae_match_brute_force(cost_advantages):
    learner = _learner(cost_advantages)
    rng = np.random.default_rng(0)
    episodes = [make_episode(rng, 6, terminated=True), make_episode(rng, 9, terminated=False),
                make_episode(rng, 4, terminated=False)]
    # Reference data, taken before the pipeline elongates the episodes.
    refs = []
    for ep in episodes:
        obs = np.stack(ep.get_observations())
        costs = [info["cost"] for info in ep.get_infos()[1:]]
        refs.append((obs, np.array(ep.get_rewards()), np.array(costs), ep.is_terminated))

    batch = learner._learner_connector(rl_module=learner.module, episodes=episodes,
                                       batch={}, shared_data={})
    b = {k: v.detach().numpy() for k, v in batch["default_policy"].items()
         if isinstance(v, torch.Tensor)}
    mask = b[Columns.LOSS_MASK].astype(bool)

    module = learner.module["default_policy"]
    adv, cadv, targets, ctargets, costs = [], [], [], [], []
    for obs, rewards, cost, terminated in refs:
        with torch.no_grad():
            o = torch.as_tensor(obs)
            v = module.compute_values({Columns.OBS: o}).numpy()
            cv = module.compute_cost_values({Columns.OBS: o}).numpy()
        a = brute_force_gae(v[:-1], v[1:], rewards, terminated, GAMMA, LAM)
        ca = brute_force_gae(cv[:-1], cv[1:], cost, terminated, CGAMMA, CLAM)
        adv.append(a)
        cadv.append(ca)
        targets.append(a + v[:-1])
        ctargets.append(ca + cv[:-1])
        costs.append(cost)
    adv, cadv = np.concatenate(adv), np.concatenate(cadv)
    np.testing.assert_allclose(b[COSTS][mask], np.concatenate(costs))
    assert np.all(b[COSTS][~mask] == 0.0), "bootstrap steps must carry cost 0"
    np.testing.assert_allclose(b[Postprocessing.VALUE_TARGETS][mask], np.concatenate(targets),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b[COST_VALUE_TARGETS][mask], np.concatenate(ctargets),
                               rtol=1e-5, atol=1e-5)
    # Reward advantages standardised, cost advantages standardised (OmniSafe) or centred,
    # over the real steps.
    np.testing.assert_allclose(b[Postprocessing.ADVANTAGES][mask],
                               (adv - adv.mean()) / adv.std(), rtol=1e-4, atol=1e-4)
    scale = cadv.std() if cost_advantages == "standardize" else 1.0
    np.testing.assert_allclose(b[COST_ADVANTAGES][mask], (cadv - cadv.mean()) / scale,
                               rtol=1e-4, atol=1e-4)


def test_missing_cost_in_batch_is_one_clear_error(learner):
    rng = np.random.default_rng(1)
    episode = make_episode(rng, 3, terminated=True)
    episode.infos[2] = {"something_else": 1}
    with pytest.raises(ValueError, match=r"info\['cost'\]"):
        learner._learner_connector(rl_module=learner.module, episodes=[episode],
                                   batch={}, shared_data={})
