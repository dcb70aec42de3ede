"""LAWN, Logit Attenuating Weight Normalization (Gupta et al. 2021, arXiv:2108.05839),
stacked on any optimizer.

Training runs freely for ``free_steps``; from then on the weight norm of each constrained
tensor (the weights of the network's final layers, which scale the logits) is held at the
value it had when the free phase ended. Each constrained step (1) removes from the
gradient its component along w, so the base optimizer moves along the sphere, (2) lets
the base optimizer step, (3) rescales w back to its fixed norm. Weight decay on those
tensors is radial and so has no effect once they are constrained.

Written here because no library ships it; implemented as optimizer step hooks so it
composes with every registry entry and with the learning-rate schedule untouched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.errors import ConfigError


class Lawn:
    """The constraint's state: steps taken, and the norms fixed when the free phase ends."""

    def __init__(self, optimizer: torch.optim.Optimizer, tensors: list[torch.Tensor], free_steps: int):
        if not tensors:
            raise ConfigError("LAWN constrains the weights of the final layers, but the model has none to constrain.")
        self.tensors, self.free_steps, self.steps = tensors, free_steps, 0
        self.norms: list[torch.Tensor] | None = None
        optimizer.register_step_pre_hook(self._before)
        optimizer.register_step_post_hook(self._after)
        # its state travels in the optimizer's, so a checkpoint of the optimizer covers it
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)

    @property
    def constrained(self) -> bool:
        return self.norms is not None

    def _save(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict["lawn"] = {"steps": self.steps, "norms": None if self.norms is None else [n.clone() for n in self.norms]}
        return state_dict

    def _load(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = dict(state_dict)
        saved = state_dict.pop("lawn", None)
        if saved is not None:
            self.steps = int(saved["steps"])
            norms = saved["norms"]
            self.norms = None if norms is None else [n.to(w.device) for n, w in zip(norms, self.tensors)]
        return state_dict

    @torch.no_grad()
    def _before(self, *_: Any) -> None:
        if self.norms is None and self.steps >= self.free_steps:
            self.norms = [w.norm() for w in self.tensors]
        if self.norms is None:
            return
        for w in self.tensors:
            if w.grad is not None:
                flat_w, flat_g = w.reshape(-1), w.grad.reshape(-1)
                flat_g.sub_(flat_w, alpha=float(flat_g @ flat_w) / float(flat_w @ flat_w))

    @torch.no_grad()
    def _after(self, *_: Any) -> None:
        self.steps += 1
        if self.norms is None:
            return
        for w, norm in zip(self.tensors, self.norms):
            w.mul_(norm / w.norm())


def final_layer_weights(model: nn.Module, layers: int) -> list[torch.Tensor]:
    """The weight tensors (2-D and up, trainable) of the last ``layers`` layers, in
    registration order: the classifier first among them."""
    weights = [
        m.weight for m in model.modules() if isinstance(getattr(m, "weight", None), nn.Parameter)
        and m.weight.ndim > 1 and m.weight.requires_grad
    ]
    if layers > len(weights):
        raise ConfigError(f"lawn_layers={layers} asks for more layers than the model has with weights ({len(weights)}).")
    return weights[-layers:]
