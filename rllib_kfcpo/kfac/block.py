"""Inverting and applying one curvature block.

:class:`KroneckerBlock` approximates the Fisher block of one Linear layer by A (x) G.
With eigendecompositions A = Qa diag(la) Qa^T and G = Qg diag(lg) Qg^T, the damped
natural gradient of a gradient matrix V = [grad_W, grad_b] (out x in+1) is

    F^-1 V = Qg [ (Qg^T V Qa) / (lg la^T + damping) ] Qa^T

which is exactly (A (x) G + damping I)^-1 vec(V) (vec stacks columns, so
vec(G V A) = (A (x) G) vec(V) since A is symmetric). The undamped metric is
<U, V>_F = sum(U * (G V A)).

:class:`DiagonalBlock` is a parameter whose exact Fisher is diagonal (a Gaussian's
state-independent log-std: 2 per dimension): F^-1 g = g / (f + damping).
"""

from __future__ import annotations

import torch


class KroneckerBlock:
    """Running Kronecker factors of one Linear layer, their eigenbases, and their use."""

    def __init__(self, in_dim: int, out_dim: int, has_bias: bool, *, device=None,
                 dtype=torch.float32) -> None:
        n_in = in_dim + int(has_bias)
        self.has_bias = has_bias
        self.A = torch.eye(n_in, device=device, dtype=dtype)
        self.G = torch.eye(out_dim, device=device, dtype=dtype)
        self.decompose()

    def fold(self, A: torch.Tensor, G: torch.Tensor, weight: float) -> None:
        """Running average: factor <- (1 - weight) factor + weight batch_factor."""
        self.A.mul_(1.0 - weight).add_(A, alpha=weight)
        self.G.mul_(1.0 - weight).add_(G, alpha=weight)

    def decompose(self) -> None:
        """Eigendecompositions of A and G (raises torch.linalg.LinAlgError on failure)."""
        la, qa = torch.linalg.eigh(self.A)
        lg, qg = torch.linalg.eigh(self.G)
        if not all(bool(torch.isfinite(t).all()) for t in (la, qa, lg, qg)):
            raise torch.linalg.LinAlgError("non-finite eigendecomposition")
        self.la, self.qa = la.clamp_min(0.0), qa
        self.lg, self.qg = lg.clamp_min(0.0), qg

    def _matrix(self, grad_w: torch.Tensor, grad_b: torch.Tensor | None) -> torch.Tensor:
        if self.has_bias:
            return torch.cat([grad_w, grad_b.unsqueeze(1)], dim=1)
        return grad_w

    def _split(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.has_bias:
            return v[:, :-1].contiguous(), v[:, -1].contiguous()
        return v, None

    def precondition(self, grad_w: torch.Tensor, grad_b: torch.Tensor | None,
                     damping: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(A (x) G + damping I)^-1 applied to [grad_w, grad_b]."""
        v = self._matrix(grad_w, grad_b)
        rotated = self.qg.T @ v @ self.qa
        rotated = rotated / (self.lg.unsqueeze(1) * self.la.unsqueeze(0) + damping)
        return self._split(self.qg @ rotated @ self.qa.T)

    def inner(self, u_w: torch.Tensor, u_b: torch.Tensor | None, v_w: torch.Tensor,
              v_b: torch.Tensor | None) -> torch.Tensor:
        """u^T (A (x) G) v with the undamped running factors."""
        u, v = self._matrix(u_w, u_b), self._matrix(v_w, v_b)
        return (u * (self.G @ v @ self.A)).sum()

    def condition_numbers(self) -> tuple[float, float]:
        """cond(A), cond(G) from the eigenvalues (inf when singular)."""
        def cond(eig: torch.Tensor) -> float:
            low = float(eig.min())
            return float(eig.max()) / low if low > 0 else float("inf")

        return cond(self.la), cond(self.lg)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running factors."""
        return {"A": self.A.clone(), "G": self.G.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores the factors and recomputes the eigendecompositions."""
        self.A.copy_(state["A"])
        self.G.copy_(state["G"])
        self.decompose()


class DiagonalBlock:
    """A parameter with a known exact diagonal Fisher ``f``."""

    def __init__(self, param: torch.nn.Parameter, fisher: float | torch.Tensor) -> None:
        self.fisher = torch.as_tensor(fisher, dtype=param.dtype, device=param.device)
        if not bool((self.fisher > 0).all()):
            raise ValueError(f"diagonal Fisher must be > 0, got {fisher!r}.")

    def precondition(self, grad: torch.Tensor, damping: float) -> torch.Tensor:
        """g / (f + damping)."""
        return grad / (self.fisher + damping)

    def inner(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sum(u * f * v)."""
        return (u * self.fisher * v).sum()
