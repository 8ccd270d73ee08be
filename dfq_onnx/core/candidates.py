"""Candidates: how one quantizer group is encoded -- a tuple the allocator, the probe and Emit share.

    (w, a)          static Q/DQ: w-bit per-channel weights, a-bit activations with calibrated ranges
                    (the target's [candidates] pairs)
    (w, a, form)    an emit form of the target's [forms] (built by dfq_onnx/backends/forms.py):
      "dyn"         a = 8: activations quantized at run time, per tensor (DynamicQuantizeLinear),
                    w-bit per-channel weights (8: symmetric int8; fewer: asymmetric, clipped, in 4-bit
                    storage widened at load) on the int8 kernel (ORT: DynamicQuantizeMatMul)
      "b<B>"        a = 32: weight-only, w-bit weights in blocks of B along the reduction axis (a
                    Gather table: along its rows), one float scale and one w-bit zero point per block
                    (asymmetric); activations stay float (ORT: MatMulNBits, GatherBlockQuantized)
      "row"         a = 32: weight-only, one block per row of the reduction axis (B = its length)
      "tensor"      a = 32: weight-only, one asymmetric uint8 scale and zero point per tensor (ORT's
                    QEmbedLayerNormalization: the fused embedding's tables, gamma and beta)
    (32, 32)        float: the group stays unquantized

Names: W8A8, W8A8-dyn, W4A32-b32, W8A32-row, W8A32-tensor, W32A32. In a sensitivity configuration a
static-Q/DQ group is keyed by its weight bits (an int, as before forms existed) and a form group by its
candidate.

Storage per weight (the size budget): w bits (5..7-bit dynamic grids: 8, their int8 storage), plus
(32 + w) / B bits for the scale and zero point of a block of B weights; static and dynamic candidates
count no scales (per-channel scales are negligible).
"""

from __future__ import annotations

import re

FLOAT_BITS = 32
FLOAT: tuple[int, int] = (FLOAT_BITS, FLOAT_BITS)
FORMS = ("dyn", "row", "tensor")          # plus "b<B>"
_NAME = re.compile(r"^W(\d+)A(\d+)(?:-(dyn|row|tensor|b\d+))?$")

Cand = tuple


def form(c: Cand) -> str:
    """'qdq' for a static pair, 'float' for (32, 32), else the candidate's form."""
    if len(c) > 2:
        return c[2]
    return "float" if tuple(c) == FLOAT else "qdq"


def is_form(c: Cand) -> bool:
    return len(c) > 2 or tuple(c) == FLOAT


def block(c: Cand, length: int) -> int:
    """Block length of a weight-only candidate along an axis of `length` (0 when not blocked)."""
    f = form(c)
    if f == "row":
        return length
    return int(f[1:]) if f.startswith("b") else 0


def name(c: Cand) -> str:
    return f"W{c[0]}A{c[1]}" + (f"-{c[2]}" if len(c) > 2 else "")


def parse(text: str) -> Cand:
    m = _NAME.match(str(text).strip())
    if m is None:
        raise ValueError(f"'{text}' is not a candidate name like W8A8, W8A8-dyn, W4A32-b32, W8A32-row")
    w, a, f = int(m.group(1)), int(m.group(2)), m.group(3)
    if f == "dyn" and a != 8:
        raise ValueError(f"'{text}': dynamic activations are 8-bit (W<w>A8-dyn)")
    if f is not None and f != "dyn" and a != FLOAT_BITS:
        raise ValueError(f"'{text}': weight-only forms keep float activations (W<w>A32-{f})")
    if f is not None and f.startswith("b") and (int(f[1:]) < 2 or int(f[1:]) & (int(f[1:]) - 1)):
        raise ValueError(f"'{text}': the block size must be a power of two >= 2")
    return (w, a) if f is None else (w, a, f)


def key(c: Cand):
    """The value a sensitivity configuration holds for a group at candidate `c` (module docstring)."""
    return c if is_form(c) else c[0]


def storage_bits(c: Cand, length: int) -> float:
    """Stored bits per weight, scales and zero points included, for a reduction axis of `length`."""
    b = block(c, length)
    stored = 8 if form(c) == "dyn" and 4 < c[0] < 8 else c[0]
    return float(stored) + ((FLOAT_BITS + c[0]) / b if b else 0.0)
