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
