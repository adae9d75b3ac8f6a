"""Every private RLlib/Tune name the package uses exists on the installed Ray as expected,
and none is used outside rllib_kfcpo/rllib_seam.py (issue 13).

When a Ray upgrade renames or changes one, this test fails with its name, instead of
training failing somewhere deep inside.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rllib_kfcpo import PPOLagConfig
from rllib_kfcpo.rllib_seam import private_names

PACKAGE = Path(__file__).resolve().parents[1] / "rllib_kfcpo"
NAMES = private_names()
SPACES = {"default_policy": (gym.spaces.Box(-1, 1, (3,), np.float32),
                             gym.spaces.Box(-1, 1, (2,), np.float32))}


@pytest.mark.parametrize("owner,name,params,why", NAMES,
                         ids=[f"{o.__name__}.{n}" for o, n, _, _ in NAMES])
def test_private_name_exists_with_the_expected_signature(owner, name, params, why):
    assert why, "every private use must say why the public API does not suffice"
    if params is None:  # an instance attribute: look at a real instance
        config = PPOLagConfig()
        instances = {"AlgorithmConfig": config,
                     "Learner": None, "LearnerGroup": None}
        if owner.__name__ == "Learner":
            instances["Learner"] = config.build_learner(spaces=SPACES)
        if owner.__name__ == "LearnerGroup":
            instances["LearnerGroup"] = config.build_learner_group(spaces=SPACES)
        instance = instances[owner.__name__]
        assert hasattr(instance, name), f"{owner.__name__} instances lost {name!r}"
        return
    attr = getattr(owner, name, None)
    assert attr is not None, f"{owner.__name__}.{name} no longer exists"
    # Ray adds `_ray_trace_ctx` to methods of classes it has made actors of in this process.
    got = tuple(p for p in inspect.signature(attr).parameters
                if p not in ("self", "_ray_trace_ctx"))
    assert got == params, f"{owner.__name__}.{name} now takes {got}, not {params}"


def test_no_private_rllib_name_outside_the_seam():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "rllib_seam.py":
            continue
        text = path.read_text()
        for _, name, _, _ in NAMES:
            for match in re.finditer(rf"(\.|def\s+|['\"]){re.escape(name)}\b", text):
                line = text[:match.start()].count("\n") + 1
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} {name}")
        if re.search(r"_global_registry|class_and_ctor_args", text):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: Tune/RLlib internals")
    assert not offenders, "private RLlib names outside rllib_seam.py:\n" + "\n".join(offenders)
