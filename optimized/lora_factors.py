"""HinaAdamW's LoRA/LoKr step-size factors (spec T26; readable twin: reference.hina_adamw._lora_factor),
computed on the device for a whole bucket at once, with no host sync.

A factor is a constant (×alora_ratio for a LoRA-B or LoKr w2, 1 elsewhere) times, for a paired LoRA-A,
1/(1 + r) with r the mean row norm of the product BA, and for a complete LoKr pair 1/(1 + 0.3‖w1‖‖w2‖).
The row norms of BA come from the Gram matrix of the inner factor, ‖(XY)_i‖² = X_i (YYᵀ) X_iᵀ, so the
d×k product is never formed (O((d + k)·rank²) instead of O(d·k·rank)); pairs of the same shapes are
stacked and done in one batched product.

The reference steps parameters one at a time, so a factor sees the partner's *new* value when the partner
comes earlier in the step order. `dependencies` names those partners; the optimizer steps the tensors that
have one in a later bucket ("wave"), after the partner's bucket, and computes the factors of a bucket
just before stepping it.
"""

from __future__ import annotations

import math

import torch

from reference import lora_names


def _orientation(a_shape, b_shape):
    """Which product `reference.lora_names._product` forms: (X is B, Y is A, transpose X, transpose Y) with
    the product X·Y, or None where no orientation fits."""
    a2, b2 = (a_shape[0], math.prod(a_shape[1:])), (b_shape[0], math.prod(b_shape[1:]))
    if b2[1] == a2[0]:
        return True, False, False  # B·A
    if b2[0] == a2[1]:
        return False, False, False  # A·B
    if b2[1] == a2[1]:
        return True, False, True  # B·Aᵀ
    if b2[0] == a2[0]:
        return True, True, False  # Bᵀ·A
    return None


def _mean_row_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """r of each stacked pair ([k, ...] A's and B's of one shape class), float32 [k]."""
    k = a.shape[0]
    a2, b2 = a.reshape(k, a.shape[1], -1).float(), b.reshape(k, b.shape[1], -1).float()
    orient = _orientation(a.shape[1:], b.shape[1:])
    if orient is None:  # the reference falls back to the mean factor norm
        return (a2.flatten(1).norm(dim=1) + b2.flatten(1).norm(dim=1)) / 2
    x_is_b, x_t, y_t = orient
    x, y = (b2, a2) if x_is_b else (a2, b2)
    x = x.transpose(1, 2) if x_t else x
    y = y.transpose(1, 2) if y_t else y
    # ‖(XY)_i‖² = X_i (Y Yᵀ) X_iᵀ
    gram = y @ y.transpose(1, 2)
    rows_sq = ((x @ gram) * x).sum(dim=2).clamp(min=0)
    if x.shape[1] == 0:
        return rows_sq.sum(dim=1).sqrt()
    return rows_sq.sqrt().mean(dim=1)


class BucketFactors:
    """The factors of one bucket's tensors ([T] float64 on the device, in the bucket's order)."""

    def __init__(self, params, layout: lora_names.LoraLayout, alora_ratio: float, fixed: bool, device):
        const = [1.0] * len(params)
        pairs: dict = {}  # shape class → [(position, A, B)]
        lokr: list = []  # (position, w1, w2)
        for i, p in enumerate(params):
            kind = layout.kinds.get(p, "regular")
            if kind.startswith("lokr_"):
                group = next((g for g in layout.lokr_groups.values() if any(q is p for q in g.values())), None)
                if group is not None and group["w1"] is not None and group["w2"] is not None:
                    lokr.append((i, group["w1"], group["w2"]))
                if kind == "lokr_w2":
                    const[i] = alora_ratio * lora_names.LOKR_W2_RATIO
                continue
            pair = next(((a, b) for a, b in layout.lora_pairs if a is p), None)
            if pair is not None:
                a, b = pair
                key = (tuple(a.shape), tuple(b.shape), a.dtype, b.dtype)
                pairs.setdefault(key, []).append((i, a, b))
            elif kind == "lora_b":
                paired = any(b is p for _, b in layout.lora_pairs)
                const[i] = alora_ratio if (fixed or not paired) else 1.0
        self.const = torch.tensor(const, dtype=torch.float64, device=device)
        self.pairs = [
            (torch.tensor([i for i, _, _ in members], device=device), [a for _, a, _ in members],
             [b for _, _, b in members])
            for members in pairs.values()
        ]  # fmt: skip
        self.lokr = lokr
        self.dynamic = bool(self.pairs or self.lokr)

    def compute(self) -> torch.Tensor:
        """The factors from the parameters' current values."""
        if not self.dynamic:
            return self.const
        out = self.const.clone()
        for positions, a_list, b_list in self.pairs:
            dtype = a_list[0].dtype
            r = _mean_row_norm(torch.stack([a.detach() for a in a_list]), torch.stack([b.detach() for b in b_list]))
            # factor = 1/(1 + r) in the parameter dtype, 1 where r = 0 (lora_names.lora_a_scale)
            r = r.to(dtype)
            factor = torch.where(r > 0, 1.0 / (1.0 + r), torch.ones_like(r))
            out[positions] = out[positions] * factor.double()
        for i, w1, w2 in self.lokr:
            # 1/(1 + 0.3·‖w1‖·‖w2‖) in float64, from the norms in the parameter dtype (lora_names.lokr_scale)
            n1, n2 = w1.detach().norm().double(), w2.detach().norm().double()
            out[i] = out[i] * (1.0 / (1.0 + n1 * n2 * lora_names.LOKR_SCALE))
        return out


def dependencies(layout: lora_names.LoraLayout) -> dict:
    """p → the parameters whose value p's factor reads (besides p's own)."""
    deps: dict = {}
    for a, b in layout.lora_pairs:
        deps.setdefault(a, [b])  # the first pair of an A is the one its factor uses
    for group in layout.lokr_groups.values():
        w1, w2 = group["w1"], group["w2"]
        if w1 is not None and w2 is not None:
            deps.setdefault(w1, []).append(w2)
            deps.setdefault(w2, []).append(w1)
    return deps
