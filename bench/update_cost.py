"""Update cost of K-FAC: one KFCPO learner update vs one PPO-Lagrangian (Adam) update,
and CPO's (conjugate gradient on exact Fisher-vector products) next to them.

Same batch, same network, same minibatching, measured side by side in one run (the two
learners' repeats are interleaved, so load from other processes hits both alike):

    .venv/bin/python bench/update_cost.py            # 64x64 and 256x256, prints ratios
    .venv/bin/python bench/update_cost.py --inv-steps 1,4   # eigh every step vs every 4
    .venv/bin/python bench/update_cost.py --smoke    # tiny, for the test suite

One "update" is ``Learner.update(episodes=...)``: the learner connector (GAE for reward
and cost), then ``num_epochs`` passes over the minibatches. PPO-Lagrangian takes one Adam
step of its joint loss per minibatch; KFCPO takes a critic Adam step and a natural-gradient
policy step per minibatch (no KL rollback: ``target_kl`` is set out of reach so both do
the same number of steps).

The KFCPO breakdown is measured in the same run by timing its phases:

- ``grads``: the policy's one forward and one backward that give the reward gradient,
  the cost gradient and the per-sample Fisher statistics (what any policy-gradient method
  pays, not K-FAC's share);
- ``factors``: batch factors ``A = a^T a / n``, ``G = g^T g / n`` and the running average;
- ``eigh``: eigendecomposition of every factor (every minibatch);
- ``precond``: ``F^-1 g`` for the reward and the cost gradient, with their Fisher Gram;

``K-FAC share`` is the sum of the last three over the update's wall time. CPO takes one
policy step from the whole batch (two 15-iteration CG solves on exact Fisher-vector
products, the closed-form step, a line search) and then trains its critics on the same
minibatches for the same epochs; ``CG share`` is the CG solves' part of its update. Torch runs
with ``--threads`` intra-op threads (default 1: on a shared 2-core machine more threads
than free cores makes every matmul wait for the others and the timings meaningless).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from rllib_kfcpo import CPOConfig, KFCPOConfig, PPOLagConfig
from rllib_kfcpo.algorithms.cpo import metrics as cpo_metrics
from rllib_kfcpo.algorithms.cpo.cpo_torch_learner import CPOTorchLearner

PHASES = ("grads", "factors", "eigh", "precond")
KFAC_PHASES = PHASES[1:]
TIMESTEPS = {"safe_episode_cost_mean": 20.0, "safe_episode_len_mean": 1000.0}


def episodes(obs_dim: int, act_dim: int, n_episodes: int, length: int,
             seed: int = 0) -> tuple[list[SingleAgentEpisode], gym.Space, gym.Space]:
    """Random episodes with a consistent behaviour policy (mean 0, log-std -0.5)."""
    rng = np.random.default_rng(seed)
    obs_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space = gym.spaces.Box(-1, 1, (act_dim,), np.float32)
    out = []
    for _ in range(n_episodes):
        actions = rng.normal(0, np.exp(-0.5), size=(length, act_dim)).astype(np.float32)
        logp = (-0.5 * (actions / np.exp(-0.5)) ** 2 + 0.5 - 0.5 * np.log(2 * np.pi)).sum(-1)
        out.append(SingleAgentEpisode(
            observation_space=obs_space, action_space=act_space,
            observations=list(rng.normal(size=(length + 1, obs_dim)).astype(np.float32)),
            actions=list(actions), rewards=list(rng.normal(size=length)),
            infos=[{}] + [{"cost": float(c)} for c in rng.integers(0, 2, size=length)],
            truncated=True, len_lookback_buffer=0,
            extra_model_outputs={
                Columns.ACTION_DIST_INPUTS: list(np.tile(
                    np.concatenate([np.zeros(act_dim), np.full(act_dim, -0.5)]).astype(
                        np.float32), (length, 1))),
                Columns.ACTION_LOGP: list(logp.astype(np.float32)),
            },
        ))
    return out, obs_space, act_space


class PhaseTimer:
    """Times KFCPO's phases of one learner (wraps its policy-gradient pass, reads the
    preconditioner's own per-phase clocks)."""

    def __init__(self, learner: Any) -> None:
        self.kfac = learner.kfac["default_policy"]
        self.grads = 0.0
        original = learner._policy_gradients

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.grads += time.perf_counter() - started

        learner._policy_gradients = timed

    def snapshot(self) -> dict[str, float]:
        """Cumulative seconds per phase so far."""
        s = self.kfac.seconds
        return {"grads": self.grads, "factors": s["capture_fold"], "eigh": s["eigh"],
                "precond": s["precondition"]}


def update_kwargs(learner: Any, minibatch: int, epochs: int) -> dict[str, Any]:
    """``Learner.update`` arguments as each algorithm's training step passes them (CPO:
    the whole batch in one call; its critics use the config's epochs and minibatches)."""
    if isinstance(learner, CPOTorchLearner):
        return {"num_epochs": 1}
    return {"num_epochs": epochs, "minibatch_size": minibatch}


def build(config: Any, eps: list, spaces: dict, minibatch: int) -> Any:
    """A local learner of ``config``, warmed up with one single-epoch update."""
    learner = config.build_learner(spaces=spaces)
    learner.update(episodes=eps, timesteps=TIMESTEPS, **update_kwargs(learner, minibatch, 1))
    return learner


