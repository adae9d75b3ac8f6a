"""A short KFCPO training submitted with `ray job submit` (cluster/submit_job.sh) to a real
token-mode `ray start --head` on 127.0.0.1 (the session fixture ``token_head``); the token
checks themselves are in tests/reliability/test_cluster_auth.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import RAY

REPO = Path(__file__).resolve().parents[2]


def test_kfcpo_training_job_succeeds(token_head, tmp_path):
    storage = tmp_path / "results"
    cmd = [str(REPO / "cluster" / "submit_job.sh"), token_head["address"], "--",
           "rllib", "train",
           "--algo", "KFCPO", "--env", "rllib_kfcpo/ActionCost-v0",
           "--config", '{"train_batch_size": 400, "minibatch_size": 200, "num_epochs": 2, '
                       '"num_env_runners": 1, "cost_limit": 5}',
           "--stop", '{"training_iteration": 2}', "--storage-path", str(storage)]
    out = subprocess.run(cmd, env={**token_head["env"], "RAY": RAY}, capture_output=True,
                         text=True,
                         timeout=600, cwd=REPO)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "succeeded" in log
    assert "iter    2" in log
    progress = list(storage.rglob("progress.csv"))
    assert len(progress) == 1
    assert len(progress[0].read_text().strip().splitlines()) == 3  # header + 2 iterations
