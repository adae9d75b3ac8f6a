"""One forward, one backward: ``record()`` + ``score_gradients()`` + ``natural_directions()``.

Every expected value is computed independently: parameter gradients by a separate full
autograd backward per loss, Fisher factors from per-sample brute force (``reference.py``),
naturals and Gram entries against ``precondition`` and a dense ``kron(A, G)`` metric.
"""

from __future__ import annotations

import io

import pytest
import torch

from rllib_kfcpo.kfac import KFACPreconditioner
from tests.kfac.reference import (
    LOG_STD_FISHER,
    TinyPolicy,
    layer_matrix,
    make_batch,
    make_policy,
    per_sample,
    vec,
)

DAMPING = 1e-2
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _kfac(policy: TinyPolicy, **kwargs) -> KFACPreconditioner:
    return KFACPreconditioner(policy.layers, [(policy.log_std, LOG_STD_FISHER)],
                              damping=DAMPING, **kwargs)


def _outputs(policy: TinyPolicy, obs: torch.Tensor) -> torch.Tensor:
    """``[mean, log_std]`` per row, as the RLlib module's action-distribution inputs."""
    mean = policy.fc2(torch.tanh(policy.fc1(obs)))
    return torch.cat([mean, policy.log_std.expand_as(mean)], dim=-1)


def _logp(outputs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    mean, log_std = outputs.chunk(2, dim=-1)
    return torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)


def _score_pass(policy, kfac, obs, actions, weights, **fisher):
    with kfac.record():
        outputs = _outputs(policy, obs)
    leaf = outputs.detach().requires_grad_(True)
    (score,) = torch.autograd.grad(_logp(leaf, actions).sum(), leaf)
    return kfac.score_gradients(outputs, score, weights, **fisher)