def timed_update(learner: Any, eps: list, minibatch: int, epochs: int) -> float:
    """Wall seconds of one ``learner.update`` of ``epochs`` passes."""
    return timed_update_with_results(learner, eps, minibatch, epochs)[0]


def timed_update_with_results(learner: Any, eps: list, minibatch: int,
                              epochs: int) -> tuple[float, dict[str, Any]]:
    """Wall seconds and the results of one ``learner.update``."""
    started = time.perf_counter()
    results = learner.update(episodes=eps, timesteps=TIMESTEPS,
                             **update_kwargs(learner, minibatch, epochs))
    return time.perf_counter() - started, results


def compare(hidden: list[int], eps: list, spaces: dict, n_steps: int, minibatch: int,
            epochs: int, repeats: int, inv_steps: int) -> dict[str, Any]:
    """Interleaved repeats of a PPOLag and a KFCPO update; medians and the K-FAC shares."""
    model = {"fcnet_hiddens": hidden}
    common = dict(train_batch_size=n_steps, minibatch_size=minibatch, num_epochs=epochs)
    ppo = build(PPOLagConfig().training(**common).rl_module(model_config=model),
                eps, spaces, minibatch)
    kfcpo = build(KFCPOConfig().training(target_kl=1e9, kfac_inv_update_steps=inv_steps,
                                         **common)
                  .rl_module(model_config=model), eps, spaces, minibatch)
    cpo = build(CPOConfig().training(**common).rl_module(model_config=model),
                eps, spaces, minibatch)
    timer = PhaseTimer(kfcpo)
    t_ppo, t_kf, t_cpo, cg, shares = [], [], [], [], {p: [] for p in PHASES}
    for _ in range(repeats):
        t_ppo.append(timed_update(ppo, eps, minibatch, epochs))
        before = timer.snapshot()
        elapsed = timed_update(kfcpo, eps, minibatch, epochs)
        after = timer.snapshot()
        t_kf.append(elapsed)
        for phase in PHASES:
            shares[phase].append((after[phase] - before[phase]) / elapsed)
        elapsed, results = timed_update_with_results(cpo, eps, minibatch, epochs)
        t_cpo.append(elapsed)
        cg.append(float(results["default_policy"][cpo_metrics.CG_SECONDS].peek()) / elapsed)
    out = {"ppo": statistics.median(t_ppo), "kfcpo": statistics.median(t_kf),
           "ratio": statistics.median(k / p for k, p in zip(t_kf, t_ppo, strict=True)),
           "cpo": statistics.median(t_cpo),
           "cpo_ratio": statistics.median(c / p for c, p in zip(t_cpo, t_ppo, strict=True)),
           "cg": statistics.median(cg)}
    out.update({p: statistics.median(v) for p, v in shares.items()})
    out["kfac"] = sum(out[p] for p in KFAC_PHASES)
    return out


def main() -> None:
    """Parses the arguments and prints one row per network size."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--sizes", default="64x64,256x256")
    parser.add_argument("--inv-steps", default=None,
                        help="comma-separated kfac_inv_update_steps values, one row each "
                             "(default: KFCPO's default only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = ([[16, 16]] if args.smoke else
             [[int(w) for w in s.split("x")] for s in args.sizes.split(",")])
    n_eps, length, minibatch, epochs, repeats = (2, 50, 50, 1, 1) if args.smoke else (
        8, 1000, 2000, 2, 5)
    repeats = args.repeats or repeats
    eps, obs_space, act_space = episodes(60, 2, n_eps, length)  # PointGoal1-like dims
    spaces = {"default_policy": (obs_space, act_space)}
    print(f"batch {n_eps * length} steps, minibatch {minibatch}, {epochs} epoch(s), "
          f"obs 60, act 2, torch threads {torch.get_num_threads()}, median of {repeats} "
          "interleaved repeats", flush=True)
    print(f"{'network':>10} | {'PPOLag s':>9} | {'KFCPO s':>9} | {'KFCPO/PPOLag':>12} | "
          f"{'K-FAC share':>11} | {'grads':>6} | {'factors':>7} | {'eigh':>6} | "
          f"{'precond':>7} | {'CPO s':>7} | {'CPO/PPOLag':>10} | {'CG share':>8}")
    default_inv = KFCPOConfig().kfac_inv_update_steps
    inv_values = ([int(v) for v in args.inv_steps.split(",")] if args.inv_steps
                  else [default_inv])
    for hidden, inv_steps in ((h, i) for h in sizes for i in inv_values):
        r = compare(hidden, eps, spaces, n_eps * length, minibatch, epochs, repeats, inv_steps)
        name = "x".join(map(str, hidden)) + ("" if inv_steps == default_inv
                                             else f" inv{inv_steps}")
        print(f"{name:>10} | {r['ppo']:9.3f} | {r['kfcpo']:9.3f} | "
              f"{r['ratio']:12.2f} | {r['kfac']:11.1%} | {r['grads']:6.1%} | "
              f"{r['factors']:7.1%} | {r['eigh']:6.1%} | {r['precond']:7.1%} | "
              f"{r['cpo']:7.3f} | {r['cpo_ratio']:10.2f} | {r['cg']:8.1%}", flush=True)
    print("target: KFCPO/PPOLag <= 1.15")


if __name__ == "__main__":
    main()
