"""Faults on real Ray: a killed env runner, a killed learner, a save that fails midway,
and a full KFCPO state round trip through a checkpoint."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import ray
import torch
from ray.rllib.algorithms.algorithm import Algorithm

from rllib_kfcpo import KFCPOConfig
from rllib_kfcpo.envs.toy import ACTION_COST_ENV
from rllib_kfcpo.safe.algorithm import LearnerFailureError
from tests.helpers import (
    assert_nested_equal,
    assert_same_weights,
    filter_state,
    learner_weights,
    results,
)

BATCH = 200


def tiny(runners: int = 0, learners: int = 0) -> KFCPOConfig:
    return (
        KFCPOConfig()
        .environment(ACTION_COST_ENV)
        .env_runners(num_env_runners=runners, rollout_fragment_length=BATCH // max(runners, 1))
        .learners(num_learners=learners)
        .training(train_batch_size=BATCH, minibatch_size=BATCH // max(learners, 1) // 2,
                  num_epochs=1, cost_limit=5.0)
        .debugging(seed=0)
    )


def test_restart_failed_env_runners_is_on():
    assert tiny().restart_failed_env_runners is True


def test_killed_env_runner_is_restarted_and_training_continues(ray_local):
    algo = tiny(runners=2).build_algo()
    try:
        first = algo.train()
        group = algo.env_runner_group
        victim = group.healthy_worker_ids()[0]
        # Kill the real actor process; Ray may restart it (as after a crash or OOM kill).
        ray.kill(group._worker_manager._actors[victim], no_restart=False)
        lifetime = first["env_runners"]["num_env_steps_sampled_lifetime"]
        deadline = time.time() + 90  # Ray restarts the process; RLlib probes each iteration
        while True:
            result = algo.train()
            runners = result["env_runners"]
            assert math.isfinite(runners["episode_cost_mean"])
            assert math.isfinite(runners["episode_return_mean"])
            assert runners["num_env_steps_sampled"] >= BATCH
            assert runners["num_env_steps_sampled_lifetime"] >= lifetime + BATCH
            lifetime = runners["num_env_steps_sampled_lifetime"]
            if group.num_healthy_remote_workers() == 2 and group.num_remote_worker_restarts():
                break
            assert time.time() < deadline, "the killed env runner was not restarted"
            time.sleep(1)
        assert group.num_remote_worker_restarts() >= 1
        assert group.num_healthy_remote_workers() == 2  # back to full strength
        # The restarted runner got the current weights and samples again.
        algo.train()
        # A runner Ray cannot bring back (killed for good) is dropped: training goes on
        # with the remaining one, still sampling the full batch.
        ray.kill(group._worker_manager._actors[group.healthy_worker_ids()[0]],
                 no_restart=True)
        for _ in range(2):
            runners = algo.train()["env_runners"]
            assert math.isfinite(runners["episode_cost_mean"])
            assert runners["num_env_steps_sampled"] >= BATCH
        assert group.num_healthy_remote_workers() == 1
    finally:
        algo.stop()


def test_killed_learner_is_named(ray_local):
    algo = tiny(runners=1, learners=2).build_algo()
    try:
        algo.train()
        manager = algo.learner_group._worker_manager
        victim = manager.actor_ids()[1]
        ray.kill(manager._actors[victim])
        with pytest.raises(LearnerFailureError) as info:
            algo.train()
    finally:
        algo.stop()
    message = str(info.value)
    assert f"Learner actor(s) [{victim}] of 2 died" in message
    assert "--resume" in message


def test_failed_save_leaves_the_previous_checkpoint_intact(ray_local, tmp_path):
    """A real failure in the middle of ``save_to_path`` (the learner state holds an
    unpicklable lock, so pickling fails after the metadata and env-runner state were
    already written): the previous checkpoint is untouched and restorable, and no
    partial directory is left behind."""
    ckpt = tmp_path / "ckpt"
    algo = tiny().build_algo()
    try:
        algo.train()
        algo.save_to_path(str(ckpt))
        saved = learner_weights(algo)[0]
        files = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*"))
        algo.train()
        learner = algo.learner_group._learner
        good = learner.episode_cost
        learner.episode_cost = threading.Lock()  # cannot be pickled
        with pytest.raises(TypeError, match="pickle"):
            algo.save_to_path(str(ckpt))
        with pytest.raises(TypeError, match="pickle"):
            algo.save_to_path(str(tmp_path / "fresh"))
        assert sorted(p.relative_to(ckpt) for p in ckpt.rglob("*")) == files
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no partial dirs
        learner.episode_cost = good
        newer = learner_weights(algo)[0]
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(str(ckpt))
    try:
        assert_same_weights(learner_weights(restored)[0], saved)
        assert any(not np.array_equal(saved[k], newer[k]) for k in saved)
        # A successful save replaces the checkpoint atomically.
        restored.save_to_path(str(ckpt))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    finally:
        restored.stop()


def _learner_state(algo: Algorithm) -> dict:
    def grab(learner):
        safe = learner.get_safe_state()
        kfac = safe["kfac"]["default_policy"]
        optim = learner.get_optimizer("default_policy", "critic").state_dict()
        return {
            "episode_cost": safe["episode_cost"],
            "kfac_blocks": [{k: torch.as_tensor(v).clone() for k, v in b.items()}
                            for b in kfac["blocks"]],
            "kfac_updates": kfac["num_updates"],
            "optim": {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in v.items()}
                      for k, v in optim["state"].items()},
        }
    return results(algo.learner_group.foreach_learner(grab))[0] \
        if not algo.learner_group.is_local else grab(algo.learner_group._learner)


def test_checkpoint_round_trip_keeps_all_kfcpo_state(ray_local, tmp_path):
    """Weights, critic optimizer, K-FAC factors, decompositions and counters, the episode
    cost the learner saw, the observation filter and the iteration counters all come
    back from a checkpoint (what ``rllib train --resume`` relies on)."""
    algo = tiny(runners=1).build_algo()
    try:
        for _ in range(2):
            algo.train()
        path = algo.save_to_path(str(tmp_path / "ckpt"))
        weights, state, filt = learner_weights(algo)[0], _learner_state(algo), filter_state(algo)
        iteration = algo.iteration
    finally:
        algo.stop()
    restored = Algorithm.from_checkpoint(path)
    try:
        assert restored.iteration == iteration == 2
        assert_same_weights(learner_weights(restored)[0], weights)
        got = _learner_state(restored)
        assert got["episode_cost"] == state["episode_cost"]
        assert got["kfac_updates"] == state["kfac_updates"] > 0
        for a, b in zip(got["kfac_blocks"], state["kfac_blocks"], strict=True):
            for key in a:
                assert torch.equal(a[key], b[key]), key
        assert got["optim"].keys() == state["optim"].keys() and state["optim"]
        for key, entry in state["optim"].items():
            for name, value in entry.items():
                assert torch.equal(torch.as_tensor(got["optim"][key][name]),
                                   torch.as_tensor(value)), (key, name)
        assert_nested_equal(filter_state(restored), filt)
        restored.train()
    finally:
        restored.stop()


def test_tune_checkpoints_go_through_the_atomic_save(ray_local, tmp_path):
    """Tune's ``Trainable.save`` calls ``save_checkpoint(dir)`` -> ``save_to_path(dir)``:
    the package's atomic path, leaving only the finished checkpoint in ``dir``."""
    algo = tiny().build_algo()
    try:
        algo.train()
        target = tmp_path / "tune_dir"
        target.mkdir()  # Tune hands over an existing, empty directory
        algo.save_checkpoint(str(target))
        assert (target / "rllib_checkpoint.json").is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["tune_dir"]
    finally:
        algo.stop()


