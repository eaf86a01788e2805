"""ImageReward sees the image as upstream does: PIL's antialiased bicubic resize, in the exported graph too.

The reference is upstream's preprocessing, re-stated with PIL (``reference_image_reward.upstream_pixels``):
diffusers' ``numpy_to_pil`` rounding to uint8, torchvision's ``Resize(224, BICUBIC)`` on a PIL image
(shorter side to 224, PIL's ``Image.resize``), ``CenterCrop(224)``, ``ToTensor``, CLIP normalisation.

Tolerances: PIL computes in fixed point and rounds each pass to uint8, so a value that falls near a
rounding boundary may land one level (1/255) away, and upscaling's overshooting filter can carry the
first pass's level into two; normalised by CLIP's smallest std one level is ONE_LEVEL. Measured:
downscaling (512, 1024 px, portrait and landscape) at most one level on < 0.01% of the pixels;
upscaling (64, 128 px) at most two levels on 0.7%; 224 px exact. The tiny scorer's score then moves by
< 5e-5 (128 px) and < 1e-5 (512, 1024 px). The replaced resize (torch bicubic without antialiasing)
was off by up to 1.9 (512 px) and 2.5 (1024 px) in normalised pixels, 5e-3 and 1.7e-2 in score.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bll_python.specs import image_reward_spec
from bll_python.text import reward_tokenizer, tokenize_for_reward
from export.checkpoints.presets import write_tiny_image_reward
from export.models.image_reward import CLIP_STD, ImageRewardScorer, load_image_reward
from export.models.image_reward_config import CONFIG_NAME
from export.models.resample import pil_resample_matrix, resize_crop_matrices

try:
    from tests.reference_image_reward import ReferenceImageReward, normalize_like_original, upstream_pixels
except ImportError:  # tests/ is not a package: pytest put this folder on sys.path
    from reference_image_reward import ReferenceImageReward, normalize_like_original, upstream_pixels

VOCAB = Path(__file__).resolve().parents[1] / "export" / "assets" / "tokenizers" / "bert_uncased_vocab.txt"
ONE_LEVEL = 1 / 255 / min(CLIP_STD) + 1e-6  # with float32 slack
SIZES = [(64, 64), (128, 128), (224, 224), (512, 512), (1024, 1024), (768, 512), (512, 1024)]


def decoded_like(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Float images in [0, 1] with smooth structure and pixel noise, as a VAE decode has both."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch):
        smooth = torch.stack([0.5 + 0.4 * torch.sin((6 + b) * xx + c) * torch.cos((5 - b) * yy) for c in range(3)])
        rows.append(smooth + 0.15 * torch.randn(3, height, width, generator=gen))
    return torch.stack(rows).clamp(0, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_image_reward(tmp_path_factory.mktemp("reward"), seed=0)


@pytest.fixture(scope="module")
def scorer(tiny: Path) -> ImageRewardScorer:
    return load_image_reward(tiny, tiny.with_name(CONFIG_NAME))


@pytest.fixture(scope="module")
def reference(tiny: Path) -> ReferenceImageReward:
    ref = ReferenceImageReward(json.loads(tiny.with_name(CONFIG_NAME).read_text()))
    ref.load_state_dict(torch.load(tiny, map_location="cpu", weights_only=True), strict=True)
    return ref.eval()


@pytest.fixture(scope="module")
def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenize_for_reward(reward_tokenizer(VOCAB), ["a photo of a cat", "an oil painting of a lighthouse at dusk"])
    return torch.from_numpy(ids), torch.from_numpy(mask)


# ---------------------------------------------------------------------------- the matrices


def test_each_output_pixel_is_a_normalised_filter_and_equal_sizes_are_the_identity():
    for n_in, n_out in ((1024, 224), (128, 224), (300, 7)):
        m = pil_resample_matrix(n_in, n_out)
        assert m.shape == (n_out, n_in)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(pil_resample_matrix(224, 224), np.eye(224))


def test_downscaling_widens_the_filter_by_the_scale_factor():
    # Antialiasing: bicubic spans 4 input pixels; downscaling by s it spans 4 s of them.
    taps = lambda m: int((np.abs(m[m.shape[0] // 2]) > 0).sum())  # noqa: E731
    assert taps(pil_resample_matrix(128, 224)) == 4
    assert taps(pil_resample_matrix(448, 224)) == 8
    assert 18 <= taps(pil_resample_matrix(1024, 224)) <= 19


def test_the_crop_keeps_the_centre_of_the_longer_side():
    rows, cols = resize_crop_matrices(768, 512, 224)  # portrait: width -> 224, height -> 336, crop rows 56..280
    assert rows.shape == (224, 768) and cols.shape == (224, 512)
    np.testing.assert_array_equal(rows, pil_resample_matrix(768, 336)[56:280].astype(np.float32))
    np.testing.assert_array_equal(cols, pil_resample_matrix(512, 224).astype(np.float32))


# ---------------------------------------------------------------------------- against upstream (PIL)


@pytest.mark.parametrize("height, width", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_preprocess_equals_upstreams_pil_transform(scorer, height, width):
    images = decoded_like(2, height, width, seed=height + width)
    with torch.no_grad():
        ours = scorer.preprocess(images)
    want = upstream_pixels(images)
    diff = (ours - want).abs()
    assert ours.shape == (2, 3, 224, 224)
    levels = 1 if min(height, width) >= 224 else 2
    assert float(diff.max()) <= levels * ONE_LEVEL, f"max {float(diff.max()):.3g}"
    assert float((diff > 1e-4).float().mean()) <= 0.01, "one-level differences must stay rare"


@pytest.mark.parametrize("size", [128, 512, 1024])
def test_score_equals_the_original_model_on_upstreams_pixels(scorer, reference, tokens, size):
    images = decoded_like(2, size, size, seed=size)
    ids, mask = tokens
    with torch.no_grad():
        ours = scorer(images, ids, mask)
        want = reference.score(upstream_pixels(images), ids.long(), mask.long())
    err = float((ours - want).abs().max())
    assert err <= 1e-4, f"score error vs upstream at {size} px: {err:.3g}"


def test_the_unantialiased_resize_it_replaces_misses_pil_by_many_levels(scorer):
    # The tolerance above can fail: the previous graph's resize is ~100 levels off at 512 px.
    images = decoded_like(1, 512, 512, seed=3)
    old = normalize_like_original(F.interpolate(images, size=(224, 224), mode="bicubic", align_corners=False).clamp(0, 1))
    assert float((old - upstream_pixels(images)).abs().max()) > 20 * ONE_LEVEL


# ---------------------------------------------------------------------------- in the exported graphs


@pytest.fixture(scope="module")
def onnx_512(scorer, tokens, tmp_path_factory) -> Path:
    spec = image_reward_spec(image_size=512, text_len=35, max_batch=2)
    path = tmp_path_factory.mktemp("onnx") / "image_reward.onnx"
    from export.onnx.graph import export_onnx

    return export_onnx(scorer, spec, path)


def test_onnx_graph_resizes_as_pil_does(onnx_512, scorer, tokens):
    import onnxruntime as ort

    images = decoded_like(2, 512, 512, seed=11)
    ids, mask = tokens
    session = ort.InferenceSession(str(onnx_512), providers=["CPUExecutionProvider"])
    (got,) = session.run(["score"], {"image": images.numpy(), "reward_input_ids": ids.numpy(), "reward_attention_mask": mask.numpy()})
    with torch.no_grad():
        want = scorer(images, ids, mask).numpy()
    assert float(np.abs(got - want).max()) <= 1e-4


def test_fp16_graph_keeps_the_resize_in_fp32(onnx_512, tokens, tmp_path):
    import onnx
    import onnxruntime as ort

    from export.tensorrt.fp16_graph import write_fp16_graph

    plan = write_fp16_graph(onnx_512, tmp_path / "model.fp16.onnx", "image_reward")
    resize_ops = [n for n in onnx.load(str(onnx_512)).graph.node if n.op_type in ("MatMul", "Round") and n.name.count("/") == 1]
    assert len(resize_ops) == 2 + 3, [n.name for n in resize_ops]  # two filter passes, three 8-bit roundings
    assert all(n.name in plan.selection.nodes for n in resize_ops), "the resize runs in FP32 (FP16 has 3 digits: a 1/255 level is 4e-3)"
    fp16 = onnx.shape_inference.infer_shapes(onnx.load(str(plan.onnx))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(fp16.value_info) + list(fp16.input)}
    types |= {o: a.t.data_type for n in fp16.node if n.op_type == "Constant" for o in n.output for a in n.attribute if a.name == "value"}
    resize = [n for n in fp16.node if n.name in {r.name for r in resize_ops}]
    matrices = [types[i] for n in resize if n.op_type == "MatMul" for i in n.input if i.startswith("/Constant")]
    assert matrices == [onnx.TensorProto.FLOAT] * 2, "PIL's filter weights stay FP32"
    assert all(types[t] == onnx.TensorProto.FLOAT for n in resize for t in list(n.input) + list(n.output)), "and so does every value between them"

    images = decoded_like(2, 512, 512, seed=12)
    ids, mask = tokens
    feeds = {"image": images.numpy(), "reward_input_ids": ids.numpy(), "reward_attention_mask": mask.numpy()}
    scores = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(["score"], feeds)[0] for p in (onnx_512, plan.onnx)}
    assert float(np.abs(scores[onnx_512] - scores[plan.onnx]).max()) <= 2e-2  # the component's FP16 tolerance
