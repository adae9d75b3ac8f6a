"""Reading one ``nn.Linear`` layer's K-FAC statistics.

For a Linear layer ``z = W x + b`` and a per-sample loss ``l``, the per-sample gradient of
``[W, b]`` is the outer product ``g a^T`` with

    a = [x, 1]        (the layer input with a homogeneous 1 appended when there is a bias)
    g = dl/dz         (the gradient w.r.t. the layer output)

so with column-stacking ``vec``, ``vec(g a^T) = a (x) g`` and the layer's Fisher block
``E[vec vec^T] = E[(a a^T) (x) (g g^T)]`` is approximated by ``A (x) G`` with

    A = a^T a / n   (in+1, in+1)        G = g^T g / n   (out, out)

over the ``n`` rows of a batch. The capture backward is of a loss that is a MEAN over the
batch, so the gradient autograd hands to the layer output is ``g / n``: it is multiplied by
``n`` before forming ``G``. Inputs with extra leading dimensions (``(B, T, in)``) are
flattened to ``(B*T, in)``; the mean must then be over all ``B*T`` rows.

The hooks (a forward-pre hook for ``a``, a full backward hook for ``g``, as in
kfac-pytorch) exist only between :meth:`LinearStatistics.start_capture` and
:meth:`LinearStatistics.stop_capture`; outside that window the layer carries no hook at all,
and a backward that runs later through a graph built inside the window is ignored too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

# torch warns when a full backward hook fires on a module none of whose inputs requires
# grad (the policy's first layer: observations never do). That is exactly the case we want;
# KFACPreconditioner.capture() filters this one message.
FIRST_LAYER_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect"


class LinearStatistics:
    """Records one ``nn.Linear`` layer's inputs and output gradients while capturing.

    Args:
        layer: the layer to observe. Its weight has shape ``(out, in)``; the bias is optional.
    """

    def __init__(self, layer: nn.Linear) -> None:
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"layer must be an nn.Linear, got {type(layer).__name__}: K-FAC statistics "
                "are implemented for Linear layers only."
            )
        self.layer = layer
        self.has_bias = layer.bias is not None
        self._capturing = False
        self._handles: list[RemovableHandle] = []
        self._inputs: torch.Tensor | None = None
        self._grads: torch.Tensor | None = None

    # --- Capture window -----------------------------------------------------------------
    @property
    def capturing(self) -> bool:
        """True between :meth:`start_capture` and :meth:`stop_capture`."""
        return self._capturing

    def start_capture(self) -> None:
        """Clears any previous capture and registers the hooks."""
        self.clear()
        if not self._handles:
            self._handles = [
                self.layer.register_forward_pre_hook(self._on_forward_pre),
                self.layer.register_full_backward_hook(self._on_backward),
            ]
        self._capturing = True

    def stop_capture(self) -> None:
        """Removes the hooks (what was captured stays until :meth:`batch_factors`)."""
        self._capturing = False
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forgets the captured input and output gradient."""
        self._inputs = self._grads = None

    @property
    def has_capture(self) -> bool:
        """True when both an input and an output gradient have been recorded."""
        return self._inputs is not None and self._grads is not None

    # --- Hooks --------------------------------------------------------------------------
    def _on_forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # A forward without grad (e.g. sampling a~) cannot be backwarded: keep the last
        # differentiable forward's input.
        if not self._capturing or not torch.is_grad_enabled():
            return
        x = args[0].detach()
        a = x.reshape(-1, x.shape[-1])
        if self.has_bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        self._inputs = a

    def _on_backward(self, module: nn.Module, grad_input: Any, grad_output: Any) -> None:
        if not self._capturing or grad_output[0] is None:
            return
        grad = grad_output[0].detach()
        g = grad.reshape(-1, grad.shape[-1])
        self._grads = g * g.shape[0]  # mean-loss gradient -> per-sample gradient

    # --- Factors ------------------------------------------------------------------------
    def batch_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, G)`` of the last captured forward/backward; clears the capture.

        Raises:
            RuntimeError: nothing (or only half) was captured, or the forward and the
                backward saw different numbers of rows.
        """
        a, g = self._inputs, self._grads
        self.clear()
        if a is None or g is None:
            missing = "input" if a is None else "output gradient"
            raise RuntimeError(
                f"No K-FAC {missing} captured for {self.layer}: run the policy forward AND "
                "the backward of -mean(log pi(a~|s)) inside KFACPreconditioner.capture() "
                "before update_factors()."
            )
        if a.shape[0] != g.shape[0]:
            raise RuntimeError(
                f"K-FAC capture mismatch for {self.layer}: the forward saw {a.shape[0]} rows, "
                f"the backward {g.shape[0]}. Capture exactly one forward and its backward."
            )
        n = a.shape[0]
        return a.T @ a / n, g.T @ g / n

    def remove(self) -> None:
        """Removes any hook and forgets the capture."""
        self.stop_capture()
        self.clear()

