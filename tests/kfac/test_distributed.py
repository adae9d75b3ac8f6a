"""Two gloo processes, each with half of every batch, equal one process with the full batch.

Each rank captures the true-Fisher statistics of its half, ``update_factors`` averages the
batch factors with one all-reduce, the surrogate gradient is averaged with
``all_reduce_mean_``, and the preconditioned gradient is compared with a single process that
sees the whole batch. Tolerance: float64, rtol 1e-10 / atol 1e-12 (only the summation order
differs); the two ranks must agree bit for bit.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rllib_kfcpo.kfac import KFACPreconditioner, all_reduce_mean_
from tests.kfac.reference import LOG_STD_FISHER, capture, make_batch, make_policy

BATCH = 8
WORLD = 2


def _learner(rank: int, world: int) -> dict[str, list[torch.Tensor]]:
    """One learner's K-FAC work on its slice of each batch (world=1: the whole batch)."""
    policy = make_policy(0)
    kfac = KFACPreconditioner(policy.layers, [(policy.log_std, LOG_STD_FISHER)],
                              damping=1e-2, decay=0.8, burn_in=1)
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    for k in range(3):  # one burn-in update, then two EMA updates
        obs, actions = make_batch(policy, BATCH, seed=k)
        assert capture(kfac, policy, obs[rows], actions[rows])
    obs, actions = make_batch(policy, BATCH, seed=99)
    advantages = torch.randn(BATCH, generator=torch.Generator().manual_seed(5),
                             dtype=torch.float64)
    surrogate = (policy(obs[rows]).log_prob(actions[rows]).sum(-1) * advantages[rows]).mean()
    grads = list(torch.autograd.grad(surrogate, kfac.params))
    all_reduce_mean_(grads)
    natural = kfac.precondition(grads)
    return {
        "factors": [t.clone() for b in kfac.blocks for t in (b.A, b.G)],
        "grads": grads,
        "natural": natural,
        "quad": [kfac.quad(natural)],
    }


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        torch.save(_learner(rank, WORLD), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, deadline_s: float = 90.0) -> None:
    context = mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD,
                       join=False)
    deadline = time.monotonic() + deadline_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"gloo workers did not finish within {deadline_s} s")


def test_two_gloo_learners_equal_one_full_batch_learner(tmp_path):
    assert not dist.is_initialized()  # single process: all_reduce_mean_ is a no-op here
    _spawn(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = _learner(0, 1)
    for key in ("factors", "grads", "natural", "quad"):
        for got0, got1, want in zip(ranks[0][key], ranks[1][key], single[key], strict=True):
            assert torch.equal(got0, got1), f"ranks disagree on {key}"
            torch.testing.assert_close(got0, want, rtol=1e-10, atol=1e-12, msg=key)
