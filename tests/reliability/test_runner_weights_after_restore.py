"""After a restore, remote env runners sample with the restored policy.

In its own module, after test_resume.py: run before it in one pytest session, its two
algorithms with remote env runners on the session's Ray made the SIGKILL/resume subprocess
test restart its trial from scratch (measured twice; not understood yet).
"""

from __future__ import annotations

import pytest

from tests.reliability.test_faults import tiny


def test_restored_remote_env_runners_sample_with_the_restored_policy(ray_local, tmp_path):
    """After a restore the first iteration's episodes come from the restored policy, not
    from the remote runner's freshly built one (RLlib alone left it there). Measured by
    the KL between the behaviour policy (what the runner sampled with) and the learner's
    policy before its first step: 0. The restoring algorithm freezes its policy at once
    (target_kl 1e-12), so that first step's KL is the only one logged."""
    algo = tiny(runners=1).training(trust_region_kl=0.05, kl_rollback=False).build_algo()
    try:
        for _ in range(3):
            moved = algo.train()["learners"]["default_policy"]["kl_after_step"]
        path = algo.save_to_path(str(tmp_path / "ckpt"))
    finally:
        algo.stop()
    assert moved > 1e-2  # the saved policy is far from the initial one
    restored = tiny(runners=1).training(target_kl=1e-12).build_algo()
    try:
        restored.restore_from_path(path)
        first = restored.train()["learners"]["default_policy"]
        assert first["kl_rollbacks"] == 1
        assert first["kl_before_step"] == pytest.approx(0.0, abs=1e-6)
    finally:
        restored.stop()
