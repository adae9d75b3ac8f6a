"""Token authentication on a real `ray start --head` (127.0.0.1), and nothing in the
package weakens it.

The head is the session fixture ``token_head`` of tests/conftest.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import RAY

REPO = Path(__file__).resolve().parents[2]



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


def test_job_http_api_refuses_requests_without_the_token(token_head):
    token = (Path(token_head["home"]) / ".ray" / "auth_token").read_text().strip()
    assert token
    assert get_jobs(token_head["address"], None) in (401, 403)
    assert get_jobs(token_head["address"], "not-the-token") in (401, 403)
    assert get_jobs(token_head["address"], token) == 200


def test_ray_job_submit_with_and_without_the_token(token_head, tmp_path):
    cmd = [RAY, "job", "submit", "--address", token_head["address"], "--", "python", "-c",
           "print('ran-' + 'with-token')"]
    refused = subprocess.run(cmd, env={**token_head["env"], "HOME": str(tmp_path)},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "ran-with-token" not in refused.stdout + refused.stderr
    accepted = subprocess.run(cmd, env=token_head["env"], capture_output=True, text=True,
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
