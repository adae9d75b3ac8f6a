"""`rllib train` refuses bad input before Ray starts, with one clear message."""

from __future__ import annotations

import pytest

from rllib_kfcpo.cli.experiment import ExperimentError, load_experiments
from rllib_kfcpo.cli.main import main
from rllib_kfcpo.envs.toy import KNOWN_COST_ENV


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_algorithm(capsys):
    code, err = run_cli(capsys, "train", "--algo", "KFCP0", "--env", KNOWN_COST_ENV)
    assert code == 2
    assert "unknown algorithm 'KFCP0'" in err and "'KFCPO'" in err


def test_unknown_env(capsys):
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", "SafetyPointGaol1-v0")
    assert code == 2
    assert "Unknown environment id 'SafetyPointGaol1-v0'" in err


def test_unknown_config_key_is_named_with_a_suggestion(capsys):
    code, err = run_cli(capsys, "train", "--algo", "PPOLag", "--env", KNOWN_COST_ENV,
                        "--config", '{"cost_limt": 10}')
    assert code == 2
    assert "'cost_limt'" in err and "'cost_limit'" in err


def test_invalid_value_is_named(capsys):
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--config", '{"cost_limit": -1}')
    assert code == 2
    assert "cost_limit=-1" in err


def test_bad_json(capsys):
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--stop", "{training_iteration: 2}")
    assert code == 2
    assert "--stop must be a JSON object" in err


def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("exp:\n  run: KFCPO\n  env: [unclosed\n")
    code, err = run_cli(capsys, "train", "file", str(bad))
    assert code == 2
    assert "Malformed YAML" in err


def test_unknown_experiment_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(f"exp:\n  run: KFCPO\n  env: {KNOWN_COST_ENV}\n  confg: {{}}\n")
    with pytest.raises(ExperimentError, match="unknown experiment key"):
        load_experiments(path)


def test_missing_file(capsys):
    code, err = run_cli(capsys, "train", "file", "does/not/exist.yaml")
    assert code == 2
    assert "No such file" in err


def test_bad_seeds(capsys):
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--seeds", "0,five")
    assert code == 2
    assert "--seeds '0,five'" in err and "comma-separated integers" in err


def test_help_config_lists_keys_and_refuses_unknown_algorithms(capsys):
    assert main(["train", "--help-config", "KFCPO"]) == 0
    out = capsys.readouterr().out
    assert "  cost_limit: 25.0" in out and "  margin_temperature: 0.1" in out
    code, err = run_cli(capsys, "train", "--help-config", "CPO0")
    assert code == 2 and "unknown algorithm 'CPO0'" in err and "'CPO'" in err


def test_tune_bad_search_space(capsys):
    code, err = run_cli(capsys, "tune", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--search", '{"kfac_damping": {"loguniform": [0, 0.1]}}')
    assert code == 2
    assert "'kfac_damping': loguniform needs [low, high] numbers with low < high and low > 0" \
        in err
    code, err = run_cli(capsys, "tune", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--num-samples", "0")
    assert code == 2 and "--num-samples 0 is invalid" in err


def test_tune_file_with_wrong_source(capsys):
    code, err = run_cli(capsys, "tune", "fil", "tuned_examples/kfcpo/safety-point-goal1.yaml")
    assert code == 2 and "usage: rllib tune file <tuned_example.yaml>" in err


def test_train_resume_without_a_run_is_refused(tmp_path, capsys):
    """`rllib train --resume` never silently starts a fresh run in the wrong place."""
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--storage-path", str(tmp_path), "--resume")
    assert code == 2
    assert "Nothing to resume" in err and str(tmp_path) in err


def test_misspelt_stop_key_is_refused_with_suggestions(capsys, tmp_path):
    """Issue 14: Tune only warns about a stop key no result has, and never stops."""
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--stop", '{"training_iteraton": 2}')
    assert code == 2
    assert "unknown stop key 'training_iteraton'" in err and "'training_iteration'" in err
    path = tmp_path / "x.yaml"
    path.write_text(f"exp:\n  run: KFCPO\n  env: {KNOWN_COST_ENV}\n"
                    "  stop: {env_runner/episode_return_mean: 5}\n")
    code, err = run_cli(capsys, "train", "file", str(path))
    assert code == 2
    assert "unknown stop key 'env_runner/episode_return_mean'" in err
    assert "'env_runners/episode_return_mean'" in err


def test_stop_value_must_be_a_number(capsys):
    code, err = run_cli(capsys, "train", "--algo", "KFCPO", "--env", KNOWN_COST_ENV,
                        "--stop", '{"training_iteration": "2"}')
    assert code == 2
    assert "is not a number" in err


def test_nested_stop_paths_are_accepted():
    from rllib_kfcpo.cli.experiment import check_stop_criteria

    check_stop_criteria({"env_runners/episode_return_mean": 10,
                         "learners/default_policy/entropy": 0.5,
                         "num_env_steps_sampled_lifetime": 1e6, "training_iteration": 3})
