"""KFCPO on real Ray: rollback, several learners, checkpoints, learning on a tiny env."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rllib_kfcpo import KFCPOConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV, ActionCostEnv
from tests.helpers import (
    assert_nested_equal,
    assert_same_weights,
    learner_weights,
    results,
    toy_episodes,
)

POLICY_KEYS = ("pi.", "log_std")


def toy_config(**training) -> KFCPOConfig:
    return (
        KFCPOConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=0, rollout_fragment_length=200)
        .training(train_batch_size=200, minibatch_size=100, num_epochs=2, cost_limit=5.0,
                  **training)
        .debugging(seed=0)
    )


def split(weights):
    policy = {k: v for k, v in weights.items() if k.startswith(POLICY_KEYS)}
    critics = {k: v for k, v in weights.items() if not k.startswith(POLICY_KEYS)}
    return policy, critics


def test_rollback_restores_policy_bit_for_bit_and_is_counted(ray_local):
    algo = toy_config(target_kl=1e-12).build_algo()  # every step leaves the trust region
    try:
        policy0, critics0 = split(learner_weights(algo)[0])
        result = algo.train()
        policy1, critics1 = split(learner_weights(algo)[0])
    finally:
        algo.stop()
    stats = result["learners"]["default_policy"]
    assert stats["kl_rollbacks"] == 1  # the first step is undone, then the policy freezes
    assert stats["policy_steps"] == 0
    assert stats["minibatches_after_rollback"] >= 3  # every later minibatch: critics only
    assert_same_weights(policy1, policy0)  # bit-for-bit
    assert any(not np.array_equal(critics0[k], critics1[k]) for k in critics0)


def test_steps_within_target_kl_are_kept(ray_local):
    algo = toy_config(target_kl=10.0).build_algo()
    try:
        policy0, _ = split(learner_weights(algo)[0])
        result = algo.train()
        policy1, _ = split(learner_weights(algo)[0])
    finally:
        algo.stop()
    stats = result["learners"]["default_policy"]
    assert stats["kl_rollbacks"] == 0 and stats["policy_steps"] >= 4
    assert any(not np.array_equal(policy0[k], policy1[k]) for k in policy0)
    # The quadratic KL bound holds for every step taken.
    assert 0 < stats["kl_quadratic_estimate"] <= 2e-3 * (1 + 1e-6)


def update_once(num_learners: int, use_kfac: bool, weights=None):
    config = (
        toy_config(use_kfac=use_kfac)
        .learners(num_learners=num_learners)
        .training(train_batch_size=200, minibatch_size=200 // max(num_learners, 1),
                  num_epochs=1, shuffle_batch_per_epoch=False)
    )
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    group = config.build_learner_group(spaces=spaces)
    if weights is not None:
        group.set_weights(weights)
    start = group.get_weights()
    # One minibatch = a learner's whole shard, bootstrap rows included (4 episodes of 50
    # steps + 1 bootstrap row each), so no real step is dropped by minibatch slicing.
    group.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 20.0},
                 num_epochs=1, minibatch_size=204 // max(num_learners, 1))
    per_learner = results(group.foreach_learner(
        lambda lr: {k: v.detach().cpu().numpy().copy() for k, v in
                    lr.module["default_policy"].unwrapped().state_dict().items()}
    )) if num_learners else [{k: v.detach().numpy().copy() for k, v in
                              group._learner.module["default_policy"].state_dict().items()}]
    group.shutdown()
    return start, per_learner


@pytest.mark.parametrize("use_kfac", [False, True])
def test_one_learner_vs_two_learners(ray_local, use_kfac):
    start, two = update_once(2, use_kfac)
    assert_same_weights(two[0], two[1])  # identical steps on both learners
    if use_kfac:
        return  # Fisher sampling noise differs with the shard size (see docs/algorithm.md)
    _, one = update_once(0, use_kfac, weights=start)
    # Same data, same start: the same update up to float summation order.
    assert_same_weights(one[0], two[0], atol=1e-5)


def test_checkpoint_restores_kfac_state_and_continues_identically(tmp_path):
    """A learner restored from a checkpoint takes exactly the step the original takes."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    config = toy_config().training(num_epochs=1, minibatch_size=100)
    original = config.build_learner(spaces=spaces)
    timesteps = {"safe_episode_cost_mean": 20.0}
    original.update(episodes=toy_episodes(), timesteps=timesteps, num_epochs=1,
                    minibatch_size=100)
    original.save_to_path(str(tmp_path))
    restored = config.build_learner(spaces=spaces)
    restored.restore_from_path(str(tmp_path))
    saved = original.get_safe_state()["kfac"]["default_policy"]
    loaded = restored.get_safe_state()["kfac"]["default_policy"]
    assert saved.keys() == loaded.keys()
    assert_nested_equal(saved, loaded)
    for learner in (original, restored):
        learner.update(episodes=toy_episodes(), timesteps=timesteps, num_epochs=1,
                       minibatch_size=100)
    assert_same_weights(
        {k: v.detach().numpy() for k, v in original.module["default_policy"].state_dict().items()},
        {k: v.detach().numpy() for k, v in restored.module["default_policy"].state_dict().items()},
    )


