"""Parameters keep their memory format and strides (issue 29): a channels_last convolution weight stays
channels_last, a transposed matrix stays transposed, and both step as the reference steps them."""

import pytest
import torch

import optimized
import reference
from equivalence_tests.harness import SELF, assert_free_running, make_partner, scaled_error
from equivalence_tests.tolerances import FREE_RUNNING_FP32
from reference.registry import OPTIMIZERS

CLASSES = sorted({cls.__name__ for cls in OPTIMIZERS.values()})


def params(seed=0):
    """A channels_last conv weight, a channels_last_3d one, a transposed matrix, a plain one and a bias."""
    gen = torch.Generator().manual_seed(seed)
    conv = torch.randn(8, 3, 3, 3, generator=gen).to(memory_format=torch.channels_last)
    conv3d = torch.randn(4, 2, 2, 3, 3, generator=gen).to(memory_format=torch.channels_last_3d)
    transposed = torch.randn(16, 6, generator=gen).t()
    plain, bias = torch.randn(6, 16, generator=gen), torch.randn(8, generator=gen)
    return [torch.nn.Parameter(t) for t in (conv, conv3d, transposed, plain, bias)]


def run(partner, name, steps=8):
    ps = params()
    kwargs = {} if "Hina" in name else {"warmup_steps": 4}
    opt = make_partner(partner, name, ps, lr=1e-2, **kwargs)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        for p in ps:
            p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen))  # p's strides, as autograd's
        opt.step()
    return ps, opt


@pytest.mark.parametrize("package", [reference, optimized], ids=["reference", "optimized"])
@pytest.mark.parametrize("name", CLASSES)
def test_strides_are_kept(package, name):
    before = [p.stride() for p in params()]
    ps, opt = run(package, name)
    assert [p.stride() for p in ps] == before
    assert ps[0].is_contiguous(memory_format=torch.channels_last)
    assert ps[1].is_contiguous(memory_format=torch.channels_last_3d)
    state = opt.state_dict()  # and the state saves and loads with them
    opt.load_state_dict(state)
    assert [p.stride() for p in ps] == before


@pytest.mark.parametrize("name", CLASSES)
def test_strided_parameters_step_as_in_the_reference(name):
    def error(partner):
        ref, _ = run(reference, name)
        fast, _ = run(partner, name)
        return max(scaled_error(a.detach(), b.detach()) for a, b in zip(ref, fast, strict=True))

    assert_free_running(error(optimized), FREE_RUNNING_FP32.bound, lambda: error(SELF))


FLAT = ["Automagic_CameAMP", "Automagic_CameAMP8bit", "Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit",
        "HinaAdamWOptimizer"]  # fmt: skip


@pytest.mark.parametrize("name", FLAT)
def test_casting_the_model_after_the_first_step_names_the_fix(name):
    """The flat-buffer classes re-point parameters into their buffers at the first step: a model cast afterwards
    is refused before anything changes, with the fix in the message (README, 'Parameters and buffers')."""
    model = torch.nn.Linear(6, 4)
    opt = getattr(optimized, name)(model.parameters(), lr=1e-2)
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[model.weight].items()}
    model.double()
    model(torch.randn(3, 6, dtype=torch.float64)).sum().backward()
    with pytest.raises(ValueError, match="build the optimizer after moving or casting the model"):
        opt.step()
    after = opt.state[model.weight]
    assert all(torch.equal(v, after[k]) if torch.is_tensor(v) else v == after[k] for k, v in before.items())
