"""sd-scripts construction (issue 29): `--optimizer_args` parsed exactly as sd-scripts' train_util parses them,
switches refused unless they are bools in every class of both packages, and near-miss names answered with the
close ones."""

import ast
import dataclasses
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import optimized
import reference
from reference.registry import OPTIMIZERS, parse_optimizer_args


def sd_scripts_parse(optimizer_args):
    """The oracle: sd-scripts' loop (train_util.get_optimizer), as it reads `--optimizer_args`."""
    kwargs = {}
    for arg in optimizer_args:
        key, value = arg.split("=")
        kwargs[key] = ast.literal_eval(value)
    return kwargs


VALUES = st.sampled_from(
    ["False", "false", "True", "yes", "1e-4", "0.5", "(0.9,0.99)", "0.9,0.99", "'fixed'", "fixed", "[1, 2]",
     "None", "", " 3", "3 ", "'a=b'", "a=b", "{'x': 1}", "(", "1+", "-2"]
)  # fmt: skip
KEYS = st.sampled_from(["came", "lr", "betas", " warmup_steps", "compat", ""])
ENTRIES = st.one_of(st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES), st.sampled_from(["came", "a==b", "=1"]))


def outcome(parse, args):
    try:
        return "ok", parse(args)
    except Exception as error:  # the oracle's exception type is what must match
        return "raises", type(error)


@settings(max_examples=300, deadline=None)
@given(st.lists(ENTRIES, max_size=4))
def test_parsing_matches_sd_scripts(args):
    assert outcome(parse_optimizer_args, args) == outcome(sd_scripts_parse, args)


def test_a_bare_word_raises_naming_the_entry_and_the_fix():
    with pytest.raises(ValueError, match=r"came=false.*ast.literal_eval.*came='false'"):
        parse_optimizer_args(["came=false"])
    with pytest.raises(ValueError, match="one '='"):
        parse_optimizer_args(["warmup_steps"])


@pytest.mark.parametrize("package", [reference, optimized], ids=["reference", "optimized"])
def test_create_optimizer_refuses_what_sd_scripts_refuses(package):
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    with pytest.raises(TypeError, match="list of 'key=value' strings"):
        package.create_optimizer("Automagic_CameAMP", params, optimizer_args="warmup_steps=2")
    with pytest.raises(TypeError, match=r"\['lr'\] both"):
        package.create_optimizer("Automagic_CameAMP", params, lr=1e-3, optimizer_args=["lr=1e-4"])
    opt = package.create_optimizer("Automagic_CameAMP", params, lr=1e-3, optimizer_args=["came=False"])
    assert opt.param_groups[0]["came"] is False and opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("Automagic_CameAMP_8bit_x", None), ("Automagic_CameAMP_8bitt", "Automagic_CameAMP_8Bit"),
     ("Automagic_CameAMP8bitt", "Automagic_CameAMP8bit"), ("HinaAdamW8bit", "HinaAdamWOptimizer8bit"),
     ("Automagic_CameAMP_Improved8Bit", "Automagic_CameAMP_Improved_8Bit")],
)  # fmt: skip
def test_a_near_miss_name_names_the_close_classes(name, suggestion):
    with pytest.raises(ValueError, match="unknown optimizer_type") as error:
        reference.get_optimizer_class(name)
    if suggestion is not None:
        assert f"did you mean {suggestion}" in str(error.value) or f"or {suggestion}" in str(error.value)


CLASSES = sorted({cls.__name__ for cls in OPTIMIZERS.values()})


def switches(cls):
    """Every constructor argument of `cls` whose default is a bool: its config's fields, or its signature's."""
    if hasattr(cls, "config_class"):
        return [f.name for f in dataclasses.fields(cls.config_class) if isinstance(f.default, bool)]
    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if isinstance(p.default, bool)]


@pytest.mark.parametrize("package", [reference, optimized], ids=["reference", "optimized"])
@pytest.mark.parametrize("name", CLASSES)
def test_every_switch_must_be_a_bool(package, name):
    cls = getattr(package, name)
    names = switches(getattr(reference, name))
    assert names, f"{name} has no bool arguments: the probe would test nothing"
    for switch in names:
        for bad in ("false", 0, None):
            with pytest.raises(TypeError, match=switch):
                cls([torch.nn.Parameter(torch.randn(4, 4))], **{switch: bad})
