"""The FP16 plan in the ONNX graph, specified on CPU: which nodes the rules keep in FP32, that an
FP32 island really stays FP32 between its casts, how the FP16 graph compares with FP32 on ONNX
Runtime, and how an engine's layer precisions are checked against the plan.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from bll_python.layout import onnx_path
from bll_python.precision import NATIVE_NORMALIZATION_OPS, NORMALIZATION
from export.tensorrt.engine_precision import EnginePrecisionError, check_layer_precisions, tensor_precision
from export.tensorrt.fp16_graph import convert_model, join_fp32_islands, write_fp16_graph
from export.tensorrt.fp16_on_ort import compare_fp16_graph
from export.tensorrt.precision import select_fp32_nodes

UNETS = ("unet_student", "unet_teacher")


@pytest.fixture(scope="module")
def fp16_plans(tiny_repository, deployment, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16")
    return {name: write_fp16_graph(onnx_path(tiny_repository, name), out / name / "model.fp16.onnx", name) for name in deployment.specs()}


def _graph(path) -> onnx.GraphProto:
    model = onnx.load(str(path))
    return onnx.shape_inference.infer_shapes(model).graph


def _types(graph) -> dict[str, int]:
    infos = list(graph.value_info) + list(graph.input) + list(graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in infos} | {t.name: t.data_type for t in graph.initializer}


def _producers(graph) -> dict:
    return {out: n for n in graph.node for out in n.output}


def _round_trips(graph) -> list[str]:
    producers = _producers(graph)
    to = lambda n: next((a.i for a in n.attribute if a.name == "to"), None) if n is not None and n.op_type == "Cast" else None  # noqa: E731
    return [n.name for n in graph.node if to(n) == TensorProto.FLOAT and to(producers.get(n.input[0])) == TensorProto.FLOAT16]


# ---------------------------------------------------------------------------------------------
# Which nodes stay FP32


def test_rules_keep_softmax_timestep_path_and_reward_head_in_fp32(fp16_plans, tiny_repository):
    nodes = {name: plan.selection.nodes for name, plan in fp16_plans.items()}
    for name in ("text_encoder", "vae_decoder", "image_reward"):
        assert any(n.endswith("/Softmax") for n in nodes[name]), name
    for name in UNETS:
        assert not any("Softmax" in n for n in nodes[name]), "UNet softmax is left to fused attention"
        assert {"/unet/time_proj/Mul", "/unet/time_proj/Sin", "/unet/time_proj/Cos"} <= set(nodes[name])
        assert "/unet/Expand" in nodes[name], "the Expand that feeds time_proj the timestep is pinned too (item 10)"
    assert any(n.startswith("/head/") for n in nodes["image_reward"])
    score = next(n for n in onnx.load(str(onnx_path(tiny_repository, "image_reward"))).graph.node if "score" in n.output)
    assert score.op_type == "Div" and score.name in nodes["image_reward"], "the score normalisation after the head"
    for plan in fp16_plans.values():
        assert not plan.selection.unmatched or plan.selection.unmatched == [], plan.selection.unmatched


def test_native_norms_are_left_native_and_never_cast_around(tiny_repository, fp16_plans):
    """Item 4: TensorRT's normalization layer accumulates in FP32 by itself; islands around every
    GroupNorm would add casts at every UNet step."""
    for name, plan in fp16_plans.items():
        graph = _graph(plan.onnx)
        types, producers = _types(graph), _producers(graph)
        norms = [n for n in graph.node if n.op_type in NATIVE_NORMALIZATION_OPS]
        assert norms, name
        for n in norms:
            assert n.name not in plan.selection.nodes
            assert types[n.input[0]] == TensorProto.FLOAT16, f"{name}: {n.name} reads FP16"
            assert producers[n.input[0]].op_type != "Cast" or producers[n.input[0]].name.startswith("graph_input_cast"), f"{name}: no cast before {n.name}"
        assert plan.selection.native[NORMALIZATION.why], f"{name}: the native norms are recorded as left to TensorRT"


def test_timestep_reaches_the_embedding_in_fp32(fp16_plans):
    """Item 10: from the graph input through Expand and time_proj, the timestep is never FP16."""
    for name in UNETS:
        graph = _graph(fp16_plans[name].onnx)
        types = _types(graph)
        expand = next(n for n in graph.node if n.name == "/unet/Expand")
        assert expand.input[0] == "timestep", "Expand reads the FP32 graph input itself, no FP16 round trip"
        assert types[expand.output[0]] == TensorProto.FLOAT
        for n in graph.node:
            if n.name in ("/unet/time_proj/Mul", "/unet/time_proj/Sin", "/unet/time_proj/Cos"):
                assert all(types[t] == TensorProto.FLOAT for t in list(n.input) + list(n.output)), n.name
        assert "timestep" in fp16_plans[name].island_tensors


def test_weights_and_activations_outside_the_islands_are_fp16(fp16_plans):
    for name, plan in fp16_plans.items():
        graph = _graph(plan.onnx)
        float_weights = [t for t in graph.initializer if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        fp16 = [t for t in float_weights if t.data_type == TensorProto.FLOAT16]
        assert len(fp16) > 0.8 * len(float_weights), f"{name}: most weights are FP16"
        assert [i.type.tensor_type.elem_type for i in graph.input if i.type.tensor_type.elem_type in (1, 10)] == [TensorProto.FLOAT] * len(
            [i for i in graph.input if i.type.tensor_type.elem_type in (1, 10)]
        ), "graph inputs keep the spec's FP32"
        assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in graph.output), "so do outputs"
        assert not _round_trips(graph), f"{name}: no FP32 -> FP16 -> FP32 round trip left"


# ---------------------------------------------------------------------------------------------
# A decomposed norm (item 2)


class _DecomposedLayerNorm(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))
        self.bias = torch.nn.Parameter(torch.zeros(width))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class _Block(torch.nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.norm = _DecomposedLayerNorm(width)
        self.out = torch.nn.Linear(width, width)

    def forward(self, x):
        return self.out(self.norm(self.proj(x)))


@pytest.fixture(scope="module")
def decomposed_norm(tmp_path_factory):
    torch.manual_seed(0)
    block = _Block().eval()
    with torch.no_grad():  # activations of a few hundred: their squares overflow FP16 (65504)
        block.proj.weight.mul_(400.0)
    path = tmp_path_factory.mktemp("norm") / "block.onnx"
    torch.onnx.export(block, (torch.randn(2, 64),), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    return path, x, block


def _run(path, x):
    # No graph optimizations: ORT's LayerNorm fusion would rewrite the decomposed norm under test
    # (and mistypes it in FP16).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_whole_decomposed_norm_is_one_fp32_island(decomposed_norm, tmp_path):
    path, _, _ = decomposed_norm
    model = onnx.load(str(path))
    selected = select_fp32_nodes(onnx.shape_inference.infer_shapes(model).graph, (NORMALIZATION,)).nodes
    pow_node = next(n for n in model.graph.node if n.op_type == "Pow")
    assert pow_node.name.startswith("/norm/") and pow_node.name in selected
    assert {"ReduceMean", "Sub", "Pow", "Sqrt", "Div"} <= {n.op_type for n in model.graph.node if n.name in selected}

    converted, plan = convert_model(model, "block", tmp_path / "block.fp16.onnx", rules=(NORMALIZATION,))
    graph = onnx.shape_inference.infer_shapes(converted).graph
    types, producers = _types(graph), _producers(graph)
    square = next(n for n in graph.node if n.op_type == "Pow").output[0]
    assert types[square] == TensorProto.FLOAT, "x^2 is an FP32 tensor"
    readers = [n for n in graph.node if square in n.input]
    assert readers and all(n.op_type == "ReduceMean" for n in readers), "and goes straight into the mean: no FP16 cast between"
    assert plan.joined_round_trips > 0, "the converter's own FP32 -> FP16 -> FP32 round trips were removed"
    assert square in plan.island_tensors
    assert producers[graph.output[0].name].op_type == "Cast"


def test_decomposed_norm_squares_overflow_fp16_and_the_island_keeps_them_fp32(decomposed_norm, tmp_path):
    path, x, block = decomposed_norm
    with torch.no_grad():
        h = block.proj(torch.from_numpy(x)).numpy()
    centred = (h - h.mean(-1, keepdims=True)).astype(np.float16)
    assert not np.isfinite(centred * centred).all(), "these activations' squares overflow when stored in FP16"

    guarded, _ = convert_model(onnx.load(str(path)), "block", rules=(NORMALIZATION,))
    bare, _ = convert_model(onnx.load(str(path)), "block", rules=())
    square = lambda model: _types(onnx.shape_inference.infer_shapes(model).graph)[next(n for n in model.graph.node if n.op_type == "Pow").output[0]]  # noqa: E731
    # A strongly typed engine stores each tensor in its graph type: FP16 without the rule, FP32 with it.
    assert square(bare) == TensorProto.FLOAT16 and square(guarded) == TensorProto.FLOAT
    onnx.save(guarded, str(tmp_path / "guarded.onnx"))
    reference, with_island = _run(path, x), _run(tmp_path / "guarded.onnx", x)
    assert np.isfinite(with_island).all() and np.abs(with_island - reference).max() < 0.1 * np.abs(reference).max()
    # ORT's CPU provider cannot show the overflow of the bare graph: it has no FP16 Pow/ReduceMean
    # kernels and runs them in FP32 behind its own casts (export.tensorrt.fp16_on_ort).


def test_join_removes_only_round_trips_between_fp32_tensors():
    # x (FP32) -> Cast16 -> Cast32 -> Relu: the round trip goes; y (FP16) -> Cast32 stays.
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="c16"),
            helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT, name="c32"),
            helper.make_node("Relu", ["x32"], ["r"], name="relu"),
            helper.make_node("Cast", ["y"], ["y32"], to=TensorProto.FLOAT, name="y32"),
            helper.make_node("Add", ["r", "y32"], ["out"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]), helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )
    assert join_fp32_islands(graph, {"x", "x32", "r", "y32", "out"}) == 1
    names = [n.name for n in graph.node]
    assert "c32" not in names and "c16" not in names and "y32" in names
    assert next(n for n in graph.node if n.name == "relu").input[0] == "x"


# ---------------------------------------------------------------------------------------------
# The FP16 graph against FP32 on ONNX Runtime (CPU), per component


@pytest.mark.slow
@pytest.mark.parametrize("component", ["text_encoder", "unet_student", "unet_teacher", "vae_decoder", "image_reward"])
def test_fp16_graph_matches_fp32_on_onnxruntime(component, fp16_plans, tiny_repository, deployment, capsys):
    plan = fp16_plans[component]
    report = compare_fp16_graph(deployment.specs()[component], onnx_path(tiny_repository, component), plan.onnx, planned_fp32=plan.selection.nodes)
    with capsys.disabled():
        print(f"\n    {report}; ORT CPU ran in FP32 (no FP16 kernel): {report.notes['ort_fp32_ops']}")
    assert all(o.finite for it in report.iterations for o in it["outputs"].values()), f"{component}: NaN/inf in the FP16 graph"
    assert report.passed, str(report)
    assert [it["batch"] for it in report.iterations] == sorted({1, *(r for r in (deployment.specs()[component].profile["B"].opt, deployment.specs()[component].max_batch))})
    assert isinstance(report.notes["ort_fp32_ops"], dict)


# ---------------------------------------------------------------------------------------------
# Engine layer precisions against the plan (item 3)


def _layer(name, inputs, outputs, metadata=None):
    layer = {
        "Name": name,
        "LayerType": "PointWiseV2",
        "Inputs": [{"Name": n, "Format/Datatype": f} for n, f in inputs],
        "Outputs": [{"Name": n, "Format/Datatype": f} for n, f in outputs],
    }
    if metadata:
        layer["Metadata"] = "\x1f".join(f"[ONNX Layer: {m}]" for m in metadata)
    return layer


@pytest.fixture(scope="module")
def unet_plan(fp16_plans):
    return fp16_plans["unet_student"]


def test_engine_check_passes_when_the_islands_run_in_fp32(unet_plan):
    info = {
        "Layers": [
            _layer("PWN(/unet/time_proj/Mul, /unet/time_proj/Sin)", [("/unet/time_proj/Cast_output_cast_0", "Row major linear FP32")], [("/unet/time_proj/Sin_output_cast_0", "Float")],
                   metadata=["/unet/time_proj/Mul", "/unet/time_proj/Sin"]),
            _layer("/unet/conv_in/Conv", [("sample", "Half")], [("/unet/conv_in/Conv_output_0", "Channel major FP16 format where channel % 8 == 0")]),
        ]
    }  # fmt: skip
    check = check_layer_precisions(info, unet_plan)
    assert check.passed and check.checked_layers == 1
    assert {"/unet/time_proj/Mul", "/unet/time_proj/Sin"} <= set(check.seen)
    assert "/unet/Expand" in check.hidden, "a pinned node no layer names is reported, not silently counted as checked"


def test_engine_check_fails_when_a_pinned_layer_runs_in_fp16(unet_plan):
    dropped = {"Layers": [_layer("/unet/time_proj/Sin", [("x", "Half")], [("y", "Half")], metadata=["/unet/time_proj/Sin"])]}
    check = check_layer_precisions(dropped, unet_plan)
    assert not check.passed and "/unet/time_proj/Sin" in check.wrong[0]
    # Fused with FP16 neighbours, found by its island tensor instead (no metadata, foreign name).
    fused = {"Layers": [_layer("{ForeignNode[/unet/conv_in/Conv.../unet/time_embedding/linear_1/Gemm]}", [("/unet/time_proj/Sin_output_cast_0", "Half")], [("z", "Half")])]}
    assert not check_layer_precisions(fused, unet_plan).passed
    with pytest.raises(EnginePrecisionError, match="DETAILED"):
        check_layer_precisions({"Layers": ["/unet/time_proj/Sin"]}, unet_plan)


def test_inspector_datatype_strings():
    assert [tensor_precision(f) for f in ("Row major linear FP32", "Float", "Half", "Row major linear FP16 format", "BFloat16", "Int32", "Row major linear Int64 format")] == [
        "FP32", "FP32", "FP16", "FP16", "BF16", "other", "other",
    ]  # fmt: skip
