"""One record per component: every table keyed by component is a lookup over the records, and every
record's export wrapper resolves to a module that takes its spec's inputs in order."""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
import torch

from benchmarks.triton_stats import COMPONENTS as STATS_COMPONENTS
from bll_python.components import COMPONENT_NAMES, COMPONENTS, CORE_COMPONENTS, component
from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS
from bll_python.dtypes import DTYPES, dtype, tensorrt_to_torch, torch_dtype
from bll_python.engines import Engines
from bll_python.metrics import STAGES
from bll_python.precision import NORMALIZATION
from export.models.wrappers import wrapper_factory
from export.tensorrt.precision import FP32_RULES, fp32_rules
from export.tensorrt.validate import TOLERANCES
from export.triton.placement import Placement


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_record_names_a_wrapper_that_resolves_to_its_specs_signature(family, request):
    tiny_models, deployment = (request.getfixturevalue(f) for f in (("tiny_models", "deployment") if family == "sd15" else ("tiny_xl_models", "xl_deployment")))
    specs = deployment.specs()
    for name, record in deployment.components().items():
        factory = wrapper_factory(record)
        module = factory(tiny_models.raw[record.source])
        params = list(inspect.signature(module.forward).parameters.values())
        names = [p.name for p in params]
        assert names[: len(specs[name].input_names)] == specs[name].input_names, name
        assert all(p.default is not inspect.Parameter.empty for p in params[len(specs[name].input_names) :]), f"{name}: extra arguments must be optional"
        assert type(module) is type(tiny_models.modules[name]), "the loaded export modules are the records' wrappers"


def test_an_unresolvable_wrapper_is_named():
    broken = types.SimpleNamespace(name="text_encoder_2", wrapper="export.models.wrappers:NoSuchWrapper")
    with pytest.raises(ImportError, match="text_encoder_2.*NoSuchWrapper"):
        wrapper_factory(broken)


def test_deployment_specs_are_the_records_specs_at_their_cfg_rows(deployment):
    specs = deployment.specs()
    assert tuple(specs) == CORE_COMPONENTS, "an SD1.5 deployment serves the core components"
    for name, spec in specs.items():
        assert spec.name == name
        assert spec.max_batch == deployment.max_rows * COMPONENTS[name].cfg_rows
    assert {n for n in COMPONENT_NAMES if COMPONENTS[n].cfg_rows == 2} == {"text_encoder", "text_encoder_2", "unet_student", "unet_teacher", "unet_refiner"}
    # SDXL's components belong to its family; the refiner also needs its checkpoint.
    assert {n for n, c in COMPONENTS.items() if "sd15" not in c.families} == {"text_encoder_2", "unet_refiner"}
    assert [n for n, c in COMPONENTS.items() if c.optional] == ["unet_refiner"]


def test_tensorrt_rules_tolerances_placement_and_stages_come_from_the_records():
    for name, record in COMPONENTS.items():
        assert FP32_RULES[name] == fp32_rules(name) == record.fp32_rules
        assert TOLERANCES[name] == record.tolerance
        assert Placement().count(name) == record.instances
    assert fp32_rules("not_a_component") == (NORMALIZATION,), "an unknown graph still gets the norm guard"
    assert set(STAGES) == {c.stage for c in COMPONENTS.values()} == {"text", "student", "teacher", "decode", "reward"}
    assert STATS_COMPONENTS == COMPONENT_NAMES
    with pytest.raises(KeyError, match="no component 'refiner'"):
        component("refiner")
    with pytest.raises(TypeError, match="no component"):
        Placement(refiner=1)


def test_engines_are_keyed_by_the_records(torch_engines):
    engines = [e for _, e in torch_engines.items()]
    by_position = Engines(*engines)
    assert [n for n, _ in by_position.items()] == list(CORE_COMPONENTS)
    assert by_position.unet_teacher is by_position["unet_teacher"] is torch_engines.unet_teacher
    with pytest.raises(TypeError, match=r"missing \['image_reward'\]"):
        Engines(*engines[:-1])
    with pytest.raises(TypeError, match=r"unknown \['refiner'\]"):
        Engines(*engines, refiner=engines[0])


def test_one_dtype_table_spells_every_type_for_every_library():
    for f in REQUEST_FIELDS + RESPONSE_FIELDS:
        row = dtype(f.dtype)
        assert (f.triton_dtype, f.client_dtype, f.numpy_dtype) == (row.triton, row.client, row.numpy)
    assert torch_dtype("float16") is torch.float16 and dtype("bytes").numpy is np.object_
    with pytest.raises(TypeError, match="bytes has no torch"):
        torch_dtype("bytes")
    with pytest.raises(KeyError, match="unknown dtype 'complex64'"):
        dtype("complex64")
    # tensorrt exists only on GPU machines: a stand-in with its attribute names.
    fake_trt = types.SimpleNamespace(**{row.tensorrt: object() for row in DTYPES.values() if row.tensorrt})
    table = tensorrt_to_torch(fake_trt)
    assert table[fake_trt.float32] is torch.float32 and table[fake_trt.int64] is torch.int64 and table[fake_trt.bool] is torch.bool
    assert len(table) == len([r for r in DTYPES.values() if r.tensorrt and r.torch])
