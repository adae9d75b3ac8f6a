"""PPO-PID-Lagrangian on real Ray: identical learners, PID state through a checkpoint."""

from __future__ import annotations

from ray.rllib.algorithms.algorithm import Algorithm

from rllib_kfcpo import PPOPIDLagConfig
from rllib_kfcpo.safe.pid_lagrange import PIDLagrangian
from tests.helpers import assert_same_weights, learner_weights, results, small_toy_config


def small_config(**learners) -> PPOPIDLagConfig:
    return small_toy_config(PPOPIDLagConfig, **learners)


def pid_states(algo) -> list[dict]:
    return results(algo.learner_group.foreach_learner(lambda lr: lr.lagrange.state_dict()))


def test_two_learners_hold_identical_weights_and_pid_state(ray_local):
    algo = small_config(num_learners=2).build_algo()
    try:
        history = [algo.train() for _ in range(2)]
        weights = learner_weights(algo)
        states = pid_states(algo)
    finally:
        algo.stop()
    assert_same_weights(weights[0], weights[1])
    assert states[0] == states[1]
    # Cost ~25 per episode vs limit 5: the PID output is positive and is what is logged.
    assert states[0]["value"] > 0
    assert history[-1]["learners"]["default_policy"]["lagrange_multiplier"] == \
        states[0]["value"]


def test_pid_follows_the_jc_the_learner_saw(ray_local):
    """Replaying the Jc values the learner received through a fresh PIDLagrangian with the
    same gains gives the learner's multiplier: the learner runs exactly one PID step per
    iteration, before the policy update."""
    algo = small_config().build_algo()
    try:
        seen, lams = [], []
        for _ in range(3):
            stats = algo.train()["learners"]["default_policy"]
            seen.append(stats["episode_cost_seen_by_learner"])
            lams.append(stats["lagrange_multiplier"])
    finally:
        algo.stop()
    cfg = small_config()
    replay = PIDLagrangian(kp=cfg.pid_kp, ki=cfg.pid_ki, kd=cfg.pid_kd,
                           d_delay=cfg.pid_d_delay, init=cfg.lagrangian_multiplier_init)
    assert [replay.update(jc, 5.0) for jc in seen] == lams


def test_checkpoint_restore_and_continue(ray_local, tmp_path):
    algo = small_config().build_algo()
    try:
        for _ in range(3):
            algo.train()
        weights = learner_weights(algo)[0]
        state = pid_states(algo)[0]
        algo.save_to_path(str(tmp_path))
    finally:
        algo.stop()
    # Three PID steps: the delay line holds its initial 0 and three smoothed costs.
    assert len(state["cost_ds"]) == 4 and state["integral"] > 0

    restored = Algorithm.from_checkpoint(str(tmp_path))
    try:
        assert type(restored).__name__ == "PPOPIDLag"
        assert_same_weights(learner_weights(restored)[0], weights)
        assert pid_states(restored)[0] == state
        result = restored.train()
        assert result["training_iteration"] == 4
        after = pid_states(restored)[0]
        assert len(after["cost_ds"]) == 5  # the delay line continued, not restarted
    finally:
        restored.stop()
