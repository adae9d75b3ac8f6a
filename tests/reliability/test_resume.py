"""The driver dies (SIGKILL) in the middle of `rllib train`; `--resume` picks up the run.

A real `rllib train` subprocess (its own local Ray) checkpoints every iteration and is
killed with SIGKILL (process group: driver, Tune and the Ray processes it started) after
a few iterations. `rllib train ... --resume` restores the Tune experiment; the trial
continues from its last checkpoint (weights, optimizer, K-FAC/Lagrange state, filters and
counters come back with it, see test_faults.py::test_checkpoint_round_trip_keeps_all_kfcpo_state),
so at most one checkpoint interval of work is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STOP_AT = 6
KILL_AFTER = 3  # iterations reported before the SIGKILL


def rllib_train(storage: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "rllib_kfcpo.cli.main", "train", "--algo", "KFCPO",
        "--env", "rllib_kfcpo/ActionCost-v0",
        "--config", '{"train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1, '
                    '"num_env_runners": 0, "cost_limit": 5, "seed": 0}',
        "--stop", f'{{"training_iteration": {STOP_AT}}}', "--checkpoint-freq", "1",
        "--storage-path", str(storage), *extra,
    ]


def iterations(lines: list[str]) -> list[tuple[int, int]]:
    """(iteration, lifetime env steps) of each progress line `iter N | steps S | ...`."""
    out = []
    for line in lines:
        if line.startswith("iter "):
            fields = [f.split() for f in line.split("|")]
            # `iter 3/6 | steps 600 | ...` with an iteration stop (progress against it).
            out.append((int(fields[0][1].split("/")[0]),
                        int(fields[1][1].split("/")[0].replace(",", ""))))
    return out


def test_sigkilled_driver_resumes_from_the_last_checkpoint(tmp_path):
    storage = tmp_path / "results"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(rllib_train(storage), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    seen: list[str] = []
    deadline = time.time() + 240
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(f"iter {KILL_AFTER:4d}"):
                break
            assert time.time() < deadline, "".join(seen[-40:])
        else:
            raise AssertionError("rllib train ended early:\n" + "".join(seen[-40:]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    last_reported = iterations(seen)[-1][0]
    assert last_reported >= KILL_AFTER
    checkpoints = sorted(storage.rglob("checkpoint_*"))
    assert checkpoints, "no checkpoint was written before the kill"

    out = subprocess.run(rllib_train(storage, "--resume"), cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=300)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    resumed = iterations(out.stdout.splitlines())
    assert resumed, log[-4000:]
    first_resumed, first_steps = resumed[0]
    # Continued where the last checkpoint left off: at most one interval (1 iteration)
    # of the work reported before the kill is redone.
    assert last_reported - (first_resumed - 1) <= 1, (last_reported, resumed)
    assert resumed[-1][0] == STOP_AT
    # Counters came back from the checkpoint: env steps continue, not restart at 0.
    assert first_steps == first_resumed * 200
    assert resumed[-1][1] == STOP_AT * 200
    assert not list(storage.rglob(".*.tmp-*")), "a partial checkpoint was left behind"