def test_kfcpo_keeps_cost_under_the_limit_on_the_action_cost_env(ray_local):
    """Cost 1[a > 0] per step, limit 10 of 50 steps: KFCPO must learn to respect it.

    At the limit (P(a > 0) = 0.2) the best return is about 0.2 * 1 - 0.8 * 1 = -0.6 per
    step, -30 per episode; the trivially safe policy a = -1 gets -50.
    """
    config = (
        KFCPOConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=1, rollout_fragment_length=500)
        .training(train_batch_size=1000, minibatch_size=500, num_epochs=4, cost_limit=10.0)
        .debugging(seed=1)
    )
    algo = config.build_algo()
    try:
        history = [algo.train()["env_runners"] for _ in range(20)]
    finally:
        algo.stop()
    costs = [h["episode_cost_mean"] for h in history]
    returns = [h["episode_return_mean"] for h in history]
    assert costs[0] > 15  # a fresh policy pays ~25
    assert np.mean(costs[-3:]) <= 10.0 * 1.2
    assert np.mean(returns[-3:]) > -40  # well above the trivially safe a = -1 (-50)


def test_rollback_retries_at_half_the_step_when_that_fits():
    """One minibatch step whose full size leaves target_kl but whose half fits."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    timesteps = {"safe_episode_cost_mean": 20.0}

    def one_step(**training):
        learner = toy_config(**training).training(num_epochs=1).build_learner(spaces=spaces)
        out = learner.update(episodes=toy_episodes(), timesteps=timesteps, num_epochs=1,
                             minibatch_size=204)["default_policy"]
        return {k: float(v.peek()) if hasattr(v, "peek") else v for k, v in out.items()}

    full = one_step(kl_rollback=False)
    assert full["policy_steps"] == 1 and full["kl_after_step"] > 0
    # KL grows about quadratically in the step: half a step gives ~1/4 of the KL.
    halved = one_step(target_kl=0.5 * full["kl_after_step"], rollback_backtracks=3)
    assert halved["kl_backtracks"] == 1 and halved["kl_rollbacks"] == 0
    assert halved["policy_steps"] == 1
    assert halved["step_size"] == full["step_size"] / 2
    assert halved["kl_after_step"] <= 0.5 * full["kl_after_step"]
    # Without retries the same target undoes the step and freezes the policy.
    stopped = one_step(target_kl=0.5 * full["kl_after_step"], rollback_backtracks=0)
    assert stopped["kl_rollbacks"] == 1 and stopped["policy_steps"] == 0
    assert stopped["kl_backtracks"] == 0


def test_margin_cost_is_an_ema_of_jc_over_iterations_and_is_checkpointed(tmp_path):
    """margin_cost_ema = 0.25: m_1 = Jc_1, m_k = 0.75 m_(k-1) + 0.25 Jc_k; an iteration
    without a new Jc (NaN) leaves it unchanged; the default 1.0 follows Jc exactly."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    smoothed = toy_config(margin_cost_ema=0.25).build_learner(spaces=spaces)
    plain = toy_config().build_learner(spaces=spaces)
    expected = None
    for jc in (40.0, 0.0, float("nan"), 8.0):
        for learner in (smoothed, plain):
            learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": jc},
                           num_epochs=1, minibatch_size=100)
        if jc == jc:  # not NaN
            expected = jc if expected is None else 0.75 * expected + 0.25 * jc
        assert smoothed.margin_cost == pytest.approx(expected)
    assert plain.margin_cost == 8.0
    assert smoothed.margin_cost == pytest.approx(0.75 * 0.75 * 40.0 + 0.25 * 8.0)
    smoothed.save_to_path(str(tmp_path))
    restored = toy_config(margin_cost_ema=0.25).build_learner(spaces=spaces)
    restored.restore_from_path(str(tmp_path))
    assert restored.margin_cost == smoothed.margin_cost


