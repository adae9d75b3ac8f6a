"""RL module shared by all safe algorithms: policy, reward critic, cost critic.

Three separate MLPs (no shared layers, as in OmniSafe): ``pi`` maps an observation to the
policy's distribution inputs; ``vf`` predicts the reward value; ``cvf`` predicts the cost
value. The critics are training-only: env runners build the module with
``inference_only=True`` and never hold them.

The policy depends on the action space (``rllib_kfcpo.action_spaces``):

- ``Box``: ``pi`` gives the mean of a diagonal Gaussian whose log standard deviation is a
  state-independent parameter ``log_std`` (RLlib's ``TorchDiagGaussian``);
- ``Discrete(n)``: ``pi`` gives the ``n`` logits of a categorical distribution (RLlib's
  ``TorchCategorical``); there is no ``log_std`` (the attribute is ``None``).

Any other action space is refused with one clear error.

Model config keys (``RLModuleSpec(model_config=...)`` or ``config.rl_module``):

- ``fcnet_hiddens`` (default ``[64, 64]``): hidden layer widths of all three networks.
- ``fcnet_activation`` (default ``"tanh"``): ``"tanh"``, ``"relu"`` or ``"elu"``.
- ``log_std_init`` (default ``-0.5``): initial log standard deviation of a Gaussian policy.
- ``policy_output_gain`` (default ``0.01``): orthogonal-init gain of the policy head (mean
  or logits; small: a near-uniform categorical, a near-zero mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import (
    TorchCategorical,
    TorchDiagGaussian,
)
from ray.rllib.core.rl_module.apis import InferenceOnlyAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.annotations import override
from torch import nn

from rllib_kfcpo.action_spaces import action_kind
from rllib_kfcpo.rllib_seam import forward_without_mode_walk

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "fcnet_hiddens": [64, 64],
    "fcnet_activation": "tanh",
    "log_std_init": -0.5,
    "policy_output_gain": 0.01,
}

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU}

#: Layer types whose forward pass is the same in train and eval mode. A module made only
#: of these (plus containers) can skip RLlib's per-call ``eval()``/``train()`` toggling.
_MODE_INDEPENDENT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.Linear, nn.Identity, *_ACTIVATIONS.values(),
)


def build_mlp(
    in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str, out_gain: float
) -> nn.Sequential:
    """An MLP of ``nn.Linear`` layers with orthogonal init (CleanRL/OmniSafe style)."""
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"model_config['fcnet_activation']={activation!r} is not supported; "
            f"use one of {sorted(_ACTIVATIONS)}."
        )
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden_sizes:
        linear = nn.Linear(last, int(width))
        nn.init.orthogonal_(linear.weight, gain=math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, _ACTIVATIONS[activation]()]
        last = int(width)
    head = nn.Linear(last, out_dim)
    nn.init.orthogonal_(head.weight, gain=out_gain)
    nn.init.zeros_(head.bias)
    layers.append(head)
    return nn.Sequential(*layers)


class SafeActorCriticTorchModule(TorchRLModule, ValueFunctionAPI, InferenceOnlyAPI):
    """Gaussian or categorical policy with separate reward and cost critics (see module
    docstring)."""

    #: The state-independent log-std of a Gaussian policy; ``None`` for a categorical one.
    log_std: nn.Parameter | None

    @override(RLModule)
    def setup(self) -> None:
        #: ``"box"`` (Gaussian policy) or ``"discrete"`` (categorical policy).
        self.action_kind = action_kind(self.action_space)
        cfg = {**DEFAULT_MODEL_CONFIG, **(self.model_config or {})}
        hidden = tuple(cfg["fcnet_hiddens"])
        obs_dim = int(np.prod(self.observation_space.shape))
        if self.is_discrete:
            out_dim = int(self.action_space.n)
        else:
            out_dim = int(np.prod(self.action_space.shape))
        self.pi = build_mlp(obs_dim, hidden, out_dim, cfg["fcnet_activation"],
                            out_gain=float(cfg["policy_output_gain"]))
        if self.is_discrete:
            self.log_std = None
        else:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(cfg["log_std_init"])))
        if not self.inference_only:
            self.vf = build_mlp(obs_dim, hidden, 1, cfg["fcnet_activation"], out_gain=1.0)
            self.cvf = build_mlp(obs_dim, hidden, 1, cfg["fcnet_activation"], out_gain=1.0)

    def has_mode_dependent_layers(self) -> bool:
        """Whether any submodule is not known to behave the same in train and eval mode.

        Computed once per module (layers are built in ``setup``) and cached. ``False`` for
        this module's own MLPs (``nn.Linear`` and activations only); a subclass that adds
        e.g. dropout or batch norm gets ``True`` and RLlib's mode toggling back.
        """
        cached = self.__dict__.get("_mode_dependent_cache")
        if cached is None:
            cached = any(
                not isinstance(m, _MODE_INDEPENDENT_LAYERS)
                for m in self.modules() if m is not self
            )
            self.__dict__["_mode_dependent_cache"] = cached
        return cached

    @override(TorchRLModule)
    def forward_exploration(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """RLlib's ``forward_exploration`` without its per-call ``eval()``/``train()``.

        ``TorchRLModule.forward_exploration`` calls ``self.eval()`` and then ``self.train()``
        around every sampling forward pass when the module is in training mode (as it is
        on env runners), each a recursive walk over all submodules: about half of the
        module's share of the per-step sampling cost. Our networks contain only
        ``nn.Linear`` layers and activations, whose output does not depend on the mode,
        so the walk changes nothing but time; the forward pass itself (``no_grad``,
        ``_forward_exploration``, possibly ``torch.compile``-d) is RLlib's. Subclasses with
        mode-dependent layers (see :meth:`has_mode_dependent_layers`) keep the toggling.
        """
        if self.has_mode_dependent_layers():
            return super().forward_exploration(batch, **kwargs)
        return forward_without_mode_walk(self, batch, explore=True, **kwargs)

    @override(TorchRLModule)
    def forward_inference(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        """RLlib's ``forward_inference`` without the mode toggling (see ``forward_exploration``)."""
        if self.has_mode_dependent_layers():
            return super().forward_inference(batch, **kwargs)
        return forward_without_mode_walk(self, batch, explore=False, **kwargs)

    @property
    def is_discrete(self) -> bool:
        """True for a categorical policy over a ``Discrete`` action space."""
        return self.action_kind == "discrete"

    @override(TorchRLModule)
    def get_inference_action_dist_cls(self) -> type[TorchDiagGaussian | TorchCategorical]:
        return TorchCategorical if self.is_discrete else TorchDiagGaussian

    def policy_parameters(self) -> list[nn.Parameter]:
        """The policy's parameters: the policy MLP's, then the log-std (Gaussian only)."""
        extra = [] if self.log_std is None else [self.log_std]
        return [*self.pi.parameters(), *extra]

    def critic_parameters(self) -> list[nn.Parameter]:
        """The reward and cost critics' parameters."""
        return [*self.vf.parameters(), *self.cvf.parameters()]

    def flat_obs(self, batch: dict[str, Any]) -> torch.Tensor:
        """Observations of a batch as a float (B, obs_dim) tensor."""
        obs = batch[Columns.OBS]
        return obs.reshape(*obs.shape[:1], -1).float()

    def action_dist_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """The action distribution's inputs: concatenated ``[mean, log_std]`` as RLlib's
        diagonal Gaussian expects, or the categorical's logits."""
        out = self.pi(obs)
        if self.log_std is None:
            return out
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)

    @override(RLModule)
    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.action_dist_inputs(self.flat_obs(batch))}

    @override(ValueFunctionAPI)
    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        return self.vf(self.flat_obs(batch)).squeeze(-1)

    def compute_cost_values(self, batch: dict[str, Any]) -> torch.Tensor:
        """Predicted discounted cost-to-go ``V_c(s)``."""
        return self.cvf(self.flat_obs(batch)).squeeze(-1)

    @override(InferenceOnlyAPI)
    def get_non_inference_attributes(self) -> list[str]:
        return ["vf", "cvf"]
