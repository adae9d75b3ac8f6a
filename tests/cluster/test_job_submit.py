"""A real `ray start --head` on 127.0.0.1, token auth on, and `ray job submit`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-mode Ray head bound to 127.0.0.1, with its own HOME (and token)."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True)
    gcs, dash = free_port(), free_port()
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=4",
         "--include-dashboard=true", "--disable-usage-stats",
         f"--temp-dir={tmp_path_factory.mktemp('raytmp')}"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while time.time() < deadline:
        # The job API answers before the head's job agent is registered ("No available
        # agent to submit job"): wait until a trivial job really runs.
        ok = subprocess.run([RAY, "job", "submit", "--address", address, "--",
                             "python", "-c", "print('agent-ready')"], env=env,
                            capture_output=True, text=True)
        if ok.returncode == 0 and "agent-ready" in ok.stdout:
            break
        if proc.poll() is not None:
            pytest.fail(f"ray start exited: {proc.stdout.read()}")
        time.sleep(2)
    else:
        pytest.fail("the Ray head's job API did not run a job within 180 s: "
                    f"{(ok.stdout + ok.stderr)[-2000:]}")
    yield {"address": address, "env": env, "home": home}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_job_without_token_is_refused(head, tmp_path):
    env = {**head["env"], "HOME": str(tmp_path)}  # a machine that never got the token
    out = subprocess.run([RAY, "job", "submit", "--address", head["address"], "--",
                          "python", "-c", "print('should not run')"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    text = (out.stdout + out.stderr).lower()
    assert "should not run" not in text
    assert "token" in text or "auth" in text or "401" in text or "unauthorized" in text


def test_kfcpo_training_job_succeeds(head, tmp_path):
    storage = tmp_path / "results"
    cmd = [str(REPO / "cluster" / "submit_job.sh"), head["address"], "--", "rllib", "train",
           "--algo", "KFCPO", "--env", "rllib_kfcpo/ActionCost-v0",
           "--config", '{"train_batch_size": 400, "minibatch_size": 200, "num_epochs": 2, '
                       '"num_env_runners": 1, "cost_limit": 5}',
           "--stop", '{"training_iteration": 2}', "--storage-path", str(storage)]
    out = subprocess.run(cmd, env={**head["env"], "RAY": RAY}, capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "succeeded" in log
    assert "iter    2" in log
    progress = list(storage.rglob("progress.csv"))
    assert len(progress) == 1
    assert len(progress[0].read_text().strip().splitlines()) == 3  # header + 2 iterations
