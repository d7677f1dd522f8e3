"""Fast Automagic_CameAMP8bit: the fused Automagic_CameAMP step with blockwise 8-bit states.

Same kwargs, compat modes and state_dict format as reference.Automagic_CameAMP8bit (spec O2). The
pipeline differences from O1 (V2 scaling, upstream's never-stored residual [I-08] and T8b mask
[I-10]) are switches of the shared passes (automagic_step.Flags); the states m, v, r, the LR mask,
upstream's element-wise s and ALLoRA's ρ are `codec.QState`s, de-quantised and re-quantised inside the
compiled passes, so no fp32 copy of a state is made during the step; the warm-up polarity takes one
bit per element (`bitpack`). 0-d parameters keep fp32 states, as the reference does (it quantises only
tensors with a dimension).

What differs from the reference, beyond round-off: upstream mode keeps no fp32 copy of v [I-11b] (it
is never read, and not saved), so its state is 4 bytes/param smaller.

Under FSDP2 a tensor steps as this rank's rows where its blocks of 4096 elements each lie within one rank's rows
and fall to the ranks as torch.chunk splits their count (`Blockwise8bitStates._shard_fits`); others are stepped
whole. `optimizer.state[p]` then holds this rank's codes (`<key>_q`, p's local rows) and the scales of its blocks
(`<key>_q_scale`), and `state_dict()` gives both as DTensors sharded on dim 0: the codes like θ, the scales over the
whole tensor's block count, so the saved layout is the one-process layout on any world size. ALLoRA's ρ codes
(`row_scaling_q`, [rows, 1]) are held per row; a 4096-row block of ρ that two ranks share has one scale, reduced
across them (`ShardSums.block_max`), which each holds, and the DTensor gives each block's scale from the rank
torch.chunk assigns it.
"""

from __future__ import annotations

from reference.state_8bit import Blockwise8bitStates

from .automagic_cameamp import Automagic_CameAMP


class Automagic_CameAMP8bit(Blockwise8bitStates, Automagic_CameAMP):
    """Fused Automagic_CameAMP8bit. See reference.Automagic_CameAMP8bit for the algorithm."""

    quantized_states = True

    @property
    def _variant(self) -> dict:
        upstream = not self.fixed
        return {"v2": True, "fresh_residual": upstream, "store_post_mask": upstream}