def test_margin_integral_sums_the_relative_excess_clamps_it_and_shifts_the_weights(tmp_path):
    """margin_integral_gain k: I_k = clip(I_(k-1) + k (offset - m_k), -1, 1); the weights see
    m - I. Checked against the sequence computed here, the logged w_c against the sigmoid of
    the shifted margin, and the state across a checkpoint."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    limit, gain = 5.0, 0.5  # margin_offset 0.1 (the default)
    learner = toy_config(margin_integral_gain=gain).build_learner(spaces=spaces)
    plain = toy_config().build_learner(spaces=spaces)
    expected = 0.0
    for jc in (10.0, 10.0, 10.0, float("nan"), 0.0):
        results = learner.update(episodes=toy_episodes(),
                                 timesteps={"safe_episode_cost_mean": jc},
                                 num_epochs=1, minibatch_size=100)
        plain_results = plain.update(episodes=toy_episodes(),
                                     timesteps={"safe_episode_cost_mean": jc},
                                     num_epochs=1, minibatch_size=100)
        if jc == jc:  # not NaN: one more term
            expected = min(max(expected + gain * (0.1 - (limit - jc) / limit), -1.0), 1.0)
        assert learner.margin_integral == pytest.approx(expected)
        margin = (limit - learner.margin_cost) / limit - expected
        w_cost = 1.0 / (1.0 + math.exp(-(0.1 - margin) / 0.1))
        logged = results["default_policy"]
        assert float(logged["weight_cost"]) == pytest.approx(w_cost, rel=1e-9, abs=1e-12)
        assert float(logged["margin_integral"]) == pytest.approx(expected)
        assert plain.margin_integral == 0.0
        assert float(plain_results["default_policy"]["margin_integral"]) == 0.0
    # 0.55 + 0.55 -> clamped at 1 after the second; then 1 + 0.5 * (0.1 - 1) = 0.55.
    assert learner.margin_integral == pytest.approx(0.55)
    learner.save_to_path(str(tmp_path))
    restored = toy_config(margin_integral_gain=gain).build_learner(spaces=spaces)
    restored.restore_from_path(str(tmp_path))
    assert restored.margin_integral == learner.margin_integral


@pytest.mark.parametrize("cap, init, unwind",
                         [(None, None, None), (0.5, None, None), (None, 4.0, None),
                          (None, 4.0, 0.5)])
def test_pid_margin_schedule_weights_follow_an_independent_pid_on_the_margin(tmp_path, cap,
                                                                            init, unwind):
    """margin_schedule='pid': once per iteration lambda = max(0, kp P + I + kd D) on the
    error Jc - d (1 - margin_offset) (OmniSafe CPPOPID's controller, recomputed here from its
    formulas), and the step's weights are (1, lambda) / (1 + lambda). The sigmoid's
    temperature plays no part; the controller's state survives a checkpoint. With
    margin_multiplier_max, I and lambda are both clamped to the cap (anti-windup); with
    margin_pid_init the integral starts there (None: OmniSafe's 1e-3); with
    margin_pid_unwind_gain that gain replaces ki while Jc is under the set-point."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    limit, offset, (kp, ki, kd) = 5.0, 0.2, (0.3, 0.05, 0.2)
    top = math.inf if cap is None else cap
    config = toy_config(margin_schedule="pid", margin_offset=offset,
                        margin_pid_gains=[kp, ki, kd], margin_temperature=123.0,
                        margin_multiplier_max=cap, margin_pid_init=init,
                        margin_pid_unwind_gain=unwind)
    learner = config.build_learner(spaces=spaces)
    setpoint = limit * (1.0 - offset)
    integral, p_term, smoothed, history = 1e-3 if init is None else init, 0.0, 0.0, [0.0]
    lam, capped = 0.0, 0
    for jc in (12.0, 9.0, float("nan"), 2.0, 0.0, 7.0):
        logged = learner.update(episodes=toy_episodes(),
                                timesteps={"safe_episode_cost_mean": jc},
                                num_epochs=1, minibatch_size=100)["default_policy"]
        if jc == jc:  # not NaN: one controller step (NaN: no new Jc, no step)
            gain = ki if unwind is None or jc >= setpoint else unwind
            integral = min(max(0.0, integral + gain * (jc - setpoint)), top)
            p_term = 0.95 * p_term + 0.05 * (jc - setpoint)
            smoothed = 0.95 * smoothed + 0.05 * jc
            lam = min(max(0.0, kp * p_term + integral + kd * max(0.0, smoothed - history[0])),
                      top)
            capped += lam == top
            history = (history + [smoothed])[-10:]
        assert learner.margin_pid.value == pytest.approx(lam, rel=1e-12)
        assert float(logged["margin_multiplier"]) == pytest.approx(lam, rel=1e-12)
        assert float(logged["weight_cost"]) == pytest.approx(lam / (1.0 + lam), rel=1e-9)
        assert float(logged["weight_reward"]) == pytest.approx(1.0 / (1.0 + lam), rel=1e-9)
    if init is None:
        assert 0.0 < lam < 1.0  # the run visits both sides of the set-point
    elif unwind is None:  # a cost-first start: 4 + 0.05 (8 + 5 - 2 - 4 + 3) in the integral
        assert integral == pytest.approx(4.5) and lam > 4.5
    else:  # 4 + 0.05 (8 + 5 + 3) - 0.5 (2 + 4): the two Jc under the set-point pull 3
        assert integral == pytest.approx(1.8)
    assert capped == (0 if cap is None else 4)  # the cap binds at Jc 12, 9, 2 and 7
    learner.save_to_path(str(tmp_path))
    restored = config.build_learner(spaces=spaces)
    restored.restore_from_path(str(tmp_path))
    assert restored.margin_pid.state_dict() == learner.margin_pid.state_dict()


def test_pid_margin_schedule_refuses_the_sigmoid_integral_term():
    with pytest.raises(ValueError, match="own integral term.*margin_integral_gain=0.0"):
        toy_config(margin_schedule="pid", margin_integral_gain=0.1).validate()


def test_margin_multiplier_max_is_refused_without_the_pid_schedule():
    with pytest.raises(ValueError, match="margin_multiplier_max=2.0.*set margin_schedule='pid'"):
        toy_config(margin_schedule="sigmoid", margin_multiplier_max=2.0).validate()


def test_margin_pid_unwind_gain_is_refused_without_the_pid_schedule():
    with pytest.raises(ValueError,
                       match="margin_pid_unwind_gain=0.5.*set margin_schedule='pid'"):
        toy_config(margin_schedule="sigmoid", margin_pid_unwind_gain=0.5).validate()


def test_margin_pid_init_is_refused_without_the_pid_schedule():
    with pytest.raises(ValueError, match="margin_pid_init=20.0.*set margin_schedule='pid'"):
        toy_config(margin_schedule="sigmoid", margin_pid_init=20.0).validate()


def test_margin_cost_ema_is_validated():
    with pytest.raises(ValueError, match=r"margin_cost_ema must be in \(0, 1\]"):
        toy_config(margin_cost_ema=0.0).validate()


def _one_update(jc: float, **training) -> dict:
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    learner = toy_config(**training).training(num_epochs=1).build_learner(spaces=spaces)
    out = learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": jc},
                         num_epochs=1, minibatch_size=204)["default_policy"]
    return {k: float(v.peek()) if hasattr(v, "peek") else v for k, v in out.items()}