def test_sampling_outage_stops_training_with_one_clear_error(ray_local):
    """Every env runner down for good: iterations without samples are skipped only until
    max_sampling_outage_s has passed, then one error names the cause and the fix (before,
    training ran empty iterations forever, as after Ray's memory monitor killed runners)."""
    from rllib_kfcpo.safe.algorithm import SamplingOutageError

    algo = tiny(runners=1).fault_tolerance(max_sampling_outage_s=3.0).build_algo()
    try:
        lifetime = algo.train()["env_runners"]["num_env_steps_sampled_lifetime"]
        assert lifetime >= BATCH
        group = algo.env_runner_group
        ray.kill(group._worker_manager._actors[group.healthy_worker_ids()[0]],
                 no_restart=True)
        deadline = time.time() + 60
        with pytest.raises(SamplingOutageError,
                           match=r"No env runner returned a sample for \d+ s "
                                 r"\(max_sampling_outage_s=3\).*0 of 1 env runners.*"
                                 r"--resume.*max_sampling_outage_s"):
            while time.time() < deadline:
                result = algo.train()  # empty iterations until the outage limit
                assert result["env_runners"].get("num_env_steps_sampled_lifetime",
                                                 lifetime) == lifetime
                time.sleep(0.5)
    finally:
        algo.stop()
    with pytest.raises(ValueError, match="max_sampling_outage_s"):
        tiny().fault_tolerance(max_sampling_outage_s=0).validate()
