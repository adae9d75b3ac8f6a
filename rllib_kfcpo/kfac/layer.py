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

Two ways to read ``a`` and ``g``:

- **capture** (kfac-pytorch style): a forward-pre hook for ``a`` and a full backward hook
  for ``g`` exist only between :meth:`LinearStatistics.start_capture` and
  :meth:`LinearStatistics.stop_capture`; outside that window the layer carries no hook at
  all, and a backward that runs later through a graph built inside the window is ignored.
- **record**: a forward hook keeps ``a`` and the layer output ``z`` (still in the graph)
  between :meth:`LinearStatistics.start_recording` and
  :meth:`LinearStatistics.stop_recording`; the caller differentiates with respect to ``z``
  itself (one backward for several losses, see ``KFACPreconditioner.score_gradients``),
  forms parameter gradients with :meth:`LinearStatistics.weight_gradients` and hands the
  per-sample ``g`` back with :meth:`LinearStatistics.set_statistics`.
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
        self._recording = False
        self._output: torch.Tensor | None = None

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
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forgets the captured (or recorded) input, output and output gradient."""
        self._inputs = self._grads = self._output = None

    # --- Record window --------------------------------------------------------------------
    def start_recording(self) -> None:
        """Clears any previous capture and records the next differentiable forward."""
        if self._capturing or self._recording:
            raise RuntimeError(f"{self.layer}: already capturing or recording.")
        self.clear()
        self._handles = [self.layer.register_forward_hook(self._on_forward)]
        self._recording = True

    def stop_recording(self) -> None:
        """Removes the hook; the recorded input and output stay until :meth:`clear`."""
        self._recording = False
        self._remove_hooks()

    @property
    def recorded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, z)`` of the recorded forward: homogeneous inputs (rows, in+1) and the
        layer output as the layer returned it (``(..., out)``, still attached to the
        autograd graph; differentiate w.r.t. this tensor, not a reshaped view).

        Raises:
            RuntimeError: no differentiable forward was recorded.
        """
        if self._inputs is None or self._output is None:
            raise RuntimeError(f"No forward recorded for {self.layer}: run one differentiable "
                               "policy forward inside KFACPreconditioner.record().")
        return self._inputs, self._output

    def weight_gradients(self, output_grads: torch.Tensor) -> torch.Tensor:
        """Parameter gradients ``G_k^T a`` as ``(K, out, in+1)`` matrices (``[W, b]``).

        Args:
            output_grads: ``(K, rows, out)`` gradients of K losses w.r.t. the recorded
                layer output, leading dimensions flattened into rows (each loss's own
                scaling included).
        """
        a, _ = self.recorded
        return output_grads.transpose(-1, -2) @ a

    def set_statistics(self, inputs: torch.Tensor, grads: torch.Tensor) -> None:
        """Sets per-sample ``a`` (rows, in+1) and ``g`` (rows, out) for :meth:`batch_factors`."""
        self._inputs, self._grads, self._output = inputs, grads, None

    @property
    def has_capture(self) -> bool:
        """True when both an input and an output gradient have been recorded."""
        return self._inputs is not None and self._grads is not None

    # --- Hooks --------------------------------------------------------------------------
    def _homogeneous(self, x: torch.Tensor) -> torch.Tensor:
        a = x.detach().reshape(-1, x.shape[-1])
        if self.has_bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        return a

    def _on_forward(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._recording or not torch.is_grad_enabled():
            return
        self._inputs = self._homogeneous(args[0])
        self._output = output  # the very tensor the rest of the graph uses

    def _on_forward_pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        # A forward without grad (e.g. sampling a~) cannot be backwarded: keep the last
        # differentiable forward's input.
        if not self._capturing or not torch.is_grad_enabled():
            return
        self._inputs = self._homogeneous(args[0])

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
        self.stop_recording()
        self.clear()