@pytest.mark.parametrize("jc", [0.0, 5.0, 40.0])
def test_span_step_fills_the_trust_region_with_the_margin_requirement(jc):
    """step_rule='span': the kept step's quadratic KL is exactly trust_region_kl (the
    radius sizes it), and kappa = 2 w_c - 1 follows the margin weights."""
    out = _one_update(jc, step_rule="span", trust_region_kl=1e-3, kl_rollback=False)
    assert out["policy_steps"] == 1
    assert out["kl_quadratic_estimate"] == pytest.approx(1e-3, rel=1e-6)
    assert out["cost_requirement"] == pytest.approx(2 * out["weight_cost"] - 1, abs=1e-12)
    if jc > 10:  # far over the limit (5): almost pure cost descent, the requirement binds
        assert out["cost_requirement"] > 0.99 and out["cost_requirement_active"] == 1.0


def test_adaptive_trust_region_tracks_real_over_quadratic_kl():
    """After one kept step the ratio is exp(0.2 log(step_kl / quad_kl)) from 1.0, and the
    next update's quadratic budget is trust_region_kl divided by it."""
    out = _one_update(20.0, adaptive_trust_region=True, trust_region_kl=1e-3,
                      kl_rollback=False)
    expected = math.exp(0.2 * math.log(out["kl_of_step"] / out["kl_quadratic_estimate"]))
    assert out["kl_real_over_quadratic"] == pytest.approx(expected, rel=1e-6)
    # The first step of a learner used ratio 1: its quadratic KL is the plain budget.
    assert out["kl_quadratic_estimate"] == pytest.approx(1e-3, rel=1e-6)


