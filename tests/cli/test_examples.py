"""examples/tune_kfcpo.py really runs a (tiny) constrained search."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rllib_kfcpo.envs.toy import ACTION_COST_ENV

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tune_kfcpo.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("tune_kfcpo_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tune_example_runs_and_prints_the_constrained_ranking(ray_local, tmp_path, capsys):
    example = _load_example()
    code = example.main(["--env", ACTION_COST_ENV, "--smoke", "--num-samples", "2",
                         "--storage-path", str(tmp_path), "--name", "example"])
    out = capsys.readouterr().out
    assert code == 0, out
    table = out[out.index("rank | trial"):].splitlines()
    assert table[1].startswith("   1 |") and table[2].startswith("   2 |")
    assert "margin_temperature=" in table[1] and "kfac_damping=" in table[1]
    assert "best checkpoint: " in out and "checkpoint_" in out.split("best checkpoint: ")[1]
    assert (tmp_path / "example").is_dir()


def test_plain_torch_kfac_example_learns():
    """examples/kfac_plain_torch.py: the K-FAC component's ACKTR-style capture() path in
    plain torch improves the policy (reward of the mean action) several-fold."""
    spec = importlib.util.spec_from_file_location(
        "kfac_plain_torch", EXAMPLE.parent / "kfac_plain_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    history = module.train(iterations=60, seed=0)
    assert history[0] < -0.1  # rewards are -|a - target|^2: a fresh policy is far off
    assert history[-1] > 0.1 * history[0]  # at least 10x closer to the target
