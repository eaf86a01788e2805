"""The VAE's ``force_upcast`` carries over to the FP16 engines: a checkpoint whose VAE config says it
(SDXL's VAE, whose trained activations overflow FP16) gets a VAE decoder engine that stays FP32, as
diffusers' SDXL pipelines decode it in FP32; the fp16-fix VAE (``force_upcast: false``) and SD1.5
(whose pipeline never upcasts) keep the usual FP16 plan with its FP32 islands.

The CPU part: the flag read from the checkpoint into the manifest, the rule chosen from it, the
"FP16" graph it yields (the FP32 graph, nothing converted) on ONNX Runtime, and the engine plan that
records it. The engine itself (TensorRT keeping every layer FP32, read back by the engine
inspector) is checked by the GPU smoke script: ``bash benchmarks/gpu_smoke.sh --preset tiny-xl``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from bll_python.components import VAE_DECODER, component
from bll_python.families import SD15, SDXL
from bll_python.layout import onnx_path
from bll_python.precision import FORCE_UPCAST, SOFTMAX
from export.checkpoints.sources import vae_force_upcast
from export.tensorrt.fp16_graph import write_fp16_graph
from export.tensorrt.fp16_on_ort import compare_fp16_graph
from export.tensorrt.plan import repository_builds


def _vae_config(tiny_xl_models, **changes):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config({**tiny_xl_models.raw["vae"].config, **changes})


def test_the_flag_follows_the_vae_config_where_the_family_honours_it(tiny_xl_models):
    # tiny-xl writes SDXL's VAE config (force_upcast: true); the fp16-fix VAE's config says false.
    assert vae_force_upcast(SDXL, tiny_xl_models.raw["vae"]) is True
    assert vae_force_upcast(SDXL, _vae_config(tiny_xl_models, force_upcast=False)) is False
    # StableDiffusionPipeline never reads the flag (and AutoencoderKL defaults it to true).
    assert vae_force_upcast(SD15, tiny_xl_models.raw["vae"]) is False


def test_the_manifest_records_it(xl_deployment, deployment):
    assert xl_deployment.vae_force_upcast is True
    assert deployment.vae_force_upcast is False  # the tiny SD1.5 preset's VAE config says true too


def test_the_rule_is_chosen_from_the_manifest(xl_deployment):
    assert component("vae_decoder").fp32_rules_for(xl_deployment) == (FORCE_UPCAST,)
    fp16_fix = replace(xl_deployment, vae_force_upcast=False)
    assert component("vae_decoder").fp32_rules_for(fp16_fix) == VAE_DECODER.fp32_rules and SOFTMAX in VAE_DECODER.fp32_rules
    # Only the component whose record names the flag: the UNets keep their rules.
    assert component("unet_teacher").fp32_rules_for(xl_deployment) == component("unet_teacher").fp32_rules


@pytest.fixture(scope="module")
def upcast_builds(tiny_xl_repository, xl_deployment, tmp_path_factory):
    target = tmp_path_factory.mktemp("trt-xl") / "repository"
    return repository_builds(tiny_xl_repository, xl_deployment.specs(), target, deployment=xl_deployment)


def test_the_engine_plan_keeps_the_vae_in_fp32_and_says_why(upcast_builds):
    vae = upcast_builds["vae_decoder"]
    assert vae.rules == (FORCE_UPCAST,) and vae.describe()["fp32_rules"] == [FORCE_UPCAST.why]
    assert upcast_builds["unet_teacher"].rules == component("unet_teacher").fp32_rules


def test_the_upcast_vae_graph_is_the_fp32_graph_on_onnxruntime(upcast_builds, tiny_xl_repository, xl_deployment, capsys):
    import onnx

    vae = upcast_builds["vae_decoder"]
    plan = vae.write_fp16_graph()
    graph = onnx.load(str(vae.fp16_onnx)).graph
    # Every node that computes on values is pinned, no tensor or weight is FP16, and the plan
    # (recorded next to the graph) lists every float tensor as an island the engine check reads back.
    assert plan.selection.matched[FORCE_UPCAST.why] == sum(1 for n in graph.node if n.op_type not in ("Shape", "Size"))
    assert not [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert not [n.name for n in graph.node if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)]
    assert "latent" in plan.island_tensors and "image" in plan.island_tensors
    report = compare_fp16_graph(xl_deployment.specs()["vae_decoder"], onnx_path(tiny_xl_repository, "vae_decoder"), vae.fp16_onnx, planned_fp32=plan.selection.nodes)
    with capsys.disabled():
        print(f"\n    tiny-xl force_upcast {report}")
    assert all(o.finite for it in report.iterations for o in it["outputs"].values())
    assert max(o.max_absdiff for it in report.iterations for o in it["outputs"].values()) == 0.0


def test_without_the_flag_the_vae_graph_is_fp16_again(tiny_xl_repository, tmp_path):
    # The fp16-fix path: the record's rules, so most of the graph (weights included) is FP16.
    import onnx

    plan = write_fp16_graph(onnx_path(tiny_xl_repository, "vae_decoder"), tmp_path / "model.fp16.onnx", "vae_decoder")
    graph = onnx.load(str(plan.onnx)).graph
    fp16_weights = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert FORCE_UPCAST.why not in plan.selection.matched and len(fp16_weights) > len(graph.initializer) // 2