@pytest.mark.parametrize("critic_minibatch_size,steps", [(None, 1), (50, 4), (1000, 1)])
def test_critic_minibatch_size_sets_the_critic_steps_per_policy_step(critic_minibatch_size,
                                                                     steps):
    """204 rows per policy minibatch: slices of 50 give 4 critic Adam steps (the last 4
    rows wait for the next epoch's shuffle), None or a size above the rows give one."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    learner = toy_config(critic_minibatch_size=critic_minibatch_size).training(
        num_epochs=1).build_learner(spaces=spaces)
    out = learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 1.0},
                         num_epochs=1, minibatch_size=204)["default_policy"]
    optimizer = learner.get_optimizer("default_policy", "critic")
    counts = {int(state["step"]) for state in optimizer.state.values()}
    assert counts == {steps}
    assert -1.0 <= float(out["vf_explained_var"].peek()) <= 1.0


def test_exact_step_metric_sizes_the_step_to_the_real_kl():
    """step_metric='exact': the quadratic KL of the span step is computed in the exact
    Fisher of span(n_r, n_c), so the real KL of the step matches it to second order (the
    K-FAC metric's ratio is whatever the Kronecker approximation makes it)."""
    out = _one_update(20.0, step_rule="span", step_metric="exact", trust_region_kl=1e-4,
                      kl_rollback=False)
    assert out["kl_quadratic_estimate"] == pytest.approx(1e-4, rel=1e-6)
    assert out["kl_of_step"] == pytest.approx(1e-4, rel=0.05)


def test_log_std_trust_region_moves_only_the_log_std_and_by_its_own_kl():
    """log_std_trust_region_kl k: one kept step moves the log-std by delta with
    |delta|^2 = k (its quadratic KL, Fisher 2 I), and the mean network exactly as the same
    update without the setting (same direction, same trust-region step)."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    moved = {}
    for kl in (None, 1e-4):
        learner = toy_config(log_std_trust_region_kl=kl, kl_rollback=False).training(
            num_epochs=1).build_learner(spaces=spaces)
        module = learner.module["default_policy"].unwrapped()

        def weights(module=module):
            return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}

        before = weights()
        out = learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 1.0},
                             num_epochs=1, minibatch_size=204)["default_policy"]
        assert float(out["policy_steps"].peek()) == 1
        after = weights()
        moved[kl] = {k: np.asarray(after[k]) - np.asarray(before[k]) for k in before
                     if k.startswith(POLICY_KEYS)}
        assert float(out["log_std_mean"].peek()) == pytest.approx(
            float(np.mean(np.asarray(after["log_std"]))), abs=1e-7)
    assert float(np.sum(moved[1e-4]["log_std"].astype(np.float64) ** 2)) == pytest.approx(
        1e-4, rel=1e-4)
    assert float(np.sum(moved[None]["log_std"].astype(np.float64) ** 2)) < 1e-4
    for key, change in moved[None].items():
        if key != "log_std":
            np.testing.assert_allclose(moved[1e-4][key], change, rtol=1e-5, atol=1e-8)


def test_direction_agreement_compares_consecutive_minibatches_of_an_iteration():
    """Two epochs over one 204-row minibatch with a negligible step: the second minibatch
    holds the same rows at (almost) the same weights, so each direction agrees with the
    first's (cosine ~1); a single minibatch has nothing to compare and logs no agreement."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    keys = ("reward_gradient_agreement", "cost_gradient_agreement",
            "reward_natural_agreement", "cost_natural_agreement")
    for epochs in (1, 2):
        learner = toy_config(trust_region_kl=1e-12, kl_rollback=False).training(
            num_epochs=epochs).build_learner(spaces=spaces)
        out = learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 1.0},
                             num_epochs=epochs, minibatch_size=204)["default_policy"]
        if epochs == 1:
            assert not any(key in out for key in keys)
        else:
            for key in keys:
                assert float(out[key].peek()) == pytest.approx(1.0, abs=1e-4), key


