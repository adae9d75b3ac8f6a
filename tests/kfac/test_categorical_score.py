"""K-FAC statistics of a categorical policy, against per-sample brute force (float64).

A categorical policy ``pi(.|s) = softmax(logits(s))`` has no log-std block: the
preconditioner covers the logits network's Linear layers only, and the score handed to
``score_gradients`` is ``d log pi(a|s) / d logits = onehot(a) - p`` (from RLlib's
``TorchCategorical``, as the learner computes it). Expected values are computed
independently: the score and the softmax Fisher by enumerating every action, per-sample
layer inputs and output gradients by one functional forward and one autograd call per
sample.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ray.rllib.core.distribution.torch.torch_distribution import TorchCategorical
from torch import nn

from rllib_kfcpo.kfac import KFACPreconditioner

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
OBS, HIDDEN, ACTIONS = 3, 5, 4


class TinyCategorical(nn.Module):
    """A 3 -> 5 -> 4 tanh MLP of logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(OBS, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, ACTIONS)

    @property
    def layers(self) -> list[nn.Linear]:
        return [self.fc1, self.fc2]

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(obs)))


def make(seed: int, n: int) -> tuple[TinyCategorical, torch.Tensor, torch.Tensor]:
    """A float64 policy (logits far from uniform), states and actions sampled from it."""
    torch.manual_seed(seed)
    policy = TinyCategorical().double()
    with torch.no_grad():
        policy.fc2.weight.mul_(3.0)
    gen = torch.Generator().manual_seed(seed + 100)
    obs = torch.randn(n, OBS, generator=gen, dtype=F64)
    with torch.no_grad():
        probs = torch.softmax(policy(obs), -1)
    actions = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    return policy, obs, actions


def score_pass(policy, kfac, obs, actions, weights, **fisher):
    """The learner's path: record the logits, score from TorchCategorical, one backward."""
    with kfac.record():
        logits = policy(obs)
    leaf = logits.detach().requires_grad_(True)
    logp = TorchCategorical.from_logits(leaf).logp(actions)
    (score,) = torch.autograd.grad(logp.sum(), leaf)
    return score, kfac.score_gradients(logits, score, weights, **fisher)


def per_sample(policy: TinyCategorical, obs: torch.Tensor, actions: torch.Tensor):
    """Per-sample homogeneous inputs ``a``, output gradients ``g`` of log pi(a_i|s_i) and
    parameter gradients of every layer, one autograd call per sample."""
    a_rows, g_rows, p_rows = [[], []], [[], []], [[], []]
    for i in range(obs.shape[0]):
        h, outputs = obs[i], []
        for j, layer in enumerate(policy.layers):
            a_rows[j].append(torch.cat([h.detach(), h.new_ones(1)]))
            z = F.linear(h, layer.weight, layer.bias)
            outputs.append(z)
            h = torch.tanh(z) if j == 0 else z
        logp = torch.log_softmax(h, -1)[actions[i]]
        params = [p for layer in policy.layers for p in (layer.weight, layer.bias)]
        grads = torch.autograd.grad(logp, outputs + params)
        for j in range(2):
            g_rows[j].append(grads[j])
            p_rows[j].append(grads[2 + 2 * j:4 + 2 * j])
    return [torch.stack(r) for r in a_rows], [torch.stack(r) for r in g_rows], p_rows


def test_score_is_onehot_minus_p_and_its_covariance_is_the_softmax_fisher():
    """E_a[score score^T] over all actions, weighted by p, equals diag(p) - p p^T; the
    score RLlib's TorchCategorical gives is onehot(a) - p; the mean score is 0."""
    logits = torch.randn(6, ACTIONS, generator=torch.Generator().manual_seed(0),
                         dtype=F64) * 2.0
    probs = torch.softmax(logits, -1)
    for row in range(logits.shape[0]):
        expected = torch.zeros(ACTIONS, ACTIONS, dtype=F64)
        mean_score = torch.zeros(ACTIONS, dtype=F64)
        for action in range(ACTIONS):
            leaf = logits[row].clone().requires_grad_(True)
            (score,) = torch.autograd.grad(torch.log_softmax(leaf, -1)[action], leaf)
            leaf2 = logits[row:row + 1].clone().requires_grad_(True)
            (rllib_score,) = torch.autograd.grad(
                TorchCategorical.from_logits(leaf2).logp(torch.tensor([action])).sum(), leaf2)
            torch.testing.assert_close(rllib_score[0], score, **TIGHT)
            torch.testing.assert_close(score, F.one_hot(torch.tensor(action), ACTIONS).to(F64)
                                       - probs[row], **TIGHT)
            expected += probs[row, action] * torch.outer(score, score)
            mean_score += probs[row, action] * score
        p = probs[row]
        torch.testing.assert_close(torch.diag(p) - torch.outer(p, p), expected, **TIGHT)
        torch.testing.assert_close(mean_score, torch.zeros_like(mean_score), **TIGHT)
        # Rank n-1: the all-ones direction (adding a constant to every logit) is null.
        torch.testing.assert_close(expected @ torch.ones(ACTIONS, dtype=F64),
                                   torch.zeros(ACTIONS, dtype=F64), **TIGHT)


