"""Torch modules whose ``forward`` takes exactly a component spec's inputs, in order.

They are what gets exported to ONNX and what the torch reference engines run, so the ONNX graph
and the reference compute the same function by construction. Each component record names its
wrapper (``bll_python.components``); :func:`export_modules` applies them to the loaded checkpoints.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import torch
from torch import nn

from bll_python.components import COMPONENTS, Component


class TextEncoder(nn.Module):
    """CLIP's last hidden state, as SD1.5 conditions on it (no pooling, no clip-skip)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip(input_ids.long(), return_dict=False)[0]


class UNet(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class VaeDecoder(nn.Module):
    """Latents in, image in [0, 1] out: the scaling factor and diffusers' postprocess are in the graph."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latent / self.scaling_factor, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1)


def as_is(module: nn.Module) -> nn.Module:
    """For a module that already takes its spec's inputs in order (the ImageReward scorer)."""
    return module


def wrapper_factory(component: Component) -> Callable[[Any], nn.Module]:
    """The callable a record's ``wrapper`` (``module:attribute``) names."""
    module_name, _, attribute = component.wrapper.partition(":")
    factory = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(factory):
        raise ImportError(f"{component.name}: wrapper {component.wrapper!r} names nothing callable")
    return factory


def export_modules(parts: Mapping[str, Any]) -> dict[str, nn.Module]:
    """Every component's export module, in eval mode, from the loaded checkpoint ``parts`` (by record ``source``)."""
    return {name: wrapper_factory(c)(parts[c.source]).eval() for name, c in COMPONENTS.items()}
