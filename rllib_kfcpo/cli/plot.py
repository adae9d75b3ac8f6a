"""Learning curves (episode return and episode cost vs env steps) from Tune result dirs.

Finds every trial (a ``progress.csv``) below the given directories, reads its rows with
:func:`read_rows` (``result.json`` when present: resumed trials), groups trials by experiment
(the directory that holds the trial directories), interpolates each trial onto a common
step grid and draws the mean with a min-max band over trials (seeds), plus the cost
limit as a dashed line. Returns the plotted data and writes it next to the PNG
(``curves.png`` -> ``curves.json``: every plotted curve, the cost limits, and each trial's
raw series with its directory) so the figure can be checked against the progress files.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rllib_kfcpo.cli.run import COST_KEY, COST_WINDOW_KEY, RETURN_KEY, STEPS_KEY


def _flatten(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Tune's nested result as progress.csv names its columns (``env_runners/...``)."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """One trial's per-iteration results, one flat dict per iteration, in order.

    Read from ``result.json`` (one JSON object per line) when the trial has it, else from
    ``progress.csv``. A trial resumed from a checkpoint has the iterations between that
    checkpoint and the interruption twice, and its ``progress.csv`` gains rows whose
    columns no longer match the header (seen on a resumed headline group: return and cost
    read from other columns); so the JSON lines are preferred, and of an iteration logged
    twice the later row (the resumed run's) is kept. A running trial's last line may be
    half written: it is left out until it is complete.
    """
    results = trial_dir / "result.json"
    if results.is_file():
        lines = [line for line in results.read_text().splitlines() if line.strip()]
        rows = []
        for number, line in enumerate(lines, start=1):
            try:
                rows.append(_flatten(json.loads(line)))
            except json.JSONDecodeError as error:
                if number == len(lines):  # a running trial's row, half written: not yet
                    break
                raise ValueError(f"{results}, line {number}, is not a JSON result ({error})"
                                 ": the file is damaged; remove that line or the trial "
                                 "directory.") from None
    else:
        rows = list(csv.DictReader((trial_dir / "progress.csv").open()))
    by_iteration: dict[Any, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        iteration = row.get("training_iteration")
        key = float(iteration) if iteration not in (None, "") else ("row", i)
        by_iteration.pop(key, None)  # a re-logged iteration moves to the resumed position
        by_iteration[key] = row
    return list(by_iteration.values())


def _number(value: Any) -> float:
    return math.nan if value is None or value == "" else float(value)


def read_trial(trial_dir: Path) -> dict[str, Any]:
    """Steps, returns, costs, Jc (the windowed episode cost; NaN where not logged) and the
    cost limit of one trial directory (:func:`read_rows`)."""
    rows = read_rows(trial_dir)

    def column(key: str) -> np.ndarray:
        return np.array([_number(r.get(key)) for r in rows])

    limit = math.nan
    params = trial_dir / "params.json"
    if params.exists():
        limit = float(json.loads(params.read_text()).get("cost_limit", math.nan))
    return {"steps": column(STEPS_KEY), "return": column(RETURN_KEY),
            "cost": column(COST_KEY), "cost_window": column(COST_WINDOW_KEY),
            "cost_limit": limit, "dir": str(trial_dir)}


def collect(result_dirs: list[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """Experiment name -> list of trials found below ``result_dirs``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for root in result_dirs:
        for progress in sorted(Path(root).rglob("progress.csv")):
            trial = read_trial(progress.parent)
            if len(trial["steps"]):
                groups[progress.parent.parent.name].append(trial)
    if not groups:
        raise FileNotFoundError(
            f"No progress.csv below {[str(d) for d in result_dirs]}: pass the --storage-path "
            "of `rllib train` (or a Tune experiment directory)."
        )
    return dict(groups)


def aggregate(trials: list[dict[str, Any]], key: str, points: int = 50) -> dict[str, Any]:
    """Mean, min and max of ``key`` over trials on a common env-step grid."""
    end = min(t["steps"][-1] for t in trials)
    start = max(t["steps"][0] for t in trials)
    grid = np.linspace(start, end, points) if end > start else np.array([end])
    curves = []
    for t in trials:
        ok = np.isfinite(t[key])
        curves.append(np.interp(grid, t["steps"][ok], t[key][ok]) if ok.any()
                      else np.full_like(grid, np.nan))
    stack = np.stack(curves)
    return {"steps": grid, "mean": np.nanmean(stack, 0), "min": np.nanmin(stack, 0),
            "max": np.nanmax(stack, 0), "n": len(trials)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(float(v)) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def plot_learning_curves(result_dirs: list[str | Path], output: str | Path,
                         data_output: str | Path | None = None) -> dict[str, Any]:
    """Writes a PNG with return and cost panels and its data as JSON; returns the data.

    Args:
        result_dirs: Tune experiment directories (or any directory above them).
        output: the PNG to write.
        data_output: where the plotted data goes (default: ``output`` with ``.json``).
            NaN (no finished episode yet) is written as ``null``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = collect(result_dirs)
    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
    data: dict[str, Any] = {}
    limits = set()
    for name, trials in sorted(groups.items()):
        data[name] = {k: aggregate(trials, k) for k in ("return", "cost")}
        for ax, key in ((ax_r, "return"), (ax_c, "cost")):
            d = data[name][key]
            line = ax.plot(d["steps"], d["mean"], label=f"{name} (n={d['n']})")[0]
            ax.fill_between(d["steps"], d["min"], d["max"], alpha=0.2, color=line.get_color())
            if key == "cost" and all(np.isfinite(t["cost_window"]).any() for t in trials):
                # Jc, what the algorithms constrain: the mean of the last N episodes.
                data[name]["cost_window"] = w = aggregate(trials, "cost_window")
                ax.plot(w["steps"], w["mean"], ls=":", lw=2, color=line.get_color(),
                        label=f"{name}: Jc (windowed episode cost)")
        limits |= {t["cost_limit"] for t in trials if math.isfinite(t["cost_limit"])}
    for limit in sorted(limits):
        ax_c.axhline(limit, ls="--", color="red", label=f"cost limit {limit:g}")
    ax_r.set(title="Episode return", xlabel="env steps", ylabel="mean episode return")
    ax_c.set(title="Episode cost", xlabel="env steps", ylabel="mean episode cost")
    for ax in (ax_r, ax_c):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)
    result = {"groups": data, "cost_limits": sorted(limits),
              "trials": {name: trials for name, trials in sorted(groups.items())}}
    data_path = Path(data_output) if data_output else Path(output).with_suffix(".json")
    data_path.write_text(json.dumps(_jsonable(result), indent=1))
    return result
