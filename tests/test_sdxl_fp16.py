"""The SDXL family's graphs under the FP16 plan: the FP32 rules find their nodes, and the FP16 graphs
stay finite and within each record's tolerance of FP32 on ONNX Runtime (CPU; the GPU engines are
checked by the GPU smoke script).

The SDXL VAE's known FP16 overflow is a property of its trained weights (activations beyond 65504 in
the decoder's up blocks), which random tiny-xl weights do not have; the served fix is the fp16-fix
VAE (export/CHECKPOINTS.md). What is checked here is that the FP16 graph of SDXL's VAE graph, with
SDXL's scaling factor in it, is finite and matches FP32.
"""

from __future__ import annotations

import pytest

from bll_python.layout import onnx_path
from bll_python.precision import SOFTMAX, TIME_PROJ
from export.tensorrt.fp16_graph import write_fp16_graph
from export.tensorrt.fp16_on_ort import compare_fp16_graph

XL_GRAPHS = ("text_encoder_2", "unet_teacher", "vae_decoder")


@pytest.fixture(scope="module")
def xl_fp16_plans(tiny_xl_repository, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16-xl")
    return {name: write_fp16_graph(onnx_path(tiny_xl_repository, name), out / name / "model.fp16.onnx", name) for name in XL_GRAPHS}


def test_the_fp32_rules_find_their_nodes_in_the_sdxl_graphs(xl_fp16_plans):
    unet = xl_fp16_plans["unet_teacher"].selection
    assert unet.matched[TIME_PROJ.why] > 0, "the timestep embedding of the SDXL UNet is not kept in FP32"
    assert xl_fp16_plans["text_encoder_2"].selection.matched[SOFTMAX.why] > 0
    assert xl_fp16_plans["vae_decoder"].selection.matched[SOFTMAX.why] > 0
    for name, plan in xl_fp16_plans.items():
        assert not plan.selection.unmatched, f"{name}: rules that selected nothing: {plan.selection.unmatched}"


@pytest.mark.slow
@pytest.mark.parametrize("component", XL_GRAPHS)
def test_sdxl_fp16_graph_matches_fp32_on_onnxruntime(component, xl_fp16_plans, tiny_xl_repository, xl_deployment, capsys):
    plan = xl_fp16_plans[component]
    report = compare_fp16_graph(xl_deployment.specs()[component], onnx_path(tiny_xl_repository, component), plan.onnx, planned_fp32=plan.selection.nodes)
    with capsys.disabled():
        print(f"\n    tiny-xl {report}")
    assert all(o.finite for it in report.iterations for o in it["outputs"].values()), f"{component}: NaN/inf in the FP16 graph"
    assert report.passed, str(report)