@pytest.mark.parametrize("averaging, jc, averaged", [
    ("cost", 40.0, True),     # w_c = 1: the step is -g_c, averaged
    ("both", 0.0, True),      # w_r = 1: the step is g_r, averaged
    ("cost", 0.0, False),     # w_r = 1: 'cost' leaves g_r as it is
])
def test_gradient_averaging_steps_along_the_mean_of_the_iterations_gradients(
        averaging, jc, averaged):
    """gradient_averaging: with plain gradients, the hard margin (one direction only), no
    projection and the step capped by max_step_size (so each step is max_step_size times
    the direction, exactly), two epochs over one minibatch move the policy by s g_1, then
    by s g_2 (plain) or s (g_1 + g_2) / 2 (averaged), where g_2 is the gradient at the
    weights after the first step. Three real updates give g_1 and g_2 independently of the
    averaging code: one epoch (s g_1) and two plain epochs (s g_1 + s g_2)."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}

    def moved(epochs: int, gradient_averaging: str) -> dict[str, np.ndarray]:
        learner = toy_config(use_kfac=False, margin_schedule="hard", projection="none",
                             trust_region_kl=1e3, max_step_size=0.5, kl_rollback=False,
                             gradient_averaging=gradient_averaging).training(
            num_epochs=epochs).build_learner(spaces=spaces)
        module = learner.module["default_policy"].unwrapped()
        before = {k: v.detach().double().numpy().copy() for k, v in module.state_dict().items()}
        out = learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": jc},
                             num_epochs=epochs, minibatch_size=204)["default_policy"]
        assert float(out["policy_steps"].peek()) == epochs
        assert float(out["step_size"].peek()) == pytest.approx(0.5)
        after = module.state_dict()
        return {k: after[k].detach().double().numpy() - before[k] for k in before
                if k.startswith(POLICY_KEYS)}

    first = moved(1, "none")                                # s g_1
    second = {k: v - first[k] for k, v in moved(2, "none").items()}  # s g_2
    got = {k: v - first[k] for k, v in moved(2, averaging).items()}
    expected = {k: 0.5 * (first[k] + second[k]) if averaged else second[k] for k in first}
    change = max(float(np.abs(second[k] - first[k]).max()) for k in first)
    assert change > 1e-6  # g_2 differs from g_1, so the two expectations differ
    for key in first:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=change * 1e-3,
                                   err_msg=key)


def test_direction_momentum_steps_along_the_emas_of_the_naturals(tmp_path, monkeypatch):
    """direction_momentum beta: from step 4 on, n_r and n_c are m <- beta m + (1 - beta) n
    (recomputed here from the naturals the real K-FAC preconditioner returned at each
    minibatch), the manipulation gets their Gram in the K-FAC metric, and the EMAs survive
    a checkpoint. beta 0 keeps no EMA."""
    import torch

    from rllib_kfcpo.algorithms.kfcpo import kfcpo_torch_learner as learner_module

    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    beta = 0.7
    config = toy_config(direction_momentum=beta, target_kl=10.0)  # no rollback: every step
    learner = config.build_learner(spaces=spaces)
    kfac = learner.kfac["default_policy"]
    naturals, grams = [], []
    real_naturals, real_combine = kfac.natural_directions, learner_module.combine_directions

    def record_naturals(grads):
        out = real_naturals(grads)
        naturals.append([[t.detach().clone() for t in n] for n in out[0]])
        return out

    def record_gram(gram, *args, **kwargs):  # with this step's factors A, G of each layer
        factors = [(b.A.double().clone(), b.G.double().clone()) for b in kfac.blocks]
        grams.append((torch.as_tensor(gram, dtype=torch.float64).clone(),
                      lambda u, v, f=factors: fisher_inner(f, u, v)))
        return real_combine(gram, *args, **kwargs)

    def fisher_inner(factors, u, v):
        """u^T F v written out: per layer vec([W b])^T (A kron G) vec([W' b']) =
        sum([W b] * G [W' b'] A), then the log-std's exact diagonal Fisher, 2."""
        total, i = 0.0, 0
        for a, g in factors:  # every layer of the policy net has a weight and a bias
            mat_u = torch.cat([u[i], u[i + 1].unsqueeze(1)], dim=1).double()
            mat_v = torch.cat([v[i], v[i + 1].unsqueeze(1)], dim=1).double()
            total += float((mat_u * (g @ mat_v @ a)).sum())
            i += 2
        (log_std_u,), (log_std_v,) = u[i:], v[i:]
        return total + float((2.0 * log_std_u.double() * log_std_v.double()).sum())

    monkeypatch.setattr(kfac, "natural_directions", record_naturals)
    monkeypatch.setattr(learner_module, "combine_directions", record_gram)
    for _ in range(3):
        learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 4.0},
                       num_epochs=2, minibatch_size=100)
    assert len(naturals) == len(grams) >= 6  # one natural pair and one Gram per step
    ema = None
    for new, (gram, inner) in zip(naturals, grams, strict=True):
        ema = new if ema is None else [
            [beta * m + (1 - beta) * t for m, t in zip(ms, n, strict=True)]
            for ms, n in zip(ema, new, strict=True)]
        # The Gram the manipulation got is the EMAs' in that step's K-FAC metric.
        want = torch.tensor([[inner(u, v) for v in ema] for u in ema], dtype=torch.float64)
        # float32 parameters: agreement to float32 rounding of the largest entry
        torch.testing.assert_close(gram, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    kept = learner.direction_momentum["default_policy"]
    for want, got in zip(ema, kept, strict=True):
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
    # The EMA is not the latest natural: the step follows the average.
    assert not torch.allclose(ema[0][0], naturals[-1][0][0])
    learner.save_to_path(str(tmp_path))
    restored = config.build_learner(spaces=spaces)
    restored.restore_from_path(str(tmp_path))
    for want, got in zip(kept, restored.direction_momentum["default_policy"], strict=True):
        for a, b in zip(want, got, strict=True):
            torch.testing.assert_close(b, a, rtol=0, atol=0)
    plain = toy_config().build_learner(spaces=spaces)
    plain.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 4.0},
                 num_epochs=1, minibatch_size=200)
    assert plain.direction_momentum == {}


@pytest.mark.parametrize("beta", [1.0, -0.1, float("nan")])
def test_direction_momentum_is_validated(beta):
    with pytest.raises(ValueError, match=r"direction_momentum must be in \[0, 1\)"):
        toy_config(direction_momentum=beta).validate()


