"""LoRA A/B and LoKr factors found by parameter name, and their LR factors (spec T26, HinaAdamW).

No single paper. The LR factor of a paired LoRA-A follows the idea of ALLoRA (Huang & Balestriero,
arXiv:2410.09692): scale by 1/(1 + r), r the mean row norm of the product BA; an unpaired LoRA-B gets
`alora_ratio`, as in LoRA+ (Hayou, Ghosh & Yu, "LoRA+: Efficient Low Rank Adaptation of Large
Models", ICML 2024, arXiv:2402.12354: η_B = λ·η_A). Upstream docs cite "ALoRA", a rank-allocation paper
[I-45].

Two rule sets:
  * `upstream` (HinaAdamW @ 9d42f8b): substring classification of the lower-cased name, pairing within
    one param group by stripping `lora_down`/`lora_A`/`.weight` (case-sensitive), a paired B gets no
    factor and an unpaired B gets ×alora_ratio [I-44].
  * `fixed`: the name's dot-separated tokens decide (`lora_down`/`lora_A`, `lora_up`/`lora_B`,
    `lokr_w1`/`lokr_w2`, case-insensitive), pairing runs across groups, and every B gets ×alora_ratio
    (LoRA+ semantics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LOKR_SCALE = 0.3  # LoKr: 1/(1 + 0.3·‖w1‖‖w2‖)
LOKR_W2_RATIO = 0.6  # LoKr w2: × alora_ratio·0.6

TOKENS = {  # fixed rules: a token of the dotted name → kind
    "lokr_w1": "lokr_w1", "lokr_w2": "lokr_w2",
    "lora_down": "lora_a", "lora_a": "lora_a", "lora_up": "lora_b", "lora_b": "lora_b",
    "w_norm": "w_norm", "b_norm": "b_norm",
}  # fmt: skip


def classify(name: str, fixed: bool = False) -> str:
    """The kind of a parameter: lora_a, lora_b, lokr_w1, lokr_w2, lokr_generic, w_norm, b_norm or regular."""
    lower = name.lower()
    if fixed:
        tokens = lower.split(".")
        for token in tokens:
            if token in TOKENS:
                return TOKENS[token]
        return "lokr_generic" if any(t.startswith("lokr") for t in tokens) else "regular"
    # upstream: the first substring that matches wins
    for needles, kind in (
        (("lokr_w1",), "lokr_w1"), (("lokr_w2",), "lokr_w2"), (("lokr",), "lokr_generic"),
        (("lora_down", "lora_a"), "lora_a"), (("lora_up", "lora_b"), "lora_b"),
        (("w_norm",), "w_norm"), (("b_norm",), "b_norm"),
    ):  # fmt: skip
        if any(n in lower for n in needles):
            return kind
    return "regular"


def _lora_base(name: str, kind: str, fixed: bool) -> str:
    if fixed:
        drop = ("lora_down", "lora_a") if kind == "lora_a" else ("lora_up", "lora_b")
        return ".".join(t for t in name.split(".") if t.lower() not in (*drop, "weight"))
    if kind == "lora_a":
        return name.replace("lora_down", "").replace("lora_A", "").replace(".weight", "")
    return name.replace("lora_up", "").replace("lora_B", "").replace(".weight", "")


def _strip(name: str, suffixes) -> str:
    """Upstream's base name of a LoKr / norm factor: the first suffix found removed, '.' stripped."""
    for suffix in suffixes:
        if suffix in name:
            return name.replace(suffix, "").strip(".")
    return name.strip(".")


def _shapes_compatible(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dim() < 2 or b.dim() < 2:
        return False
    return b.shape[1] == a.shape[0] or b.shape[0] == a.shape[1] or b.shape[1] == a.shape[1] or b.shape[0] == a.shape[0]


@dataclass
class LoraLayout:
    kinds: dict = field(default_factory=dict)  # param → kind (keyed by the tensor, so a deepcopy remaps it)
    names: dict = field(default_factory=dict)  # param → name
    lora_pairs: list = field(default_factory=list)  # [(A, B)]
    lokr_groups: dict = field(default_factory=dict)  # base → {"w1": p | None, "w2": p | None}
    counts: dict = field(default_factory=dict)
    norm_pairs: int = 0  # w_norm/b_norm pairs: counted for monitoring, never used in the step


def build_layout(named_groups, fixed: bool) -> LoraLayout:
    """named_groups: one list of (name or None, param) per param group. Pairing is within each group
    upstream, across all of them when fixed."""
    layout = LoraLayout()
    scopes = [[pair for group in named_groups for pair in group]] if fixed else named_groups
    norms = {}
    for scope in scopes:
        a_params, b_params = [], []
        for name, p in scope:
            if name is None:
                continue  # unnamed: not classified (treated as regular)
            kind = classify(name, fixed)
            layout.kinds[p], layout.names[p] = kind, name
            a_params += [(name, p)] if kind == "lora_a" else []
            b_params += [(name, p)] if kind == "lora_b" else []
            if kind in ("lokr_w1", "lokr_w2"):
                layout.lokr_groups.setdefault(_strip(name, (".lokr_w1", ".lokr_w2")), {"w1": None, "w2": None})[
                    kind[-2:]
                ] = p
            if kind in ("w_norm", "b_norm"):
                norms.setdefault(_strip(name, (".w_norm", ".b_norm")), set()).add(kind)
        for a_name, a in a_params:
            base = _lora_base(a_name, "lora_a", fixed)
            for b_name, b in b_params:
                if _lora_base(b_name, "lora_b", fixed) == base:
                    if _shapes_compatible(a, b):
                        layout.lora_pairs.append((a, b))
                    break  # upstream stops at the first name match, compatible or not
    layout.norm_pairs = sum(len(kinds) == 2 for kinds in norms.values())
    kinds = list(layout.kinds.values())
    layout.counts = {k: kinds.count(k) for k in ("lora_a", "lora_b", "lokr_w1", "lokr_w2", "w_norm", "b_norm")}
    return layout


def _product(a: torch.Tensor, b: torch.Tensor):
    """BA in whichever orientation the shapes allow (upstream's order of tests); None if none fits."""
    a2, b2 = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if b2.shape[1] == a2.shape[0]:
        return b2 @ a2
    if b2.shape[0] == a2.shape[1]:
        return a2 @ b2
    if b2.shape[1] == a2.shape[1]:
        return b2 @ a2.T
    if b2.shape[0] == a2.shape[0]:
        return b2.T @ a2
    return None


def lora_a_scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """Paired LoRA-A: 1/(1 + r), r = mean row norm of BA (1 if r = 0)."""
    product = _product(a, b)
    if product is None:  # fall back to the mean factor norm
        r = (a.norm() + b.norm()) / 2
    else:
        r = product.norm(dim=1).mean() if product.shape[0] > 0 else product.norm()
    # factor = 1/(1 + r), computed in the parameter dtype as upstream does
    return float(1.0 / (1.0 + r)) if float(r) > 0 else 1.0


def lokr_scale(group: dict) -> float:
    """LoKr: 1/(1 + 0.3·‖w1‖·‖w2‖), 1 unless both factors exist."""
    if group["w1"] is None or group["w2"] is None:
        return 1.0
    return 1.0 / (1.0 + float(group["w1"].norm()) * float(group["w2"].norm()) * LOKR_SCALE)
