"""Small helpers for tests that inspect real learners and env runners."""

from __future__ import annotations

from typing import Any

import numpy as np


def results(call_results: Any) -> list[Any]:
    """Values of a LearnerGroup/EnvRunnerGroup foreach call, whatever wrapper it returns."""
    return [r.get() if hasattr(r, "get") else r for r in call_results]


def learner_weights(algo: Any, module_id: str = "default_policy") -> list[dict[str, np.ndarray]]:
    """The module weights held by every learner (one dict per learner)."""
    return results(algo.learner_group.foreach_learner(
        lambda learner: {k: v.detach().cpu().numpy().copy() for k, v in
                         learner.module[module_id].unwrapped().state_dict().items()}
    ))


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                        atol: float = 0.0) -> None:
    """Equal (bit-for-bit by default) weights under every key."""
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)


def filter_state(algo: Any) -> dict[str, Any]:
    """The driver's observation-filter (MeanStdFilter) state."""
    return algo.get_state()["env_runner"]["env_to_module_connector"]["MeanStdFilter"]