def test_iteration_rows_keep_rows_by_index_and_hold_out_the_minibatch():
    """IterationRows: rows stored at their indices (buffers grow as indices arrive), and
    held_out(index) returns exactly the stored rows whose index is not in ``index``."""
    import torch

    from rllib_kfcpo.algorithms.kfcpo.kfcpo_torch_learner import IterationRows

    rows = IterationRows()
    assert rows.held_out(torch.arange(3)) is None  # nothing seen yet
    rows.add(torch.tensor([4, 1]), {"x": torch.tensor([[4.0], [1.0]]),
                                   "m": torch.tensor([True, False])})
    assert rows.held_out(torch.tensor([1, 4])) is None  # every stored row is in the minibatch
    rows.add(torch.tensor([7, 0]), {"x": torch.tensor([[7.0], [0.0]]),
                                   "m": torch.tensor([True, True])})
    held = rows.held_out(torch.tensor([1, 9]))  # 9: beyond the buffers, ignored
    assert held["x"].flatten().tolist() == [0.0, 4.0, 7.0]  # rows 0, 4, 7 in index order
    assert held["m"].tolist() == [True, True, True]
    rows.add(torch.tensor([4]), {"x": torch.tensor([[40.0]]), "m": torch.tensor([False])})
    held = rows.held_out(torch.tensor([0]))  # a row seen again keeps its newest values
    assert held["x"].flatten().tolist() == [1.0, 40.0, 7.0]


def _held_out_update(**training) -> dict:
    """One epoch of two minibatches (the toy batch's 204 rows, unshuffled)."""
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    learner = toy_config(rollback_kl_rows="held_out", **training).training(
        num_epochs=1).build_learner(spaces=spaces)
    out = learner.update(episodes=toy_episodes(), timesteps={"safe_episode_cost_mean": 20.0},
                         num_epochs=1, minibatch_size=102)["default_policy"]
    return {k: float(v.peek()) if hasattr(v, "peek") else v for k, v in out.items()}


