"""Reading one ``nn.Linear`` layer's K-FAC statistics.

While capture is on, a forward hook records the layer input ``a`` (with a 1 appended
when the layer has a bias: the homogeneous coordinate) and puts a tensor hook on the
output that records the gradient ``g`` w.r.t. the layer output during the backward. The capture backward is of a loss that is a
MEAN over the batch, so ``g * n`` is the per-sample gradient. Batch factors:

    A = a^T a / n   (in+1, in+1)        G = (n g)^T (n g) / n   (out, out)
"""

from __future__ import annotations

import torch
from torch import nn


class LinearStatistics:
    """Hooks on one ``nn.Linear`` that record inputs and output gradients on demand."""

    def __init__(self, layer: nn.Linear) -> None:
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"K-FAC layers must be nn.Linear, got {type(layer).__name__}.")
        self.layer = layer
        self.has_bias = layer.bias is not None
        self.capturing = False
        self._inputs: torch.Tensor | None = None
        self._grads: torch.Tensor | None = None
        self._handles = [layer.register_forward_hook(self._on_forward)]

    def _on_forward(self, module: nn.Module, inputs: tuple[torch.Tensor, ...],
                    output: torch.Tensor) -> None:
        if not self.capturing:
            return
        a = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
        if self.has_bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        self._inputs = a
        if output.requires_grad:
            output.register_hook(self._on_output_grad)

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        g = grad.detach().reshape(-1, grad.shape[-1])
        self._grads = g * g.shape[0]

    def batch_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, G) of the last captured forward/backward; clears the capture."""
        if self._inputs is None or self._grads is None:
            raise RuntimeError(
                "No K-FAC statistics captured: run a forward and a backward of the policy "
                "inside KFACPreconditioner.capture() before update_factors()."
            )
        a, g = self._inputs, self._grads
        self._inputs = self._grads = None
        return a.T @ a / a.shape[0], g.T @ g / g.shape[0]

    def remove(self) -> None:
        """Removes the hooks."""
        for handle in self._handles:
            handle.remove()
