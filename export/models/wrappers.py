"""Torch modules whose ``forward`` takes exactly a component spec's inputs, in order.

They are what gets exported to ONNX and what the torch reference engines run, so the ONNX graph
and the reference compute the same function by construction. Each component record names its
wrapper (``bll_python.components``); :func:`export_modules` applies them to the loaded checkpoints.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from bll_python.components import Component, family_components
from bll_python.families import SD15, Family


def _hidden_state(clip: nn.Module, input_ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, Any]:
    """(the hidden state at ``layer``, the model's outputs): -1 is ``last_hidden_state`` (after the
    final LayerNorm, as SD1.5 conditions), -2 the penultimate layer's raw output (SDXL)."""
    out = clip(input_ids.long(), output_hidden_states=layer != -1, return_dict=True)
    return (out.last_hidden_state if layer == -1 else out.hidden_states[layer]), out


class TextEncoder(nn.Module):
    """A CLIP tower's hidden states as the UNet conditions on them (``Family.text_layer``)."""

    def __init__(self, clip: nn.Module, layer: int = -1) -> None:
        super().__init__()
        self.clip = clip
        self.layer = layer

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return _hidden_state(self.clip, input_ids, self.layer)[0]


class TextEncoder2(nn.Module):
    """SDXL's second tower (``CLIPTextModelWithProjection``): hidden states and the pooled projection."""

    def __init__(self, clip: nn.Module, layer: int = -2) -> None:
        super().__init__()
        self.clip = clip
        self.layer = layer

    def forward(self, input_ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, out = _hidden_state(self.clip, input_ids_2, self.layer)
        return hidden, out.text_embeds


class _UNet(nn.Module):
    """SD1.5-family UNets; LCM's guidance embedding enters as ``timestep_cond``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class _SdxlUNet(_UNet):
    """SDXL UNets: the pooled prompt vector and the size (or aesthetic) time ids as added conditions."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, text_embeds: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False)[0]


class _GuidedSdxlUNet(_UNet):
    """LCM-SDXL: the guidance embedding and SDXL's added conditions, in the spec's order."""

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor, text_embeds: torch.Tensor, time_ids: torch.Tensor
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, added_cond_kwargs=added, return_dict=False)[0]


def UNet(unet: nn.Module) -> nn.Module:  # noqa: N802 (a record's wrapper: named like the classes it picks)
    """The wrapper whose ``forward`` takes this UNet's spec inputs in order (``bll_python.specs.unet_spec``)."""
    sdxl = unet.config.addition_embed_type == "text_time"
    guided = unet.config.time_cond_proj_dim is not None
    return (_GuidedSdxlUNet if guided else _SdxlUNet)(unet) if sdxl else _UNet(unet)


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


def export_modules(parts: Mapping[str, Any], family: Family = SD15, optional: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The export module of every component ``family`` deploys (its ``optional`` ones if named), in
    eval mode, from the loaded checkpoint ``parts`` (by record ``source``)."""
    options = {"text_encoder": {"layer": family.text_layer}, "text_encoder_2": {"layer": family.text_layer}}
    return {name: wrapper_factory(c)(parts[c.source], **options.get(name, {})).eval() for name, c in family_components(family.name, optional).items()}