def test_held_out_rollback_checks_the_second_minibatch_on_the_first_ones_rows():
    """rollback_kl_rows='held_out': the iteration's first step has no other rows and is
    checked on its own; the second is checked on the first minibatch's rows, where its
    KL differs from the KL on its own rows (logged beside it)."""
    out = _held_out_update(target_kl=10.0)
    assert out["policy_steps"] == 2
    assert out["kl_checked_on_held_out_rows"] == pytest.approx(0.5)  # mean of 0 and 1
    assert out["kl_of_step"] > 0 and out["kl_of_step_own_rows"] > 0
    assert out["kl_of_step"] != pytest.approx(out["kl_of_step_own_rows"], rel=1e-3)
    # With the improvement check the second step is kept or undone (never frozen); the
    # first, with no held-out rows, is kept.
    checked = _held_out_update(target_kl=10.0, held_out_improvement=True)
    assert checked["kl_rollbacks"] == 0
    assert checked["policy_steps"] + checked["held_out_rejections"] == 2
    assert checked["policy_steps"] >= 1
    assert (checked["held_out_rejections"] == 1) == (checked["held_out_surrogate_gain"] <= 0)
    with pytest.raises(ValueError, match="rollback_kl_rows must be one of"):
        toy_config(rollback_kl_rows="batch").validate()
    with pytest.raises(ValueError, match="held_out_improvement=True.*rollback_kl_rows"):
        toy_config(held_out_improvement=True).validate()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_held_out_improvement_keeps_a_gaining_step_and_undoes_a_losing_one(sign):
    """A step along +/- the gradient of w_r L_r - w_c L_c on the held-out rows (computed
    here by autograd): the gaining one is kept with the gain measured independently, the
    losing one is undone bit-for-bit without freezing the policy."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.evaluation.postprocessing import Postprocessing

    from rllib_kfcpo.safe.columns import COST_ADVANTAGES

    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    learner = toy_config(rollback_kl_rows="held_out", held_out_improvement=True,
                         target_kl=10.0).build_learner(spaces=spaces)
    module = learner.module["default_policy"].unwrapped()
    params = learner.kfac["default_policy"].params
    rng = torch.Generator().manual_seed(0)
    n = 64
    obs = torch.randn(n, *ActionCostEnv().observation_space.shape, generator=rng)
    with torch.no_grad():
        inputs = module.action_dist_inputs(obs)
    dist_cls = module.get_train_action_dist_cls()
    behaviour = dist_cls.from_logits(inputs)
    actions = behaviour.sample()
    rows = {Columns.OBS: obs, Columns.ACTION_DIST_INPUTS: inputs, Columns.ACTIONS: actions,
            Columns.ACTION_LOGP: behaviour.logp(actions).detach(),
            Postprocessing.ADVANTAGES: torch.randn(n, generator=rng),
            COST_ADVANTAGES: torch.randn(n, generator=rng)}
    w_r, w_c = 0.7, 0.3

    def objective() -> torch.Tensor:
        dist = dist_cls.from_logits(module.action_dist_inputs(obs))
        ratio = torch.exp(dist.logp(actions) - rows[Columns.ACTION_LOGP])
        return (ratio * (w_r * rows[Postprocessing.ADVANTAGES]
                         - w_c * rows[COST_ADVANTAGES])).mean()

    grads = torch.autograd.grad(objective(), params)
    direction = [sign * g for g in grads]
    before = [p.detach().clone() for p in params]
    with torch.no_grad():
        start = float(objective())
    kl, step, backtracks, step_kl, gain = learner._step_with_rollback(
        module, params, direction, 1e-3, rows, learner.config, behaviour,
        objective=(w_r, w_c), check_gain=True)
    assert backtracks == 0 and not learner.policy_frozen
    if sign > 0:
        assert step == 1e-3 and gain > 0 and step_kl > 0
        with torch.no_grad():
            assert gain == pytest.approx(float(objective()) - start, rel=1e-4)
    else:
        assert step == 0.0 and gain < 0 and step_kl == 0.0
        for p, saved in zip(params, before, strict=True):
            assert torch.equal(p.detach(), saved)


@pytest.mark.parametrize("use_kfac", [False, True])
def test_surrogate_clip_gives_the_gradients_of_ppos_clipped_surrogates(use_kfac):
    """surrogate_clip: g_r and g_c equal the autograd gradients of PPO's clipped surrogates
    min(r A, clip(r) A) (A = A_r, and -A_c for the cost), computed here independently, on
    rows whose behaviour policy differs from the current one (so rows clip on both sides)."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.evaluation.postprocessing import Postprocessing

    from rllib_kfcpo.safe.columns import COST_ADVANTAGES

    clip = 0.1
    spaces = {"default_policy": (ActionCostEnv().observation_space,
                                 ActionCostEnv().action_space)}
    learner = toy_config(surrogate_clip=clip, use_kfac=use_kfac).build_learner(spaces=spaces)
    module = learner.module["default_policy"].unwrapped()
    kfac = learner.kfac["default_policy"]
    rng = torch.Generator().manual_seed(1)
    n = 256
    obs = torch.randn(n, *ActionCostEnv().observation_space.shape, generator=rng)
    dist_cls = module.get_train_action_dist_cls()
    with torch.no_grad():
        current = module.action_dist_inputs(obs)
        old_inputs = current + 0.3 * torch.randn(current.shape, generator=rng)
    behaviour = dist_cls.from_logits(old_inputs)
    actions = behaviour.sample()
    batch = {Columns.OBS: obs, Columns.ACTION_DIST_INPUTS: old_inputs,
             Columns.ACTIONS: actions, Columns.ACTION_LOGP: behaviour.logp(actions).detach(),
             Postprocessing.ADVANTAGES: torch.randn(n, generator=rng),
             COST_ADVANTAGES: torch.randn(n, generator=rng)}

    def clipped_gradient(advantage: torch.Tensor) -> list[torch.Tensor]:
        ratio = torch.exp(dist_cls.from_logits(module.action_dist_inputs(obs)).logp(actions)
                          - batch[Columns.ACTION_LOGP])
        objective = torch.min(ratio * advantage,
                              torch.clamp(ratio, 1 - clip, 1 + clip) * advantage).mean()
        return list(torch.autograd.grad(objective, kfac.params, allow_unused=True))

    cfg = learner.config.get_config_for_module("default_policy")
    g_r, g_c, _, _ = learner._policy_gradients("default_policy", module, kfac,
                                               module.flat_obs(batch), batch, cfg)
    for ours, reference in [(g_r, clipped_gradient(batch[Postprocessing.ADVANTAGES])),
                            (g_c, clipped_gradient(-batch[COST_ADVANTAGES]))]:
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b,
                                       rtol=1e-4, atol=1e-6)
    # The clip acts: a fair share of rows is clipped for each objective, and without it the
    # gradients differ.
    shares = {k: float(v.peek()) for k, v in learner.metrics.reduce()[
        "default_policy"].items() if k.endswith("clipped_share")}
    assert 0.1 < shares["reward_clipped_share"] < 0.9
    assert 0.1 < shares["cost_clipped_share"] < 0.9
    cfg.surrogate_clip = None
    plain, _, _, _ = learner._policy_gradients("default_policy", module, kfac,
                                               module.flat_obs(batch), batch, cfg)
    assert not all(torch.allclose(a, b) for a, b in zip(plain, g_r, strict=True))
    with pytest.raises(ValueError, match="surrogate_clip"):
        toy_config(surrogate_clip=1.5).validate()