def test_gradients_and_factors_equal_per_sample_brute_force():
    """score_gradients on the categorical score: K gradients equal one full backward per
    loss, per-sample layer gradients are g a^T, and the folded A, G are the (importance-
    weighted, masked) means of the per-sample a a^T and g g^T."""
    policy, obs, actions = make(0, 14)
    kfac = KFACPreconditioner(policy.layers, [], damping=1e-2, burn_in=1)
    assert kfac.params == [policy.fc1.weight, policy.fc1.bias, policy.fc2.weight,
                           policy.fc2.bias]  # no log-std block
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(2, 14, generator=gen, dtype=F64)
    rows = torch.tensor([True] * 11 + [False] * 3)
    importance = torch.rand(14, generator=gen, dtype=F64) + 0.5
    _, grads = score_pass(policy, kfac, obs, actions, weights, fisher_rows=rows,
                          fisher_weights=importance)
    for k in range(2):
        logp = torch.log_softmax(policy(obs), -1).gather(1, actions[:, None]).squeeze(1)
        expected = torch.autograd.grad((weights[k] * logp).sum(), kfac.params)
        for got, want in zip(grads[k], expected, strict=True):
            torch.testing.assert_close(got, want, **TIGHT)
    assert kfac.update_factors()

    a, g, param_grads = per_sample(policy, obs, actions)
    w = importance[rows]
    for j, block in enumerate(kfac.blocks):
        for i in range(14):  # per-sample gradient of [W, b] is the outer product g a^T
            matrix = torch.cat([param_grads[j][i][0], param_grads[j][i][1][:, None]], 1)
            torch.testing.assert_close(matrix, torch.outer(g[j][i], a[j][i]), **TIGHT)
        a_r, g_r = a[j][rows], g[j][rows]
        A = sum(torch.outer(r, r) for r in a_r) / len(a_r)
        G = sum(wi * torch.outer(r, r) for wi, r in zip(w, g_r, strict=True)) / w.sum()
        torch.testing.assert_close(block.A, A, **TIGHT)
        torch.testing.assert_close(block.G, G, **TIGHT)
    # The logits layer's output gradient is the score itself: onehot(a) - p.
    probs = torch.softmax(policy(obs), -1).detach()
    torch.testing.assert_close(g[1], F.one_hot(actions, ACTIONS).to(F64) - probs, **TIGHT)


def test_output_factor_over_all_actions_weighted_by_p_is_the_mean_softmax_fisher():
    """Every state repeated with every action, importance weights p(a|s): the logits
    layer's G is exactly mean_s (diag(p) - p p^T), the exact Fisher in logit space."""
    policy, obs, _ = make(2, 5)
    n = obs.shape[0]
    rep_obs = obs.repeat_interleave(ACTIONS, 0)
    rep_actions = torch.arange(ACTIONS).repeat(n)
    with torch.no_grad():
        probs = torch.softmax(policy(obs), -1)
    kfac = KFACPreconditioner(policy.layers, [], damping=1e-2, burn_in=1)
    score_pass(policy, kfac, rep_obs, rep_actions, torch.zeros(1, n * ACTIONS, dtype=F64),
               fisher_rows=torch.ones(n * ACTIONS, dtype=torch.bool),
               fisher_weights=probs.reshape(-1))
    assert kfac.update_factors()
    exact = sum(torch.diag(p) - torch.outer(p, p) for p in probs) / n
    torch.testing.assert_close(kfac.blocks[1].G, exact, **TIGHT)
    # A wrong weighting (uniform over actions) gives another matrix: the check can fail.
    uniform = KFACPreconditioner(policy.layers, [], damping=1e-2, burn_in=1)
    score_pass(policy, uniform, rep_obs, rep_actions, torch.zeros(1, n * ACTIONS, dtype=F64),
               fisher_rows=torch.ones(n * ACTIONS, dtype=torch.bool))
    assert uniform.update_factors()
    assert not torch.allclose(uniform.blocks[1].G, exact, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_natural_directions_of_a_categorical_policy_match_a_dense_kron_solve(seed):
    """naturals = (A (x) G + damping I)^-1 g per layer and gram = n_k' (A (x) G) n_l, with the
    Kronecker products formed explicitly (column-stacking vec)."""
    policy, obs, actions = make(seed, 20)
    damping = 1e-2
    kfac = KFACPreconditioner(policy.layers, [], damping=damping)
    weights = torch.randn(2, 20, generator=torch.Generator().manual_seed(seed), dtype=F64)
    _, grads = score_pass(policy, kfac, obs, actions, weights,
                          fisher_rows=torch.ones(20, dtype=torch.bool))
    assert kfac.update_factors()
    naturals, gram = kfac.natural_directions(grads)

    def vec(w, b):
        return torch.cat([w, b[:, None]], 1).T.reshape(-1)

    dense_naturals = []
    for k in range(2):
        flat = []
        for j, block in enumerate(kfac.blocks):
            fisher = torch.kron(block.A, block.G)
            v = vec(grads[k][2 * j], grads[k][2 * j + 1])
            solved = torch.linalg.solve(fisher + damping * torch.eye(len(v), dtype=F64), v)
            torch.testing.assert_close(vec(naturals[k][2 * j], naturals[k][2 * j + 1]),
                                       solved, rtol=1e-8, atol=1e-11)
            flat.append((solved, fisher))
        dense_naturals.append(flat)
    for k in range(2):
        for m in range(2):
            value = sum(nk @ fisher @ nm for (nk, fisher), (nm, _) in
                        zip(dense_naturals[k], dense_naturals[m], strict=True))
            torch.testing.assert_close(gram[k, m], value, rtol=1e-8, atol=1e-12)
