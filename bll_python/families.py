"""Model families: what differs between SD1.5 and SDXL, as data the one pipeline reads.

The checkpoint chooses the family (``export.checkpoints.sources`` reads its ``model_index.json``);
the deployment manifest records it. Everything else (Algorithm 1, the samplers, serving) is shared.

| family | text towers                                   | UNet conditioning                                   | VAE |
|--------|-----------------------------------------------|-----------------------------------------------------|-----|
| sd15   | CLIP ViT-L, last hidden state                  | ``encoder_hidden_states``                           | scaling 0.18215 |
| sdxl   | CLIP ViT-L + OpenCLIP bigG, penultimate states concatenated; bigG's pooled projection | plus ``text_embeds`` (pooled) and ``time_ids`` (original size, crop, target size) | scaling 0.13025, upcast in FP16 |
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    # Which CLIP hidden state conditions the UNet: -1 is ``last_hidden_state`` (after the final
    # LayerNorm, SD1.5), -2 the penultimate layer's output with no final norm (SDXL, both towers).
    text_layer: int
    # The second text tower and the UNet's added conditions (``text_embeds``, ``time_ids``).
    dual_text: bool
    # Whether the family's diffusers pipelines honour the VAE config's ``force_upcast`` (decode in
    # FP32 when the weights are FP16: ``StableDiffusionXLPipeline`` does, ``StableDiffusionPipeline``
    # never looks at it, and SD1.5 VAEs decode fine in FP16).
    honours_vae_force_upcast: bool = False

    @property
    def added_conditions(self) -> bool:
        return self.dual_text


SD15 = Family("sd15", text_layer=-1, dual_text=False)
SDXL = Family("sdxl", text_layer=-2, dual_text=True, honours_vae_force_upcast=True)
FAMILIES: dict[str, Family] = {f.name: f for f in (SD15, SDXL)}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"no model family {name!r}; the families are {sorted(FAMILIES)}") from None


def sdxl_time_ids(height: int, width: int) -> list[float]:
    """SDXL's default micro-conditioning, as ``StableDiffusionXLPipeline._get_add_time_ids`` builds it
    when the caller passes no sizes: original size = target size = the image, no crop."""
    return [float(height), float(width), 0.0, 0.0, float(height), float(width)]
