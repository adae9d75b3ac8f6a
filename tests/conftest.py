"""Shared fixtures: one real local Ray instance for the whole test session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: The ``ray`` console script of the interpreter running the tests.
RAY = str(Path(sys.executable).with_name("ray"))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def pytest_collection_modifyitems(config, items):
    """Long learning runs are marked `slow` and run only with RUN_SLOW=1."""
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow learning run: set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_local():
    """A real embedded Ray instance (4 logical CPUs so 2 runners + 2 learners fit)."""
    import ray

    import rllib_kfcpo  # noqa: F401  (registers envs and algorithms)

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def token_head(tmp_path_factory):
    """A real ``ray start --head`` on 127.0.0.1 in token-auth mode, with its own HOME (and
    so its own token), shared by every test that submits jobs.

    Every port is chosen free (Ray's defaults, e.g. the dashboard agent's 52365, collide
    with any other head on the machine); it is ready once a trivial job really ran (the
    job API answers before the job agent registers); and it is always stopped, start-up
    failures included.
    """
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True)
    ports = {name: free_port() for name in (
        "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port", "ray-client-server-port",
        "node-manager-port", "object-manager-port")}
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", "--num-cpus=4", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={tmp_path_factory.mktemp('raytmp')}",
         *(f"--{name}={port}" for name, port in ports.items())],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 180
        while True:
            ok = subprocess.run([RAY, "job", "submit", "--address", address, "--",
                                 "python", "-c", "print('agent-ready')"], env=env,
                                capture_output=True, text=True, timeout=120)
            if ok.returncode == 0 and "agent-ready" in ok.stdout:
                break
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the token-mode head did not run a job: {ok.stderr[-2000:]}")
            time.sleep(2)
        yield {"address": address, "env": env, "home": home}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
        except ProcessLookupError:
            pass
