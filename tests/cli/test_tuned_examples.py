"""Every tuned example is documented, follows OmniSafe's protocol and really trains.

Each YAML under tuned_examples/ is read with the CLI's own loader, shrunk with the CLI's
``--smoke`` overrides (200 env steps, one epoch, no remote env runners, 50-step episodes)
and trained for one real iteration on the session's local Ray instance.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from rllib_kfcpo.cli.experiment import (
    SMOKE_CONFIG,
    SMOKE_EPISODE_STEPS,
    apply_smoke,
    load_experiments,
)

ROOT = Path(__file__).resolve().parents[2]
TUNED = sorted((ROOT / "tuned_examples").rglob("*.yaml"))
#: Every algorithm has a tuned example on each of these tasks.
REQUIRED_ENVS = ("SafetyPointGoal1-v0", "SafetyCarGoal1-v0",
                 "SafetyHalfCheetahVelocity-v1", "SafetyAntVelocity-v1")
#: ``# Expect at <steps> env steps: <result>`` on one comment line.
EXPECT = re.compile(r"^#\s*Expect at ([0-9][0-9,]*(?:\.[0-9]+)?(?:e[0-9]+)?) env steps: (\S.*)$",
                    re.MULTILINE)


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT / "tuned_examples")) for p in paths]


def test_required_tuned_examples_exist():
    found = {(e.run, e.env) for path in TUNED for e in load_experiments(path)}
    missing = [(algo, env) for algo in ("KFCPO", "PPOLag", "CPO", "PPOPIDLag")
               for env in REQUIRED_ENVS
               if (algo, env) not in found]
    assert not missing, f"no tuned example for {missing}"


@pytest.mark.parametrize("path", TUNED, ids=_ids(TUNED))
def test_tuned_example_says_what_to_expect_and_follows_omnisafe(path: Path):
    text = path.read_text()
    match = EXPECT.search(text)
    assert match, (f"{path.name}: add a comment line '# Expect at <N> env steps: <result>' "
                   "saying what result to expect")
    steps = float(match.group(1).replace(",", ""))
    (exp,) = load_experiments(path)
    budget = exp.stop.get("num_env_steps_sampled_lifetime")
    if budget is None:  # an iteration budget: steps = iterations x batch
        budget = exp.stop["training_iteration"] * exp.config["train_batch_size"]
    assert steps == float(budget), f"{path.name}: the Expect line and stop: disagree"
    # OmniSafe's protocol, written out in the file (not left to defaults) ...
    assert exp.config["cost_limit"] == 25.0
    assert exp.config["normalize_observations"] is True
    assert exp.config["model_config"] == {"fcnet_hiddens": [64, 64], "fcnet_activation": "tanh"}
    # ... and in the config it builds.
    config = exp.build_config()
    assert config.cost_limit == 25.0 and config.normalize_observations is True
    assert config.gamma == 0.99 and config.lambda_ == 0.95


@pytest.mark.parametrize("path", TUNED, ids=_ids(TUNED))
def test_tuned_example_trains_one_iteration(ray_local, path: Path):
    (exp,) = load_experiments(path)
    # `rllib train --smoke`: 200 env steps, one epoch, 50-step episodes (so that one
    # iteration finishes episodes and logs their cost).
    apply_smoke(exp)
    assert exp.config["train_batch_size"] == SMOKE_CONFIG["train_batch_size"]
    assert exp.config["env_config"] == {"max_episode_steps": SMOKE_EPISODE_STEPS}
    algo = exp.build_config().build_algo()
    try:
        # The network really is 64x64 tanh, and observations really are normalised.
        module = algo.get_module()
        hidden = [m.out_features for m in module.pi.modules()
                  if isinstance(m, torch.nn.Linear)][:-1]
        assert hidden == [64, 64]
        assert any(isinstance(m, torch.nn.Tanh) for m in module.pi.modules())
        assert "MeanStdFilter" in algo.get_state()["env_runner"]["env_to_module_connector"]
        result = algo.train()
    finally:
        algo.stop()
    assert result["training_iteration"] == 1
    assert result["num_env_steps_sampled_lifetime"] >= 200
    runners = result["env_runners"]
    assert math.isfinite(runners["episode_return_mean"])
    assert math.isfinite(runners["episode_cost_mean"]) and runners["episode_cost_mean"] >= 0
    assert "default_policy" in result["learners"]
