"""KFACPreconditioner bookkeeping: capture hygiene, running averages, numerical safety,
state round trip and argument validation."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from rllib_kfcpo.kfac import KFACPreconditioner
from tests.kfac.reference import (
    LOG_STD_FISHER,
    capture,
    fisher_loss,
    make_batch,
    make_policy,
)

TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def _kfac(policy, **kwargs) -> KFACPreconditioner:
    return KFACPreconditioner(policy.layers, [(policy.log_std, LOG_STD_FISHER)], **kwargs)


def _factors(kfac: KFACPreconditioner) -> list[torch.Tensor]:
    return [t.clone() for b in kfac.blocks for t in (b.A, b.G)]


def _assert_equal(xs, ys) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert torch.equal(x, y)


def _probe(kfac: KFACPreconditioner) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in kfac.params]
    return kfac.precondition(grads)


def _analytic_batch_factors(policy, obs, actions) -> list[torch.Tensor]:
    """[A1, G1, A2, G2] by hand (no autograd): Gaussian log-likelihood through tanh."""
    with torch.no_grad():
        ones = torch.ones(obs.shape[0], 1, dtype=obs.dtype)
        h1 = torch.tanh(obs @ policy.fc1.weight.T + policy.fc1.bias)
        mu = h1 @ policy.fc2.weight.T + policy.fc2.bias
        g2 = (mu - actions) / policy.log_std.exp() ** 2  # d(-log N)/d mu, per sample
        g1 = (g2 @ policy.fc2.weight) * (1 - h1**2)
        a1, a2 = torch.cat([obs, ones], 1), torch.cat([h1, ones], 1)
        n = obs.shape[0]
        return [a1.T @ a1 / n, g1.T @ g1 / n, a2.T @ a2 / n, g2.T @ g2 / n]


# --- Capture hygiene ------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_backward_outside_capture_changes_nothing():
    policy = make_policy(0)
    obs_x, act_x = make_batch(policy, 10, seed=1)
    obs_y, act_y = make_batch(policy, 7, seed=2)

    # Reference: only X is captured.
    ref_policy = copy.deepcopy(policy)
    reference = _kfac(ref_policy)
    assert capture(reference, ref_policy, obs_x, act_x)

    kfac = _kfac(policy)
    # Outside capture: no hook at all, nothing recorded, nothing to update from.
    for layer in policy.layers:
        assert not layer._forward_pre_hooks and not layer._backward_hooks
    fisher_loss(policy, obs_y, act_y).backward()
    assert not any(s.has_capture for s in kfac.stats)
    with pytest.raises(RuntimeError, match="No K-FAC"):
        kfac.update_factors()
    _assert_equal(_factors(kfac), [torch.eye(n, dtype=torch.float64) for n in (4, 4, 5, 2)])

    # Capture X, then a surrogate forward/backward on Y outside: the update sees only X.
    with kfac.capture():
        torch.autograd.grad(fisher_loss(policy, obs_x, act_x), kfac.params)
    (-policy(obs_y).log_prob(act_y).sum(-1) * torch.randn(7, dtype=torch.float64)).mean() \
        .backward()
    for layer in policy.layers:
        assert not layer._forward_pre_hooks and not layer._backward_hooks
    assert kfac.update_factors()
    for got, want in zip(_factors(kfac), _factors(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    # A forward inside capture whose backward runs outside records no gradient.
    with kfac.capture():
        loss = fisher_loss(policy, obs_y, act_y)
    loss.backward()
    with pytest.raises(RuntimeError, match="No K-FAC output gradient captured"):
        kfac.update_factors()
    for got, want in zip(_factors(kfac), _factors(reference), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    with kfac.capture(), pytest.raises(RuntimeError, match="nested"):
        with kfac.capture():
            pass


# --- Running average ------------------------------------------------------------------
@pytest.mark.parametrize("burn_in", [0, 2, 3])
def test_running_average_burn_in_then_ema(burn_in):
    decay = 0.9
    policy = make_policy(0)
    kfac = _kfac(policy, decay=decay, burn_in=burn_in)
    running = [torch.eye(n, dtype=torch.float64) for n in (4, 4, 5, 2)]
    for k in range(1, 6):
        obs, actions = make_batch(policy, 6 + k, seed=10 + k)
        batch = _analytic_batch_factors(policy, obs, actions)
        assert capture(kfac, policy, obs, actions)
        weight = 1.0 / k if k <= burn_in else 1.0 - decay
        running = [(1 - weight) * r + weight * b for r, b in zip(running, batch, strict=True)]
        for got, want in zip(_factors(kfac), running, strict=True):
            torch.testing.assert_close(got, want, **TIGHT)
    assert kfac.num_updates == 5


def test_burn_in_is_a_plain_mean():
    policy = make_policy(0)
    kfac = _kfac(policy, burn_in=3)
    batches = [make_batch(policy, 5 + k, seed=30 + k) for k in range(3)]
    expected = [torch.zeros(n, n, dtype=torch.float64) for n in (4, 4, 5, 2)]
    for obs, actions in batches:
        assert capture(kfac, policy, obs, actions)
        batch = _analytic_batch_factors(policy, obs, actions)
        expected = [e + b / 3 for e, b in zip(expected, batch, strict=True)]
    for got, want in zip(_factors(kfac), expected, strict=True):
        torch.testing.assert_close(got, want, **TIGHT)


# --- Numerical safety -----------------------------------------------------------------
def test_non_finite_capture_is_skipped_and_counted():
    policy = make_policy(0)
    kfac = _kfac(policy, burn_in=10)
    obs, actions = make_batch(policy, 8, seed=1)
    assert capture(kfac, policy, obs, actions)
    factors, probe = _factors(kfac), _probe(kfac)

    bad_obs = obs.clone()
    bad_obs[3, 1] = float("nan")
    assert capture(kfac, policy, bad_obs, actions) is False
    diag = kfac.diagnostics()
    assert (diag["skipped_updates"], diag["factor_updates"], diag["eigh_failures"]) == (1, 1, 0)
    _assert_equal(_factors(kfac), factors)
    _assert_equal(_probe(kfac), probe)

    # The next good update is the 2nd: weight 1/2 (the skipped one does not count).
    obs2, actions2 = make_batch(policy, 8, seed=2)
    assert capture(kfac, policy, obs2, actions2)
    batch = _analytic_batch_factors(policy, obs2, actions2)
    expected = [(f + b) / 2 for f, b in zip(factors, batch, strict=True)]
    for got, want in zip(_factors(kfac), expected, strict=True):
        torch.testing.assert_close(got, want, **TIGHT)
    assert kfac.diagnostics()["factor_updates"] == 2


@pytest.mark.parametrize("failure", ["raises", "non_finite"])
def test_eigh_failure_keeps_previous_decomposition(monkeypatch, failure):
    policy = make_policy(0)
    kfac = _kfac(policy)
    obs, actions = make_batch(policy, 8, seed=1)
    assert capture(kfac, policy, obs, actions)
    factors, probe = _factors(kfac), _probe(kfac)
    real_eigh = torch.linalg.eigh

    def broken_eigh(matrix, *args, **kwargs):
        if failure == "raises":
            raise torch.linalg.LinAlgError("injected eigh failure")
        values, vectors = real_eigh(matrix, *args, **kwargs)
        return values * float("nan"), vectors

    obs2, actions2 = make_batch(policy, 8, seed=2)
    with monkeypatch.context() as patch:
        patch.setattr(torch.linalg, "eigh", broken_eigh)
        assert capture(kfac, policy, obs2, actions2) is False
    diag = kfac.diagnostics()
    assert (diag["eigh_failures"], diag["factor_updates"], diag["skipped_updates"]) == (1, 1, 0)
    # Factors and decompositions both as before (so a checkpoint restores the same thing).
    _assert_equal(_factors(kfac), factors)
    _assert_equal(_probe(kfac), probe)

    assert capture(kfac, policy, obs2, actions2)  # eigh works again: the update applies
    assert kfac.diagnostics()["factor_updates"] == 2


# --- State ----------------------------------------------------------------------------
def test_state_dict_round_trip_is_bit_identical():
    policy = make_policy(0)
    kfac = _kfac(policy, burn_in=2, decay=0.9, damping=3e-3)
    for k in range(4):  # burn-in and EMA updates
        assert capture(kfac, policy, *make_batch(policy, 9, seed=40 + k))
    bad_obs, bad_actions = make_batch(policy, 9, seed=50)
    bad_obs[0, 0] = float("inf")
    assert not capture(kfac, policy, bad_obs, bad_actions)
    kfac.damping = 5e-3

    buffer = io.BytesIO()
    torch.save(kfac.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)

    clone_policy = make_policy(0)
    clone_policy.load_state_dict(policy.state_dict())
    clone = _kfac(clone_policy)  # other hyperparameters: only damping is in the state
    clone.load_state_dict(state)
    _assert_equal(_probe(clone), _probe(kfac))
    gen = torch.Generator().manual_seed(3)
    u = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in kfac.params]
    assert torch.equal(clone.quad(u), kfac.quad(u))
    for key in ("damping", "factor_updates", "skipped_updates", "eigh_failures",
                "cond_A_max", "cond_G_mean"):
        assert clone.diagnostics()[key] == kfac.diagnostics()[key], key

    # The state is a copy: later updates of the original do not change it.
    saved = [t.clone() for b in state["blocks"] for t in (b["A"], b["G"])]
    assert capture(kfac, policy, *make_batch(policy, 9, seed=60))
    _assert_equal([t for b in state["blocks"] for t in (b["A"], b["G"])], saved)

    with pytest.raises(ValueError, match="from another network"):
        KFACPreconditioner([nn.Linear(3, 4)]).load_state_dict(state)


# --- Validation -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"damping": 0.0}, r"damping=0.0 is invalid: it must be a finite number > 0"),
        ({"damping": -1e-3}, r"damping=-0.001 is invalid"),
        ({"damping": math.nan}, r"damping=nan is invalid"),
        ({"damping": math.inf}, r"damping=inf is invalid"),
        ({"damping": "1e-2"}, r"damping='1e-2' is invalid"),
        ({"damping": True}, r"damping=True is invalid"),
        ({"decay": 0.0}, r"decay=0.0 is invalid: it must be in \(0, 1\)"),
        ({"decay": 1.0}, r"decay=1.0 is invalid: it must be in \(0, 1\)"),
        ({"decay": math.nan}, r"decay=nan is invalid"),
        ({"burn_in": -1}, r"burn_in=-1 is invalid: it must be an integer >= 0"),
        ({"burn_in": 2.5}, r"burn_in=2.5 is invalid"),
        ({"burn_in": True}, r"burn_in=True is invalid"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KFACPreconditioner([nn.Linear(3, 2)], **kwargs)


def test_layer_and_diagonal_validation():
    layer = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"layers=\[\] is invalid: give at least one nn.Linear"):
        KFACPreconditioner([])
    with pytest.raises(ValueError, match=r"layers\[1\]=Tanh is invalid: every layer must be "
                                         r"an nn.Linear"):
        KFACPreconditioner([layer, nn.Tanh()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="appears more than once"):
        KFACPreconditioner([layer, layer])
    with pytest.raises(ValueError, match=r"diagonal\[0\] is invalid: that parameter is already"):
        KFACPreconditioner([layer], [(layer.bias, 2.0)])
    with pytest.raises(ValueError, match=r"diagonal\[0\] \(Parameter\) is invalid: it must be a "
                                         r"\(parameter, diagonal Fisher\) pair"):
        KFACPreconditioner([layer], [nn.Parameter(torch.zeros(2))])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"diagonal Fisher=-2.0 is invalid"):
        KFACPreconditioner([layer], [(nn.Parameter(torch.zeros(2)), -2.0)])
    kfac = KFACPreconditioner([layer])
    with pytest.raises(ValueError, match=r"damping=0 is invalid"):
        kfac.damping = 0
    kfac.damping = 0.1
    assert kfac.damping == 0.1
    with pytest.raises(ValueError, match="grads has 1 tensors, expected 2"):
        kfac.precondition([torch.zeros(2, 3)])


def test_params_order_and_diagnostics_keys():
    policy = make_policy(0)
    kfac = _kfac(policy)
    expected = [policy.fc1.weight, policy.fc1.bias, policy.fc2.weight, policy.fc2.bias,
                policy.log_std]
    assert len(kfac.params) == len(expected)
    assert all(a is b for a, b in zip(kfac.params, expected, strict=True))
    kfac.params.append(policy.log_std)  # a copy: the canonical list is unchanged
    assert len(kfac.params) == 5
    assert capture(kfac, policy, *make_batch(policy, 8, seed=0))
    _probe(kfac)
    diag = kfac.diagnostics()
    assert set(diag) == {
        "damping", "cond_A_max", "cond_A_mean", "cond_G_max", "cond_G_mean",
        "factor_updates", "skipped_updates", "eigh_failures", "seconds_capture_fold",
        "seconds_eigh", "seconds_precondition",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in diag.values())
    assert diag["seconds_eigh"] > 0 and diag["seconds_precondition"] > 0


def test_preconditioner_owns_the_inversion_schedule():
    """burn_in=2, inv_update_steps=3: updates 1-2 decompose (burn-in), then update k
    decomposes when k-1 is a multiple of 3 (k = 4, 7, ...), like kfac-pytorch's
    inv_update_steps; the others keep the previous eigenbasis. An explicit decompose=
    overrides the schedule."""
    policy = make_policy(0)
    kfac = _kfac(policy, burn_in=2, inv_update_steps=3)
    decomposed = []
    for k in range(1, 9):
        obs, act = make_batch(policy, 6, seed=k)
        before = kfac.blocks[0].qa.clone()
        assert capture(kfac, policy, obs, act)
        decomposed.append(not torch.equal(kfac.blocks[0].qa, before))
    assert decomposed == [True, True, False, True, False, False, True, False]
    obs, act = make_batch(policy, 6, seed=99)
    before = kfac.blocks[0].qa.clone()
    with kfac.capture():
        torch.autograd.grad(fisher_loss(policy, obs, act), kfac.params)
    assert kfac.update_factors(decompose=True)  # k=9 would not decompose on the schedule
    assert not torch.equal(kfac.blocks[0].qa, before)
    with pytest.raises(ValueError, match="inv_update_steps=0 is invalid"):
        _kfac(policy, inv_update_steps=0)
