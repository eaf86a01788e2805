"""The serving contract: one description drives configs, parsing, the client and the README."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from bll_python.contract import REQUEST_FIELDS, RESPONSE_FIELDS
from bll_python.serving import parse_request
from bll_python.settings import GenerationSettings, SettingsError, check_number
from export.triton.configs import bls_config, component_config

README = Path(__file__).resolve().parent.parent / "README.md"


def _col(values, dtype=None):
    return np.array([[v] for v in values], dtype=dtype or np.object_)


def test_readme_contract_tables_list_exactly_the_contract_fields_and_types():
    rows = re.findall(r"^\| `(\w+)` \| (\w+)", README.read_text(), flags=re.M)
    documented = dict(rows)
    for f in REQUEST_FIELDS + RESPONSE_FIELDS:
        assert documented.get(f.name) == f.client_dtype, f"README documents {f.name} as {documented.get(f.name)}, the contract says {f.client_dtype}"


def test_bls_config_declares_every_contract_field_with_its_type(deployment):
    config = bls_config(deployment)
    declared = {t.name: t for t in [*config.input, *config.output]}
    for f in REQUEST_FIELDS + RESPONSE_FIELDS:
        assert f.name in declared, f"{f.name} missing from the BLS config"
        assert mc.DataType.Name(declared[f.name].data_type) == f.triton_dtype
    assert config.max_batch_size == deployment.max_rows
    # One request per execution: an accepted image must not wait for its batch neighbours' teacher work.
    # The dynamic batcher is there for its bounded queue only (admission control, tests/test_admission.py).
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) == [1] and batching.max_queue_delay_microseconds == 0
    assert batching.default_queue_policy.max_queue_size >= config.instance_group[0].count
    # Images come at each request's size (height, width), so the output's sides are variable.
    assert deployment.image_range is not None
    image = declared["image"]
    assert (image.data_type, list(image.dims)) == (mc.TYPE_UINT8, [-1, -1, 3])
    optional = [t.name for t in config.input if t.optional]
    assert sorted(optional) == sorted(f.name for f in REQUEST_FIELDS if f.optional)


def test_component_configs_come_from_the_specs(deployment):
    for name, spec in deployment.specs().items():
        config = component_config(spec)
        assert config.name == name and config.max_batch_size == spec.max_batch
        declared = {t.name: mc.DataType.Name(t.data_type) for t in [*config.input, *config.output]}
        for t in spec.inputs + spec.outputs:
            assert declared[t.name] == t.triton_dtype
    unet = component_config(deployment.specs()["unet_teacher"])
    # The per-row timestep is [B] for the model and [B, 1] on the wire.
    timestep = next(t for t in unet.input if t.name == "timestep")
    assert (timestep.data_type, list(timestep.dims), timestep.HasField("reshape"), list(timestep.reshape.shape)) == (mc.TYPE_FP32, [1], True, [])


def test_a_request_parses_into_one_row_per_prompt_with_defaults_filled_in():
    defaults = GenerationSettings(student_steps=5, teacher_steps=10)
    rows = parse_request({"prompt": _col([b"a fox", b"a cat"]), "seed": _col([7, 8], np.int64), "k": _col([30.0], np.float32).repeat(2, 0)}, defaults)
    assert [r.prompt for r in rows] == ["a fox", "a cat"] and [r.seed for r in rows] == [7, 8]
    assert rows[0].settings.k == 30.0 and rows[0].settings.tau is None and rows[0].settings.student_steps == 5


@pytest.mark.parametrize(
    "defaults, given, tau, k",
    [
        (GenerationSettings(k=50.0), {"tau": -0.5}, -0.5, None),
        (GenerationSettings(tau=-0.5), {"k": 30.0}, None, 30.0),
        (GenerationSettings(k=50.0), {}, None, 50.0),
    ],
)
def test_a_request_that_picks_tau_or_k_replaces_the_default_gate(defaults, given, tau, k):
    s = GenerationSettings.from_mapping(given, defaults)
    assert (s.tau, s.k) == (tau, k)


def test_an_unknown_setting_is_named():
    with pytest.raises(SettingsError) as err:
        GenerationSettings.from_mapping({"sigma": 0.5, "steps": 4}, GenerationSettings())
    assert err.value.field == "steps" and "unknown setting" in str(err.value) and "'sigma'" in str(err.value)


@pytest.mark.parametrize(
    "tensors, field, fragment",
    [
        ({"prompt": _col([b""])}, "prompt", "blank"),
        ({"prompt": _col([b"\xff\xfe"])}, "prompt", "UTF-8"),
        ({"prompt": _col([b"x"]), "student_steps": _col([0], np.int32)}, "student_steps", "[1, 50]"),
        ({"prompt": _col([b"x"]), "teacher_steps": _col([101], np.int32)}, "teacher_steps", "[1, 100]"),
        ({"prompt": _col([b"x"]), "guidance_scale": _col([np.inf], np.float32)}, "guidance_scale", "[0, 30]"),
        ({"prompt": _col([b"x"]), "guidance_scale": _col([-1.0], np.float32)}, "guidance_scale", "[0, 30]"),
        ({"prompt": _col([b"x"]), "tau": _col([np.nan], np.float32)}, "tau", "NaN"),
        # FP32 0.1 arrives as 0.10000000149011612; the message shows what the client typed.
        ({"prompt": _col([b"x"]), "tau": _col([0.1], np.float32), "k": _col([50.0], np.float32)}, "tau", "got tau=0.1 and k=50; give tau or k, not both"),
        ({"prompt": _col([b"x", b"y"]), "sigma": _col([0.5, 2.0], np.float32)}, "sigma", "sigma: got 2; allowed range [0.001, 1] (row 1)"),
        ({"prompt": _col([b"x"]), "k": _col([101.0], np.float32)}, "k", "[0, 100]"),
        ({"prompt": _col([b"x"]), "sigma": _col([0.0], np.float32)}, "sigma", "[0.001, 1]"),
        ({"prompt": _col([b"x"]), "strategy": _col([b"fastest"])}, "strategy", "refine"),
        ({"prompt": _col([b"x"]), "student_steps": _col([2.5], np.float32)}, "student_steps", "INT32"),
        ({"prompt": _col([b"x"]), "seed": np.array([1, 2], dtype=np.int64)}, "seed", "shape"),
        ({"negative_prompt": _col([b"x"])}, "prompt", "required"),
    ],
)
def test_bad_input_names_the_field_and_the_allowed_range(tensors, field, fragment):
    with pytest.raises(SettingsError) as err:
        parse_request(tensors, GenerationSettings())
    assert err.value.field == field and fragment in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("student_steps", "3", "student_steps: expected a number, got str '3'"),
        ("student_steps", 2.5, "student_steps: expected an integer, got 2.5"),
        ("sigma", 1.5, "sigma: got 1.5; allowed range [0.001, 1]"),
        ("guidance_scale", float("inf"), "guidance_scale: got inf; allowed range [0, 30]"),
        ("k", float("nan"), "k: got NaN; allowed range [0, 100]"),
    ],
)
def test_a_number_outside_its_range_is_refused_with_field_value_and_range(field, value, message):
    with pytest.raises(SettingsError) as err:
        check_number(field, value)
    assert str(err.value) == message and err.value.field == field


def test_tau_and_k_are_stored_as_floats_and_the_strategy_error_lists_the_choices():
    s = GenerationSettings(tau=1, k=None)
    assert isinstance(s.tau, float) and isinstance(GenerationSettings(k=30).k, float)
    with pytest.raises(SettingsError, match=r"^strategy: got 'fast'; allowed: refine, regenerate, student_only, teacher_only$"):
        GenerationSettings(strategy="fast")
