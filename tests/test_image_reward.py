"""ImageReward on transformers' BLIP: original-checkpoint loading, MLP folding, tokenizer, ONNX export.

The tiny checkpoint is checked against ``reference_image_reward``, an independent re-statement of the
original architecture whose ``state_dict`` keys are the original ones by construction.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bll_python.specs import image_reward_spec
from bll_python.text import reward_tokenizer, tokenize_for_reward
from export.checkpoints.presets import write_tiny_image_reward
from export.models.image_reward import CLIP_MEAN, CLIP_STD, MASK_VALUE, ImageRewardScorer, load_image_reward, load_original_state_dict
from export.models.image_reward_config import CHECKPOINT_NAME, CONFIG_NAME, TINY_CONFIG, ImageRewardConfig
from export.models.image_reward_keys import IGNORED_ORIGINAL_KEYS, CheckpointError, fold_mlp_head, original_parameter_shapes, rename_original_key
from export.models.resample import resize_crop_matrices

try:
    from tests.reference_image_reward import MLP, ReferenceImageReward, normalize_like_original, upstream_pixels
except ImportError:  # tests/ is not a package: pytest put this folder on sys.path
    from reference_image_reward import MLP, ReferenceImageReward, normalize_like_original, upstream_pixels

VOCAB = Path(__file__).resolve().parents[1] / "export" / "assets" / "tokenizers" / "bert_uncased_vocab.txt"
PROMPTS = [
    "a photo of a cat",
    "an oil painting of a lighthouse on a cliff at sunset, dramatic clouds",
    " ".join(["a very long prompt that keeps going"] * 12),  # truncated to 35 tokens
]
TINY_IMAGE_SIZE = 128  # the tiny preset's decoded image size


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_image_reward(tmp_path_factory.mktemp("reward"), seed=0)


@pytest.fixture(scope="module")
def tiny_state(tiny: Path) -> dict[str, torch.Tensor]:
    return torch.load(tiny, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def scorer(tiny: Path) -> ImageRewardScorer:
    return load_image_reward(tiny, tiny.with_name(CONFIG_NAME))


@pytest.fixture(scope="module")
def reference(tiny: Path, tiny_state: dict[str, torch.Tensor]) -> ReferenceImageReward:
    ref = ReferenceImageReward(json.loads(tiny.with_name(CONFIG_NAME).read_text()))
    ref.load_state_dict(tiny_state, strict=True)
    return ref


@pytest.fixture(scope="module")
def tokenizer():
    return reward_tokenizer(VOCAB)


def _tokens(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = tokenize_for_reward(tokenizer, prompts)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- checkpoint layout


def test_tiny_checkpoint_has_exactly_the_original_architectures_keys_and_shapes(tiny: Path, tiny_state) -> None:
    ref = ReferenceImageReward(json.loads(tiny.with_name(CONFIG_NAME).read_text()))
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in tiny_state.items()} == expected
    assert tiny.name == CHECKPOINT_NAME
    # The extras the released checkpoint carries are there, so the ignore path is exercised.
    assert set(IGNORED_ORIGINAL_KEYS) <= set(tiny_state)


def test_tiny_checkpoint_is_written_with_its_config(tmp_path: Path) -> None:
    # How fast is for benchmarks to say, not for a test to assert.
    path = write_tiny_image_reward(tmp_path, seed=3)
    assert path == tmp_path / CHECKPOINT_NAME and (tmp_path / CONFIG_NAME).is_file()
    assert ImageRewardConfig.from_json(tmp_path / CONFIG_NAME) == TINY_CONFIG


def test_published_config_is_vit_large_and_bert_base_with_1024_wide_cross_attention() -> None:
    shapes = original_parameter_shapes(ImageRewardConfig.published())
    assert shapes["blip.visual_encoder.pos_embed"] == (1, 197, 1024)
    assert shapes["blip.visual_encoder.blocks.23.mlp.fc1.weight"] == (4096, 1024)
    assert "blip.visual_encoder.blocks.24.norm1.weight" not in shapes
    assert shapes["blip.text_encoder.embeddings.word_embeddings.weight"] == (30524, 768)
    assert shapes["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"] == (768, 1024)
    assert shapes["mlp.layers.0.weight"] == (1024, 768)
    assert shapes["mlp.layers.7.weight"] == (1, 16)


def test_published_checkpoint_layout_fills_the_published_transformers_model_exactly() -> None:
    config = ImageRewardConfig.published()
    with torch.device("meta"):  # shapes only: no 445M-parameter allocation
        model = ImageRewardScorer(config)
    renamed = {rename_original_key(k): s for k, s in original_parameter_shapes(config).items() if not k.startswith("mlp.")}
    renamed.update({"head.weight": (1, 768), "head.bias": (1,)})
    assert renamed == {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "original, renamed",
    [
        ("blip.visual_encoder.cls_token", "vision.embeddings.class_embedding"),
        ("blip.visual_encoder.pos_embed", "vision.embeddings.position_embedding"),
        ("blip.visual_encoder.patch_embed.proj.weight", "vision.embeddings.patch_embedding.weight"),
        ("blip.visual_encoder.blocks.13.norm1.bias", "vision.encoder.layers.13.layer_norm1.bias"),
        ("blip.visual_encoder.blocks.0.attn.qkv.weight", "vision.encoder.layers.0.self_attn.qkv.weight"),
        ("blip.visual_encoder.blocks.2.attn.proj.bias", "vision.encoder.layers.2.self_attn.projection.bias"),
        ("blip.visual_encoder.blocks.5.mlp.fc2.weight", "vision.encoder.layers.5.mlp.fc2.weight"),
        ("blip.visual_encoder.norm.weight", "vision.post_layernorm.weight"),
        (
            "blip.text_encoder.encoder.layer.3.crossattention.output.LayerNorm.bias",
            "text.encoder.layer.3.crossattention.output.LayerNorm.bias",
        ),
    ],
)
def test_original_keys_rename_to_transformers_blip_names(original: str, renamed: str) -> None:
    assert rename_original_key(original) == renamed


def test_loading_consumes_every_original_key_and_fills_every_transformers_parameter(tiny_state) -> None:
    fresh = ImageRewardScorer(TINY_CONFIG)
    for tensor in fresh.state_dict().values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))  # anything the loader leaves alone stays NaN

    report = load_original_state_dict(fresh, tiny_state)

    consumed, ignored = set(report.consumed_keys), set(report.ignored_keys)
    assert consumed | ignored == set(tiny_state) and not consumed & ignored
    assert ignored == set(IGNORED_ORIGINAL_KEYS)
    unfilled = [name for name, t in fresh.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    assert unfilled == []
    assert fresh.head.weight.shape == (1, TINY_CONFIG.text.hidden_size)  # the five MLP Linears, folded


# ---------------------------------------------------------------------------- parity with the original


def test_score_equals_the_original_architecture_on_the_same_image_and_prompt(scorer, reference, tokenizer) -> None:
    # Rows: (image A, prompt 0), (image A, prompt 1), (image B, prompt 0), (image B, truncated prompt 2).
    # A is noise, B a red image with a green ramp: two noise images look alike to a random ViT.
    a = _images(1, 224, seed=1)[0]
    b = torch.zeros(3, 224, 224)
    b[0], b[1] = 1.0, torch.linspace(0, 1, 224)
    # On uint8 levels, so the graph's preprocessing is the identity here, as upstream's is at 224 px.
    images = torch.round(torch.stack([a, a, b, b]) * 255) / 255
    ids, mask = _tokens(tokenizer, [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[2]])

    with torch.no_grad():
        ours = scorer(images, ids, mask)
        pixels = normalize_like_original(images)
        expected = reference.score(pixels, ids.long(), mask.long())
        feature_err = (scorer.text_features(images, ids, mask) - reference.features(pixels, ids.long(), mask.long())).abs().max()

    err = (ours - expected).abs().max().item()
    assert ours.shape == (4,) and ours.dtype == torch.float32
    assert err <= 1e-5, f"score max abs error vs original architecture: {err:.3g}"
    assert feature_err <= 1e-5, f"text feature max abs error: {feature_err:.3g}"
    # The comparison is only meaningful if image and prompt both move the score.
    assert abs(expected[0] - expected[1]) > 1e-2 and abs(expected[0] - expected[2]) > 1e-2, expected


def test_layer_norm_epsilons_are_the_originals(scorer, reference) -> None:
    # Too small to show in a 1e-5 score comparison, so checked directly: BLIP's ViT uses 1e-6
    # (transformers' BlipVisionConfig default is 1e-5), med.py's BERT 1e-12.
    def eps(module: torch.nn.Module) -> set[float]:
        return {m.eps for m in module.modules() if isinstance(m, torch.nn.LayerNorm)}

    assert eps(scorer.vision) == eps(reference.blip.visual_encoder) == {1e-6}
    assert eps(scorer.text) == eps(reference.blip.text_encoder) == {1e-12}


def test_padding_is_masked_out(scorer, tokenizer) -> None:
    ids, mask = _tokens(tokenizer, [PROMPTS[0]])
    image = _images(1, 224, seed=2)
    with torch.no_grad():
        masked = scorer(image, ids, mask)
        attending_to_pads = scorer(image, ids, torch.ones_like(mask))
        other_pad_ids = scorer(image, torch.where(mask.bool(), ids, torch.full_like(ids, 1037)), mask)
    assert (masked - attending_to_pads).abs().item() > 1e-3
    assert (masked - other_pad_ids).abs().item() < 1e-5


def test_decoded_image_is_resized_in_the_graph_to_the_vit_input(scorer, reference, tokenizer) -> None:
    image = _images(2, TINY_IMAGE_SIZE, seed=4)
    ids, mask = _tokens(tokenizer, PROMPTS[:2])
    with torch.no_grad():
        err = (scorer(image, ids, mask) - reference.score(upstream_pixels(image), ids.long(), mask.long())).abs().max()
    # PIL's fixed-point passes differ by a uint8 level on ~1% of the pixels (test_image_reward_resize).
    assert err <= 1e-4, f"{err:.3g}"


def test_preprocess_normalises_with_clip_statistics_and_clips_bicubic_overshoot(scorer) -> None:
    grey = torch.full((1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), 128 / 255)
    out = scorer.preprocess(grey)
    assert out.shape == (1, 3, 224, 224)
    for c in range(3):
        torch.testing.assert_close(out[0, c], torch.full((224, 224), (128 / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), rtol=0, atol=1e-5)

    edge = torch.zeros(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    edge[..., TINY_IMAGE_SIZE // 2 :] = 1.0
    _, cols = resize_crop_matrices(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 224)
    assert (edge @ torch.from_numpy(cols).T).max() > 1.0  # bicubic rings
    out = scorer.preprocess(edge)
    for c in range(3):
        lo, hi = (0 - CLIP_MEAN[c]) / CLIP_STD[c], (1 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert lo - 1e-5 <= out[0, c].min() and out[0, c].max() <= hi + 1e-5


# ---------------------------------------------------------------------------- MLP folding


@pytest.mark.parametrize("width", [TINY_CONFIG.text.hidden_size, 768])
def test_folded_head_equals_the_original_mlp(width: int) -> None:
    gen = torch.Generator().manual_seed(width)
    mlp = MLP(width).eval()
    with torch.no_grad():
        for p in mlp.parameters():
            if p.dim() == 2:
                p.copy_(0.7 * torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    weight, bias = fold_mlp_head({f"mlp.{k}": v for k, v in mlp.state_dict().items()})

    x = torch.randn(512, width, generator=gen)
    with torch.no_grad():
        err = (F.linear(x, weight, bias) - mlp(x)).abs().max().item()
    assert weight.shape == (1, width) and bias.shape == (1,)
    assert err <= 1e-6, f"folded vs unfolded max abs error {err:.3g}"


def test_loader_reports_the_folding_error(scorer) -> None:
    assert scorer.load_report is not None
    assert 0.0 <= scorer.load_report.folding_error <= 1e-6, scorer.load_report


# ---------------------------------------------------------------------------- bad checkpoints


def _broken(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / CHECKPOINT_NAME
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "key",
    ["blip.visual_encoder.blocks.1.attn.qkv.weight", "blip.text_encoder.encoder.layer.0.crossattention.self.key.bias", "mlp.layers.6.bias"],
)
def test_missing_key_is_named(tmp_path: Path, tiny: Path, tiny_state, key: str) -> None:
    state = dict(tiny_state)
    del state[key]
    with pytest.raises(CheckpointError, match="missing") as err:
        load_image_reward(_broken(tmp_path, state), tiny.with_name(CONFIG_NAME))
    assert key in str(err.value)


@pytest.mark.parametrize("key", ["blip.text_encoder.pooler.dense.weight", "blip.itm_head.weight", "module.mlp.layers.0.weight"])
def test_unexpected_key_is_named(tmp_path: Path, tiny: Path, tiny_state, key: str) -> None:
    state = dict(tiny_state)
    state[key] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError, match="unexpected") as err:
        load_image_reward(_broken(tmp_path, state), tiny.with_name(CONFIG_NAME))
    assert key in str(err.value)


def test_wrong_shape_names_key_expected_and_found(tmp_path: Path, tiny: Path, tiny_state) -> None:
    key = "blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"
    state = dict(tiny_state)
    state[key] = torch.zeros(32, 48)
    with pytest.raises(CheckpointError, match="wrong shape") as err:
        load_image_reward(_broken(tmp_path, state), tiny.with_name(CONFIG_NAME))
    assert f"{key}: expected [32, 32], found [32, 48]" in str(err.value)


def test_integer_weight_is_rejected(tmp_path: Path, tiny: Path, tiny_state) -> None:
    key = "mlp.layers.7.bias"
    state = dict(tiny_state)
    state[key] = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(CheckpointError, match="floating") as err:
        load_image_reward(_broken(tmp_path, state), tiny.with_name(CONFIG_NAME))
    assert key in str(err.value)


def test_tiny_checkpoint_against_the_published_config_fails_before_building_vit_large(tiny: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_image_reward(tiny)  # no config: the published dims are assumed, never inferred
    message = str(err.value)
    assert "blip.visual_encoder.pos_embed: expected [1, 197, 1024], found [1, 197, 32]" in message
    assert "missing" in message and "blip.visual_encoder.blocks.2.attn.qkv.weight" in message
    assert str(tiny.with_name(CONFIG_NAME)) in message  # points at the config that would fit


def test_bad_paths_are_named(tmp_path: Path, tiny: Path) -> None:
    absent = tmp_path / "nowhere" / CHECKPOINT_NAME
    with pytest.raises(FileNotFoundError, match=str(absent)):
        load_image_reward(absent)
    absent_config = tmp_path / "missing.config.json"
    with pytest.raises(FileNotFoundError, match=str(absent_config)):
        load_image_reward(tiny, absent_config)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        reward_tokenizer(tmp_path / "nope.txt")


def test_non_state_dict_checkpoint_is_rejected(tmp_path: Path, tiny: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="flat state dict"):
        load_image_reward(path, tiny.with_name(CONFIG_NAME))


def test_config_file_must_spell_out_every_dim(tmp_path: Path) -> None:
    raw = json.loads(TINY_CONFIG.to_json(tmp_path / CONFIG_NAME).read_text())
    del raw["text"]["encoder_width"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="encoder_width"):
        ImageRewardConfig.from_json(tmp_path / CONFIG_NAME)


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_adds_blips_dec_and_enc_tokens(tokenizer) -> None:
    assert len(VOCAB.read_text(encoding="utf-8").splitlines()) == 30522
    assert tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert tokenizer.bos_token == "[DEC]" and tokenizer.enc_token_id == 30523
    assert len(tokenizer) == TINY_CONFIG.text.vocab_size == ImageRewardConfig.published().text.vocab_size


def test_short_prompt_is_cls_tokens_sep_then_padding(tokenizer) -> None:
    ids, mask = tokenize_for_reward(tokenizer, [PROMPTS[0], "A Photo of a CAT"])
    assert ids.shape == mask.shape == (2, 35) and ids.dtype == mask.dtype == np.int32
    # [CLS] a photo of a cat [SEP]: position 0 stays [CLS]; ImageReward does not put [ENC] there.
    assert ids[0, :7].tolist() == [101, 1037, 6302, 1997, 1037, 4937, 102]
    assert (ids[0, 7:] == 0).all() and mask[0].tolist() == [1] * 7 + [0] * 28
    assert (ids[1] == ids[0]).all()  # uncased


def test_long_prompt_is_truncated_to_35_tokens_ending_in_sep(tokenizer) -> None:
    ids, mask = tokenize_for_reward(tokenizer, [PROMPTS[2]])
    assert ids.shape == (1, 35) and mask.all()
    assert ids[0, 0] == 101 and ids[0, -1] == 102


def test_tokenize_for_reward_wants_a_list(tokenizer) -> None:
    with pytest.raises(TypeError):
        tokenize_for_reward(tokenizer, "a photo of a cat")


# ---------------------------------------------------------------------------- masks and ONNX


def test_attention_masks_use_a_finite_fp16_safe_constant(scorer) -> None:
    mask = torch.tensor([[1, 1, 0, 0]], dtype=torch.int32)
    self_mask = scorer.text.get_extended_attention_mask(mask, (1, 4), mask.device, False)
    cross_mask = scorer.text.invert_attention_mask(mask)
    for extended in (self_mask, cross_mask):
        assert extended.min().item() == MASK_VALUE == -1e4
        assert extended.max().item() == 0.0


@pytest.fixture(scope="module")
def onnx_model(scorer, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = image_reward_spec(image_size=TINY_IMAGE_SIZE, text_len=35, max_batch=4)
    ids, mask = _tokens(tokenizer, PROMPTS[:2])
    path = tmp_path_factory.mktemp("onnx") / "image_reward.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is the exporter asked for
        torch.onnx.export(
            scorer,
            (_images(2, TINY_IMAGE_SIZE, seed=5), ids, mask),
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes(),
            opset_version=17,
            dynamo=False,
        )
    return path


def test_exported_graph_holds_no_constant_outside_fp16_range(onnx_model: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_model))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                arrays[f"{node.name}.{attr.name}"] = numpy_helper.to_array(attr.t)
    fp16_max = float(np.finfo(np.float16).max)
    outside = {name: float(np.abs(a).max()) for name, a in arrays.items() if a.dtype.kind == "f" and a.size and np.abs(a).max() > fp16_max}
    assert outside == {}, f"constants an FP16 engine would turn into inf: {outside}"
    assert any(a.dtype.kind == "f" and np.any(a == np.float32(MASK_VALUE)) for a in arrays.values())


def test_onnx_export_runs_in_onnxruntime_at_other_batch_sizes(onnx_model: Path, scorer, tokenizer) -> None:
    import onnxruntime as ort

    spec = image_reward_spec(image_size=TINY_IMAGE_SIZE, text_len=35, max_batch=4)
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == spec.input_names
    for batch in (1, 3):
        image = _images(batch, TINY_IMAGE_SIZE, seed=10 + batch)
        ids, mask = _tokens(tokenizer, (PROMPTS * 2)[:batch])
        (got,) = session.run(spec.output_names, {"image": image.numpy(), "reward_input_ids": ids.numpy(), "reward_attention_mask": mask.numpy()})
        with torch.no_grad():
            want = scorer(image, ids, mask).numpy()
        err = float(np.abs(got - want).max())
        assert got.shape == (batch,) and got.dtype == np.float32
        assert err <= 1e-4, f"batch {batch}: onnxruntime vs torch max abs error {err:.3g}"