def _row_weights(n: int, count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, n, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_equal_one_full_backward_per_loss(bias):
    policy = make_policy(0, bias=bias)
    kfac = _kfac(policy)
    obs, actions = make_batch(policy, 12, seed=1)
    weights = _row_weights(12, 3, seed=2)
    got = _score_pass(policy, kfac, obs, actions, weights)
    assert len(got) == 3
    for k in range(3):
        loss = (weights[k] * _logp(_outputs(policy, obs), actions)).sum()
        expected = torch.autograd.grad(loss, kfac.params)
        assert [t.shape for t in got[k]] == [p.shape for p in kfac.params]
        for g, e in zip(got[k], expected, strict=True):
            torch.testing.assert_close(g, e, **TIGHT)
    # No hook stays behind: a later forward/backward records nothing.
    for layer in policy.layers:
        assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_fisher_statistics_equal_per_sample_brute_force_with_weights_and_rows():
    policy = make_policy(1)
    kfac = _kfac(policy, burn_in=1)
    obs, actions = make_batch(policy, 10, seed=3)
    rows = torch.tensor([True] * 7 + [False] * 3)
    importance = torch.linspace(0.5, 1.5, 10, dtype=torch.float64)
    _score_pass(policy, kfac, obs, actions, _row_weights(10, 2, seed=4),
                fisher_rows=rows, fisher_weights=importance)
    assert kfac.update_factors()
    a, g, _ = per_sample(policy, obs, actions)
    w = importance[rows]
    for block, a_l, g_l in zip(kfac.blocks, a, g, strict=True):
        a_r, g_r = a_l[rows], g_l[rows]
        A = sum(torch.outer(r, r) for r in a_r) / len(a_r)
        G = sum(wi * torch.outer(r, r) for wi, r in zip(w, g_r, strict=True)) / w.sum()
        torch.testing.assert_close(block.A, A, **TIGHT)
        torch.testing.assert_close(block.G, G, **TIGHT)


def test_fisher_statistics_match_the_capture_path():
    """Unit weights, every row: the same factors as the hook-based capture()."""
    policy = make_policy(2)
    obs, actions = make_batch(policy, 9, seed=5)
    one, two = _kfac(policy), _kfac(policy)
    _score_pass(policy, one, obs, actions, _row_weights(9, 1, seed=6),
                fisher_rows=torch.ones(9, dtype=torch.bool))
    assert one.update_factors()
    with two.capture():
        torch.autograd.grad(-_logp(_outputs(policy, obs), actions).mean(), two.params)
    assert two.update_factors()
    for b1, b2 in zip(one.blocks, two.blocks, strict=True):
        torch.testing.assert_close(b1.A, b2.A, **TIGHT)
        torch.testing.assert_close(b1.G, b2.G, **TIGHT)


def test_natural_directions_equal_precondition_and_the_dense_fisher_gram():
    policy = make_policy(3)
    kfac = _kfac(policy)
    obs, actions = make_batch(policy, 16, seed=7)
    grads = _score_pass(policy, kfac, obs, actions, _row_weights(16, 2, seed=8),
                        fisher_rows=torch.ones(16, dtype=torch.bool))
    assert kfac.update_factors()
    naturals, gram = kfac.natural_directions(grads)
    for g, n in zip(grads, naturals, strict=True):
        for a, b in zip(kfac.precondition(g), n, strict=True):
            torch.testing.assert_close(a, b, **TIGHT)

    def dense(x, y):  # independent: explicit kron(A, G) per layer, 2 per log-std entry
        total = (x[-1] * LOG_STD_FISHER * y[-1]).sum()
        for i, block in enumerate(kfac.blocks):
            xm, ym = layer_matrix(x[2 * i], x[2 * i + 1]), layer_matrix(y[2 * i], y[2 * i + 1])
            total = total + vec(xm) @ torch.kron(block.A, block.G) @ vec(ym)
        return total

    for k in range(2):
        for j in range(2):
            torch.testing.assert_close(gram[k, j], dense(naturals[k], naturals[j]),
                                       rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(gram[k, j], kfac.inner(naturals[k], naturals[j]),
                                       rtol=1e-9, atol=1e-12)


def test_stale_decomposition_is_used_until_decompose_and_survives_a_checkpoint():
    policy = make_policy(4)
    kfac = _kfac(policy, burn_in=0, decay=0.5)
    weights = _row_weights(8, 1, seed=9)
    rows = torch.ones(8, dtype=torch.bool)
    _score_pass(policy, kfac, *make_batch(policy, 8, seed=10), weights, fisher_rows=rows)
    assert kfac.update_factors()
    probe = [torch.randn(p.shape, dtype=p.dtype) for p in kfac.params]
    before = kfac.precondition(probe)
    _score_pass(policy, kfac, *make_batch(policy, 8, seed=11), weights, fisher_rows=rows)
    assert kfac.update_factors(decompose=False)
    assert kfac.diagnostics()["factor_updates"] == 2
    stale = kfac.precondition(probe)  # the factors moved, the decomposition did not
    for a, b in zip(before, stale, strict=True):
        assert torch.equal(a, b)

    buffer = io.BytesIO()
    torch.save(kfac.state_dict(), buffer)
    buffer.seek(0)
    clone = _kfac(make_policy(4), burn_in=0, decay=0.5)
    clone.load_state_dict(torch.load(buffer))
    for a, b in zip(clone.precondition(probe), stale, strict=True):
        assert torch.equal(a, b)  # the restored preconditioner is the stale one

    assert kfac.decompose()
    fresh = kfac.precondition(probe)
    assert not all(torch.equal(a, b) for a, b in zip(fresh, stale, strict=True))
    block = kfac.blocks[0]
    torch.testing.assert_close(block.qa @ torch.diag(block.la) @ block.qa.T, block.A,
                               rtol=1e-9, atol=1e-12)


def test_misuse_is_named():
    policy = make_policy(5)
    kfac = _kfac(policy)
    obs, actions = make_batch(policy, 6, seed=12)
    with pytest.raises(RuntimeError, match="No forward recorded"):
        kfac.score_gradients(torch.zeros(6, 4), torch.zeros(6, 4), torch.zeros(1, 6))
    with kfac.record():
        outputs = _outputs(policy, obs)
    with pytest.raises(ValueError, match=r"weights must be \(K, 6\)"):
        kfac.score_gradients(outputs, torch.zeros_like(outputs), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="same \\(rows, features\\) shape"):
        kfac.score_gradients(outputs, torch.zeros(6, 3), torch.zeros(1, 6))
    with kfac.record():  # a forward of other rows than the outputs handed in
        _outputs(policy, obs[:4])
    with pytest.raises(RuntimeError, match="saw 4 rows"):
        kfac.score_gradients(outputs, torch.zeros_like(outputs), torch.zeros(1, 6))


def test_record_and_capture_windows_do_not_nest_and_leave_no_hooks():
    policy = make_policy(6)
    kfac = _kfac(policy)
    with kfac.record(), pytest.raises(RuntimeError, match="cannot be nested"):
        with kfac.capture():
            pass
    with kfac.capture(), pytest.raises(RuntimeError, match="cannot be nested"):
        with kfac.record():
            pass
    for layer in policy.layers:
        assert not (layer._forward_hooks or layer._forward_pre_hooks
                    or layer._backward_hooks)
