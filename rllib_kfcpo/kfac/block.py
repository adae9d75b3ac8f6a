"""Inverting and applying one curvature block.

:class:`KroneckerBlock` approximates the Fisher block of one Linear layer (weight
``(out, in)``, optional bias) by ``A (x) G`` with ``A`` the ``(in+1, in+1)`` input factor and
``G`` the ``(out, out)`` output-gradient factor (see ``layer.py``). A gradient is handled as
the matrix ``V = [grad_W, grad_b]`` of shape ``(out, in+1)`` and ``vec`` stacks COLUMNS, so
``vec(G V A) = (A (x) G) vec(V)`` (A is symmetric). With the eigendecompositions
``A = Qa diag(la) Qa^T`` and ``G = Qg diag(lg) Qg^T``, ``A (x) G`` has eigenvectors
``Qa (x) Qg`` and eigenvalues ``la (x) lg``; adding the damping to that eigenvalue outer
product (kfac-pytorch's default) gives EXACTLY the damped natural gradient

    (A (x) G + damping I)^-1 vec(V) = vec( Qg [ (Qg^T V Qa) / (lg la^T + damping) ] Qa^T ).

The Fisher metric uses the undamped factors: ``<U, V>_F = vec(U)^T (A (x) G) vec(V)
= sum(U * (G V A))``. For natural gradients the metric is free in the eigenbasis: with
``S_k = (Qg^T V_k Qa) / (lg la^T + damping)`` (the rotated natural gradient),
``<N_k, N_l>_F = sum(S_k * (lg la^T) * S_l)`` (:meth:`KroneckerBlock.natural_gram`).

:class:`DiagonalBlock` is a parameter whose exact Fisher is diagonal (a Gaussian's
state-independent log-std: ``E[(z^2 - 1)^2] = 2`` per dimension): ``F^-1 g = g / (f + damping)``
and ``<u, v>_F = sum(u * f * v)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# (la, qa, lg, qg): eigenvalues/eigenvectors of A and G.
Decomposition = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _condition_number(eigenvalues: torch.Tensor) -> float:
    """max/min eigenvalue; a singular factor reports ~1/eps (finite, loggable) not inf."""
    top = float(eigenvalues.max())
    if top <= 0.0:
        return float("inf")
    floor = top * torch.finfo(eigenvalues.dtype).eps
    return top / max(float(eigenvalues.min()), floor)


class KroneckerBlock:
    """Running Kronecker factors ``A``, ``G`` of one Linear layer and their eigenbases.

    Args:
        in_features: the layer's input width (``A`` is ``in_features + has_bias`` square).
        out_features: the layer's output width (``G`` is ``out_features`` square).
        has_bias: whether the layer has a bias (homogeneous coordinate in ``A``).
        device, dtype: where the factors live (use the layer weight's).

    The factors start as identities (so an unfitted block preconditions with
    ``1 / (1 + damping)``).
    """

    def __init__(self, in_features: int, out_features: int, has_bias: bool, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        self.in_features = in_features
        self.out_features = out_features
        self.has_bias = has_bias
        self.A = torch.eye(in_features + int(has_bias), device=device, dtype=dtype)
        self.G = torch.eye(out_features, device=device, dtype=dtype)
        self.la, self.qa, self.lg, self.qg = self.compute_decomposition()

    # --- Running factors and their decomposition -----------------------------------------
    def fold(self, batch_A: torch.Tensor, batch_G: torch.Tensor, weight: float) -> None:
        """Running average in place: ``factor <- (1 - weight) factor + weight batch``."""
        self.A.mul_(1.0 - weight).add_(batch_A.to(self.A), alpha=weight)
        self.G.mul_(1.0 - weight).add_(batch_G.to(self.G), alpha=weight)

    def compute_decomposition(self) -> Decomposition:
        """Eigendecompositions of the current ``A`` and ``G`` (the block is not changed).

        Eigenvalues are clamped at 0: the factors are PSD by construction and rounding can
        only make tiny ones slightly negative.

        Raises:
            torch.linalg.LinAlgError: ``eigh`` failed or returned non-finite values.
        """
        la, qa = torch.linalg.eigh(self.A)
        lg, qg = torch.linalg.eigh(self.G)
        if not all(bool(torch.isfinite(t).all()) for t in (la, qa, lg, qg)):
            raise torch.linalg.LinAlgError("eigh returned non-finite values")
        return la.clamp_min(0.0), qa, lg.clamp_min(0.0), qg

    def set_decomposition(self, decomposition: Decomposition) -> None:
        """Installs a result of :meth:`compute_decomposition`."""
        self.la, self.qa, self.lg, self.qg = decomposition

    def decompose(self) -> None:
        """Recomputes the eigendecompositions (raises like :meth:`compute_decomposition`)."""
        self.set_decomposition(self.compute_decomposition())

    def snapshot(self) -> tuple[torch.Tensor, ...]:
        """Everything :meth:`restore` needs to undo a fold and a decomposition."""
        return (self.A.clone(), self.G.clone(), self.la, self.qa, self.lg, self.qg)

    def restore(self, snapshot: tuple[torch.Tensor, ...]) -> None:
        """Undoes the changes made since :meth:`snapshot`."""
        A, G, self.la, self.qa, self.lg, self.qg = snapshot
        self.A.copy_(A)
        self.G.copy_(G)

    # --- Using the block ----------------------------------------------------------------
    def matrix(self, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """``[w, b]`` as one ``(out, in+1)`` matrix (just ``w`` without a bias)."""
        if not self.has_bias:
            return w
        if b is None:
            raise ValueError("this layer has a bias: give its tensor as well.")
        return torch.cat([w, b.unsqueeze(1)], dim=1)

    def split(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inverse of :meth:`matrix`."""
        if self.has_bias:
            return v[:, :-1].contiguous(), v[:, -1].contiguous()
        return v, None

    def precondition(self, grad_w: torch.Tensor, grad_b: torch.Tensor | None = None, *,
                     damping: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(A (x) G + damping I)^-1 vec([grad_w, grad_b])``, returned as ``(w, b)``."""
        naturals, _ = self.natural_gram(self.matrix(grad_w, grad_b).unsqueeze(0),
                                        damping=damping)
        return self.split(naturals[0])

    def natural_gram(self, mats: torch.Tensor, *, damping: float,
                     relative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Natural gradients of K gradients at once, and their Fisher Gram matrix.

        Args:
            mats: ``(K, out, in+1)`` gradient matrices (:meth:`matrix` of each).
            damping: as in :meth:`precondition`.
            relative: add ``damping * mean(lg la^T)`` instead of ``damping``.

        Returns:
            ``(naturals, gram)``: ``(K, out, in+1)`` damped natural gradients (each equal to
            :meth:`precondition` of its gradient) and the ``(K, K)`` matrix of
            ``<N_k, N_l>_F`` in the metric of the decomposed factors (equal to :meth:`inner`
            when the decomposition is of the current ``A``, ``G``).
        """
        eig = self.lg.unsqueeze(1) * self.la.unsqueeze(0)
        if relative:
            damping = damping * float(eig.mean())
        rotated = (self.qg.T @ mats @ self.qa) / (eig + damping)
        gram = torch.einsum("kij,lij->kl", rotated * eig, rotated)
        return self.qg @ rotated @ self.qa.T, gram

    def inner(self, u: Sequence[torch.Tensor | None],
              v: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``vec(U)^T (A (x) G) vec(V) = sum(U * (G V A))`` (undamped factors).

        ``u`` and ``v`` are ``(w, b)`` pairs (``(w,)`` or ``(w, None)`` without a bias).
        """
        mat_u = self.matrix(*u)
        mat_v = self.matrix(*v)
        return (mat_u * (self.G @ mat_v @ self.A)).sum()

    def condition_numbers(self) -> tuple[float, float]:
        """``(cond(A), cond(G))`` from the current eigenvalues (undamped).

        A singular factor (e.g. fewer rows than ``in+1``) reports about ``1/eps`` of its
        dtype instead of ``inf``.
        """
        return _condition_number(self.la), _condition_number(self.lg)

    # --- State --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the running factors and of the decomposition in use."""
        return {"A": self.A.clone(), "G": self.G.clone(), "la": self.la.clone(),
                "qa": self.qa.clone(), "lg": self.lg.clone(), "qg": self.qg.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restores the factors and the decomposition in use (recomputed from the factors
        when the state has none, as in states written before it was saved)."""
        for name, current in (("A", self.A), ("G", self.G)):
            if tuple(state[name].shape) != tuple(current.shape):
                raise ValueError(f"K-FAC factor {name} has shape {tuple(state[name].shape)} "
                                 f"in the state, {tuple(current.shape)} in this layer.")
        self.A.copy_(state["A"])
        self.G.copy_(state["G"])
        if "la" in state:
            self.set_decomposition(tuple(state[k].to(self.A).clone()
                                         for k in ("la", "qa", "lg", "qg")))
        else:
            self.decompose()


class DiagonalBlock:
    """A parameter with a known exact diagonal Fisher ``f`` (broadcastable to its shape).

    Args:
        param: the parameter (e.g. a Gaussian policy's state-independent log-std).
        fisher: its diagonal Fisher, a positive scalar or a tensor broadcastable to
            ``param`` (2.0 for a log-std).
    """

    def __init__(self, param: nn.Parameter, fisher: float | torch.Tensor) -> None:
        self.fisher = torch.as_tensor(fisher, dtype=param.dtype, device=param.device).detach()
        if not bool(torch.isfinite(self.fisher).all() and (self.fisher > 0).all()):
            raise ValueError(f"diagonal Fisher={fisher!r} is invalid: it must be finite and "
                             "> 0 (2.0 for a Gaussian log-std).")
        try:
            fits = torch.broadcast_shapes(self.fisher.shape, param.shape) == param.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(f"diagonal Fisher of shape {tuple(self.fisher.shape)} does not "
                             f"broadcast to the parameter's shape {tuple(param.shape)}.")

    def precondition(self, grad: torch.Tensor, *, damping: float) -> torch.Tensor:
        """``g / (f + damping)``."""
        return grad / (self.fisher + damping)

    def natural_gram(self, grads: torch.Tensor, *, damping: float,
                     relative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, *shape)`` gradients -> their natural gradients and ``(K, K)`` Fisher Gram
        (``relative``: the damping is ``damping * mean(f)``)."""
        if relative:
            damping = damping * float(self.fisher.mean())
        naturals = self.precondition(grads, damping=damping)
        flat = naturals.reshape(naturals.shape[0], -1)
        weighted = (naturals * self.fisher).reshape(naturals.shape[0], -1)
        return naturals, weighted @ flat.T

    def inner(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``sum(u * f * v)``."""
        return (u * self.fisher * v).sum()
