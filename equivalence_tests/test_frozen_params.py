"""Frozen parameters (issue 29): what `model.parameters()` gives under PEFT, a frozen base beside a LoRA, takes no
state, workspace or place in a flat buffer, so saving the adapter writes the adapter; `requires_grad` flipped
during a run, and a checkpoint holding a frozen tensor's state, behave as in the reference."""

import io
import warnings

import pytest
import torch

import optimized
import reference
from equivalence_tests.harness import SELF, assert_free_running, make_partner, scaled_error
from equivalence_tests.tolerances import FREE_RUNNING_FP32
from reference.registry import OPTIMIZERS

from .cases.frozen import FLAT, held_bytes

CLASSES = sorted({cls.__name__ for cls in OPTIMIZERS.values()})


PACKAGES = pytest.mark.parametrize("package", [reference, optimized], ids=["reference", "optimized"])


# Padding: a tensor takes whole rows (optimized.layout.row_width); in 256-element rows the LayerNorm-like
# 320-element tensor below would pad to 512 (8 % of this model's state bytes), so the bucket takes 32-element rows
# and pads nothing (test_row_width.py covers many small tensors)
PADDING_SHARE = 0.10


class Adapted(torch.nn.Module):
    """A frozen Linear with a LoRA beside it and a trainable scale vector (a LayerNorm's weight)."""

    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.base = torch.nn.Linear(256, 256).requires_grad_(False)
        with torch.no_grad():
            self.base.weight.copy_(torch.randn(256, 256, generator=gen) / 16)
            self.base.bias.copy_(torch.randn(256, generator=gen) / 16)
        self.lora_A = torch.nn.Parameter(torch.randn(4, 256, generator=gen) * 0.05)
        self.lora_B = torch.nn.Parameter(torch.randn(256, 4, generator=gen) * 0.05)
        self.scale = torch.nn.Parameter(torch.ones(320))

    def loss(self, x):
        y = self.base(x) + x @ self.lora_A.T @ self.lora_B.T
        return y.pow(2).mean() + (self.scale - 0.5).pow(2).sum()


def build(package, name, model, **kwargs):
    kwargs = kwargs if "Hina" in name else {"warmup_steps": 4, **kwargs}
    return make_partner(package, name, list(model.parameters()), lr=1e-3, **kwargs)


def train(opt, model, steps, start=0, flips=None):
    gen = torch.Generator().manual_seed(7)
    xs = [torch.randn(8, 256, generator=gen) for _ in range(start + steps)]
    for t in range(start, start + steps):
        for p, trainable in (flips or {}).get(t, ()):
            p.requires_grad_(trainable)
            p.grad = None
        model.loss(xs[t]).backward()
        opt.step()
        opt.zero_grad()


def saved_bytes(module_state) -> int:
    buffer = io.BytesIO()
    torch.save(module_state, buffer)
    return len(buffer.getvalue())


@PACKAGES
@pytest.mark.parametrize("name", CLASSES)
def test_a_frozen_base_takes_no_state(package, name):
    model = Adapted()
    opt = build(package, name, model)
    train(opt, model, 6)
    assert not opt.state[model.base.weight] and not opt.state[model.base.bias]
    assert all(opt.state[p] for p in (model.lora_A, model.lora_B, model.scale))
    for p in (model.base.weight, model.base.bias):  # not re-pointed into a buffer: its own storage, untouched
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    if package is optimized:
        ref_model = Adapted()
        ref = build(reference, name, ref_model)
        train(ref, ref_model, 6)
        assert held_bytes(opt) <= (1 + PADDING_SHARE) * held_bytes(ref)
        workspace = getattr(opt, "workspace_bytes", lambda: 0)()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert workspace <= 8 * trainable * (1 + PADDING_SHARE)  # gradient buffer and scratch: trainable ones only


@pytest.mark.parametrize("name", FLAT)
def test_a_saved_adapter_holds_only_the_adapter(name):
    sizes = []
    for package in (reference, optimized):
        model = Adapted()
        opt = build(package, name, model)
        train(opt, model, 3)
        adapter = {k: v for k, v in model.state_dict().items() if not k.startswith("base.")}
        sizes.append(saved_bytes(adapter))
    trainable = sum(p.numel() * 4 for p in Adapted().parameters() if p.requires_grad)
    assert sizes[1] <= sizes[0] + PADDING_SHARE * trainable, sizes


# steps at which requires_grad flips: the base bias starts training, then lora_A freezes, then trains again
def flips(model):
    return {2: [(model.base.bias, True)], 5: [(model.lora_A, False)], 7: [(model.lora_A, True)]}


@pytest.mark.parametrize("name", FLAT)
def test_flipping_requires_grad_during_a_run_matches_the_reference(name):
    def run(partner):
        ref_model, opt_model = Adapted(), Adapted()
        ref, opt = build(reference, name, ref_model), build(partner, name, opt_model)
        train(ref, ref_model, 9, flips=flips(ref_model))
        train(opt, opt_model, 9, flips=flips(opt_model))
        pairs = zip(ref_model.parameters(), opt_model.parameters(), strict=True)
        return max(scaled_error(a.detach(), b.detach()) for a, b in pairs), ref, opt

    err, ref, opt = run(optimized)
    assert_free_running(err, FREE_RUNNING_FP32.bound, lambda: run(SELF)[0])
    ref_sd, opt_sd = ref.state_dict(), opt.state_dict()
    assert sorted(ref_sd["state"]) == sorted(opt_sd["state"])
    for pid, entry in ref_sd["state"].items():
        assert sorted(entry) == sorted(opt_sd["state"][pid]), pid
        assert entry.get("step") == opt_sd["state"][pid].get("step"), pid


@pytest.mark.parametrize("name", FLAT)
def test_a_checkpoint_with_a_frozen_tensors_state_resumes_it(name):
    """Saved while lora_A trained, loaded into a run where it is frozen: its state is kept (as the reference keeps
    it) and taken up when it trains again."""

    def resumed(package):
        model = Adapted()
        opt = build(package, name, model)
        train(opt, model, 3)
        saved = opt.state_dict()
        model.lora_A.requires_grad_(False)
        fresh = build(package, name, model)
        fresh.load_state_dict(saved)
        train(fresh, model, 5, start=3, flips={6: [(model.lora_A, True)]})
        return model, fresh

    def error(model):
        pairs = zip(ref_model.parameters(), model.parameters(), strict=True)
        return max(scaled_error(a.detach(), b.detach()) for a, b in pairs)

    (ref_model, ref), (opt_model, opt) = resumed(reference), resumed(optimized)
    assert_free_running(error(opt_model), FREE_RUNNING_FP32.bound, lambda: error(resumed(SELF)[0]))
    assert opt.state_dict()["state"][0]["step"] == ref.state_dict()["state"][0]["step"] == 5  # lora_A: 3 + 2


@PACKAGES
@pytest.mark.parametrize("name", CLASSES)
def test_frozen_and_unused_parameters_raise_no_warning(package, name):
    model = Adapted()
    unused = torch.nn.Parameter(torch.randn(8, 8))  # trainable, never in the loss
    opt = make_partner(package, name, [*model.parameters(), unused], lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        train(opt, model, 3)
