"""Token authentication on a real `ray start --head` (127.0.0.1), and nothing in the
package weakens it.

The head is started like tests/cluster/test_job_submit.py's ``head`` fixture (same
helpers, same flags) but with EVERY port chosen free: that fixture leaves the dashboard
agent on Ray's fixed default port 52365, so it fails while any other Ray head runs on
the machine (a shared developer box), and when its start-up fails it leaks the head.
This one always stops what it started.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.test_job_submit import RAY, REPO, free_port


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A token-mode Ray head bound to 127.0.0.1, with its own HOME (and token)."""
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
         "--dashboard-host=127.0.0.1", "--num-cpus=1", "--include-dashboard=true",
         "--disable-usage-stats", f"--temp-dir={tmp_path_factory.mktemp('raytmp')}",
         *(f"--{name}={port}" for name, port in ports.items())],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        deadline = time.time() + 180
        while True:  # until a trivial job really runs (the job agent is registered)
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


def get_jobs(address: str, token: str | None) -> int:
    """HTTP status of GET /api/jobs/ on the job-submission API."""
    request = urllib.request.Request(f"{address}/api/jobs/")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            json.loads(response.read())
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_job_http_api_refuses_requests_without_the_token(head):
    token = (Path(head["home"]) / ".ray" / "auth_token").read_text().strip()
    assert token
    assert get_jobs(head["address"], None) in (401, 403)
    assert get_jobs(head["address"], "not-the-token") in (401, 403)
    assert get_jobs(head["address"], token) == 200


def test_ray_job_submit_with_and_without_the_token(head, tmp_path):
    cmd = [RAY, "job", "submit", "--address", head["address"], "--", "python", "-c",
           "print('ran-' + 'with-token')"]
    refused = subprocess.run(cmd, env={**head["env"], "HOME": str(tmp_path)},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "ran-with-token" not in refused.stdout + refused.stderr
    accepted = subprocess.run(cmd, env=head["env"], capture_output=True, text=True,
                              timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "ran-with-token" in accepted.stdout


WEAKENING = [
    (re.compile(r"RAY_AUTH_MODE\s*[=:]\s*\"?disabled"), "turns token auth off"),
    (re.compile(r"0\.0\.0\.0"), "binds a port on every interface"),
    (re.compile(r"dashboard[-_]host\s*[=:]\s*\"?(?!127\.0\.0\.1|localhost)[\w.]"),
     "exposes the dashboard/job API beyond loopback"),
    (re.compile(r"include_dashboard\s*=\s*True"), "starts a dashboard (a port) by itself"),
]


@pytest.mark.parametrize("root", ["rllib_kfcpo", "cluster", "scripts"])
def test_nothing_in_the_package_disables_auth_or_opens_a_port(root):
    base = REPO / root
    if not base.exists():
        pytest.skip(f"{root}/ not in this checkout")
    problems = []
    for path in sorted(base.rglob("*")):
        if not path.is_file() or path.suffix not in {".py", ".sh", ".yaml", ".yml", ""}:
            continue
        text = path.read_text(errors="ignore")
        for pattern, why in WEAKENING:
            for match in pattern.finditer(text):
                line = text[:match.start()].count("\n") + 1
                problems.append(f"{path.relative_to(REPO)}:{line}: {match.group(0)!r} {why}")
    assert not problems, "\n".join(problems)
