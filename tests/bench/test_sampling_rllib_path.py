"""``bench/sampling.py --rllib-path`` measures every layout on both paths (smoke size)."""

from __future__ import annotations

import re

from tests.bench.test_bench_smoke import FLOAT, run_script


def test_sampling_rllib_path_adds_before_columns() -> None:
    out = run_script("sampling.py", "--rllib-path")
    assert "rllib sample/s" in out, out
    rows = re.findall(
        r"^\s*SafetyHalfCheetahVelocity-v1 \| +off \| +off \| +(\d) \| +(\d)"
        + rf" \| +({FLOAT})" * 9 + r"\s*$", out, flags=re.MULTILINE)
    assert {(r[0], r[1]) for r in rows} == {("1", "1"), ("2", "1")}, out
    for row in rows:
        assert all(float(v) > 0 for v in row[2:]), row


def test_rllib_forward_module_is_rllibs_path() -> None:
    import sys
    from pathlib import Path

    from ray.rllib.core.rl_module.torch import TorchRLModule

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        import sampling
    finally:
        sys.path.pop(0)
    assert sampling.RLlibForwardModule.forward_exploration is TorchRLModule.forward_exploration
    assert sampling.RLlibForwardModule.forward_inference is TorchRLModule.forward_inference
