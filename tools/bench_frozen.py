"""`make bench`'s memory section for issue 29's example: a frozen Linear(512, 512) with a rank-4 LoRA beside it,
the parameters passed together as `model.parameters()` gives them under PEFT, 8 steps. Per flat-buffer class:
bytes of optimizer state, of the fast class's persistent workspace, and of `torch.save` of the adapter's
state_dict, reference beside optimized."""

from __future__ import annotations

import io

import torch

CLASSES = ("Automagic_CameAMP", "Automagic_CameAMP8bit", "Automagic_CameAMP_COptim", "Automagic_CameAMP_COptim8bit",
           "HinaAdamWOptimizer")  # fmt: skip
STEPS = 8
HEADER = ["| class | state bytes (reference) | state bytes (optimized) | workspace bytes (optimized) "
          "| saved adapter bytes (reference) | saved adapter bytes (optimized) |", "| --- " * 6 + "|"]  # fmt: skip


def adapted_linear():
    torch.manual_seed(0)
    base = torch.nn.Linear(512, 512).requires_grad_(False)
    lora = torch.nn.ParameterDict({"A": torch.randn(4, 512) * 0.05, "B": torch.randn(512, 4) * 0.05})
    return base, lora


def trained(package, name):
    """(optimizer, adapter) after STEPS steps on a fixed stream of inputs."""
    base, lora = adapted_linear()
    kwargs = {} if "Hina" in name else {"warmup_steps": 4}
    opt = getattr(package, name)([*base.parameters(), *lora.parameters()], lr=1e-3, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(16, 512, generator=gen)
        loss = (base(x) + x @ lora["A"].T @ lora["B"].T).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        if hasattr(opt, "observe_loss"):  # C-Optim's context takes the loss
            opt.observe_loss(loss.detach())
        opt.step()
    return opt, lora


def saved_bytes(module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return len(buffer.getvalue())


def section() -> list:
    import optimized
    import reference
    from tools.bench import state_bytes  # (tools.bench imports this module)

    lines = ["## Memory: a frozen Linear(512, 512) and a 512×4 LoRA (issue 29), after 8 steps", "", *HEADER]
    for name in CLASSES:
        ref, ref_lora = trained(reference, name)
        fast, fast_lora = trained(optimized, name)
        row = (state_bytes(ref), state_bytes(fast), fast.workspace_bytes(), saved_bytes(ref_lora),
               saved_bytes(fast_lora))  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(f"{n:,}" for n in row) + " |")
        print(lines[-1], flush=True)
    trainable = sum(p.numel() for p in adapted_linear()[1].parameters())
    return [*lines, "", f"Trainable parameters: {trainable:,} (frozen: {512 * 512 + 512:,}).", ""]
