"""Every use this package makes of RLlib and Tune internals, in one module.

Ray releases every few weeks and its private names change without notice. Each entry
below says why the public API does not do the job; ``private_names()`` lists them with the
signature they must have, and ``tests/test_rllib_seam.py`` asserts that each still exists
as expected on the installed Ray, so an upgrade that breaks one fails there, naming it,
instead of deep inside training. No other module of the package uses a private RLlib or
Tune name (the same test greps for them).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Collection
from typing import Any


def private_names() -> list[tuple[type, str, tuple[str, ...] | None, str]]:
    """``(owner, name, parameters after self or None for an instance attribute, why)`` of
    every private name used here, checked by tests/test_rllib_seam.py on the installed Ray.

    (A function, so importing this module stays cheap for the command line.)
    """
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
    from ray.rllib.core.learner.learner import Learner
    from ray.rllib.core.learner.learner_group import LearnerGroup
    from ray.rllib.core.learner.torch.torch_learner import TorchLearner
    from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
    from ray.rllib.utils.checkpoints import Checkpointable

    return [
        (AlgorithmConfig, "_translate_special_keys", ("key", "warn_deprecated"),
         "maps old/alias config keys (num_workers, callbacks, ...) to attributes; no public "
         "equivalent, and the CLI must name unknown keys exactly as RLlib would accept them"),
        (AlgorithmConfig, "_model_config", None,
         "the attribute behind rl_module(model_config=...); YAML/--config keys `model_config` "
         "and `model` are written to it through update_from_dict"),
        (Checkpointable, "_check_component", ("name", "components", "not_components"),
         "decides whether get_state(components=...) asked for a component; the learner's "
         "extra `safe_state` component must honour the same selection rules"),
        (Learner, "_update", ("batch", "kwargs"),
         "the per-minibatch update; KFCPO and CPO take a step that is not loss.backward() + "
         "optimizer.step(), which compute_loss_for_module/apply_gradients cannot express"),
        (TorchLearner, "_make_modules_ddp_if_necessary", (),
         "wraps modules in DDP; the non-SGD steps average gradients themselves (explicit "
         "all-reduces), so the DDP wrapping must be skipped"),
        (Learner, "_learner_connector", None,
         "the learner connector pipeline, to swap RLlib's GAE for the reward+cost GAE; "
         "AlgorithmConfig.build_learner_connector runs before the learner exists and cannot "
         "see the learner's config-per-module"),
        (LearnerGroup, "_worker_manager", None,
         "the actor manager of remote learners: the only way to tell which learner actor "
         "died when an update fails (LearnerGroup reports only the collective's error)"),
        (TorchRLModule, "_forward_exploration", ("batch", "kwargs"),
         "the forward pass forward_exploration wraps in eval()/train() walks; called "
         "directly for networks without mode-dependent layers (sampling cost)"),
        (TorchRLModule, "_forward_inference", ("batch", "kwargs"),
         "as _forward_exploration, for forward_inference"),
    ]

#: Algorithm-checkpoint file in which RLlib pickles the algorithm class (read to name the
#: writer of checkpoints from before this package recorded it in its metadata).
CLASS_AND_CTOR_ARGS_FILE = "class_and_ctor_args.pkl"
#: Config attribute behind ``rl_module(model_config=...)`` (see ``PRIVATE_NAMES``).
MODEL_CONFIG_ATTRIBUTE = "_model_config"


def translate_config_key(key: str) -> str:
    """The config attribute a (possibly alias or deprecated) config key sets."""
    from ray.rllib.algorithms.algorithm_config import AlgorithmConfig

    return AlgorithmConfig._translate_special_keys(key, warn_deprecated=False)


def registered_env_creator(name: str) -> Callable[[Any], Any] | None:
    """The env creator registered with ``ray.tune.register_env(name, ...)``, or None.

    Tune has ``register_env`` but no public lookup; RLlib's env runners read the same
    registry, so this builds exactly the env they would.
    """
    from ray.tune.registry import ENV_CREATOR, _global_registry

    if _global_registry.contains(ENV_CREATOR, name):
        return _global_registry.get(ENV_CREATOR, name)
    return None


def checkpoint_class_name(path: str | pathlib.Path) -> str | None:
    """Name of the algorithm class RLlib pickled into a checkpoint (None if unreadable)."""
    file = pathlib.Path(path) / CLASS_AND_CTOR_ARGS_FILE
    try:
        import ray.cloudpickle as pickle

        with file.open("rb") as f:
            return pickle.load(f)["class"].__name__
    except Exception:  # noqa: BLE001 - unreadable: leave the decision to RLlib
        return None


def wants_component(obj: Any, name: str, components: Collection[str] | str | None,
                    not_components: Collection[str] | str | None) -> bool:
    """Whether ``get_state(components, not_components=...)`` asks for component ``name``."""
    return obj._check_component(name, components, not_components)


def learner_connector(learner: Any) -> Any:
    """The learner's connector pipeline (None when the learner has none)."""
    return learner._learner_connector


def dead_learner_actors(learner_group: Any, timeout_s: float = 30.0) -> list[int]:
    """Ids of remote learner actors that no longer answer (empty for a local learner)."""
    manager = getattr(learner_group, "_worker_manager", None)
    if manager is None:
        return []
    replies = manager.foreach_actor(lambda _: True, healthy_only=False,
                                    timeout_seconds=timeout_s)
    alive = {r.actor_id for r in replies if r.ok}
    return [i for i in manager.actor_ids() if i not in alive]


def forward_without_mode_walk(module: Any, batch: dict[str, Any], *,
                              explore: bool, **kwargs: Any) -> dict[str, Any]:
    """RLlib's exploration/inference forward pass without its eval()/train() walks."""
    if explore:
        return module._forward_exploration(batch, **kwargs)
    return module._forward_inference(batch, **kwargs)


class CustomStepLearnerMixin:
    """For learners whose update is not ``loss.backward()`` + ``optimizer.step()``.

    ``custom_update(batch)`` replaces RLlib's per-minibatch ``_update`` (same arguments
    and return value: ``(fwd_out, loss_per_module, tensors)``), and the module is not
    wrapped in DDP: the learner averages what it needs with explicit all-reduces.
    """

    def custom_update(self, batch: dict[str, Any], **kwargs: Any) -> tuple[Any, Any, Any]:
        """The per-minibatch update (override)."""
        raise NotImplementedError

    def _update(self, batch: dict[str, Any], **kwargs: Any) -> tuple[Any, Any, Any]:
        return self.custom_update(batch, **kwargs)

    def _make_modules_ddp_if_necessary(self) -> None:
        """No DDP: the custom update all-reduces gradients itself."""
