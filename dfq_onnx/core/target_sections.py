"""Section parsers of a target profile (core/target.py): [forms], per-op activation choices, op lists,
fixed output encodings and per-op candidate pairs. Each validates its table and names the file and
the key in its error."""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from dfq_onnx.core import candidates
from dfq_onnx.core.errors import TargetError

FLOAT_BITS = 32   # activation "bits" of a tensor left in float (no Q/DQ): W8A32 is weight-only quantization
SMOOTHING = ("off", "outliers")   # [activation] / [forms] smoothing: --smooth default (passes/smooth.py)
FORM_SETTINGS = {"weight_only_kernel": ("MatMulNBits", "DequantizeLinear"),
                 "gather_kernel": ("GatherBlockQuantized", "Gather"), "accuracy_level": (0, 1, 2, 3, 4),
                 # the default of --smooth for the dynamic int8 form's inputs (passes/smooth.py)
                 "smoothing": SMOOTHING}
FORM_OPS = ("MatMul", "Gather", "Attention", "EmbedLayerNormalization",   # these two: com.microsoft
            "LSTM")
RECURRENT_FORMS = ("W8A8-dyn", "W32A32")      # DynamicQuantizeLSTM: int8 W / R (backends/recurrent.py)
TABLE_OPS = ("Gather", "EmbedLayerNormalization")                        # no activation input


def parse_pairs(where: str, seq) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(w), int(a)) for w, a in seq)
    except (TypeError, ValueError):
        raise TargetError(f"{where}: expected a list of [weight_bits, act_bits] pairs") from None


def parse_forms(source: str, table: dict) -> dict:
    """[forms]: op -> list of candidate names (core/candidates.py), plus the kernel settings and the
    declared relative cost per MAC of each form (`cost`, 1.0 = float; allocation/form_cost.py)."""
    forms, settings = {}, {}
    for key, value in table.items():
        where = f"{source} [forms] {key}"
        if key == "cost":
            settings["cost"] = _form_cost(where, value)
        elif key in FORM_SETTINGS:
            if value not in FORM_SETTINGS[key]:
                legal = ", ".join(map(str, FORM_SETTINGS[key]))
                raise TargetError(f"{where}: '{value}' must be one of {legal}")
            settings[key] = value
        elif key in FORM_OPS:
            if not isinstance(value, list) or not value:
                raise TargetError(f"{where}: expected a list of candidate names like [\"W8A8-dyn\"]")
            try:
                cands = tuple(candidates.parse(v) for v in value)
            except ValueError as exc:
                raise TargetError(f"{where}: {exc}") from None
            if key in TABLE_OPS and any(candidates.form(c) == "dyn" for c in cands):
                raise TargetError(f"{where}: a {key} table has no activation input to quantize dynamically")
            if key == "LSTM" and any(candidates.name(c) not in RECURRENT_FORMS for c in cands):
                raise TargetError(f"{where}: an LSTM's forms are {' and '.join(RECURRENT_FORMS)} "
                                  "(DynamicQuantizeLSTM: 8-bit W / R, activations quantized per call)")
            tensor = [candidates.name(c) for c in cands if candidates.form(c) == "tensor"]
            if tensor and (key != "EmbedLayerNormalization" or tensor != ["W8A32-tensor"]):
                raise TargetError(f"{where}: '{tensor[0]}' is QEmbedLayerNormalization's form: "
                                  "EmbedLayerNormalization only, 8-bit")
            forms[key] = cands
        else:
            allowed = ", ".join([*FORM_OPS, *FORM_SETTINGS, "cost"])
            raise TargetError(f"{where}: unknown key (allowed: {allowed})")
    listed = {c for cands in forms.values() for c in cands}
    extra = [candidates.name(c) for c in settings.get("cost", {}) if c not in listed]
    if extra:
        raise TargetError(f"{source} [forms] cost: '{extra[0]}' is not a form any op lists")
    return {"forms": MappingProxyType(forms), "form_settings": MappingProxyType(settings)}


def _form_cost(where: str, value) -> Mapping[tuple, float]:
    if not isinstance(value, dict):
        raise TargetError(f"{where}: expected a table like {{ \"W8A8-dyn\" = 0.6 }}")
    out = {}
    for name, v in value.items():
        try:
            c = candidates.parse(name)
        except ValueError as exc:
            raise TargetError(f"{where}: {exc}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise TargetError(f"{where}: {name} = {v!r}: expected a positive number (1.0 = float)")
        out[c] = float(v)
    return MappingProxyType(out)


def parse_act_choices(source: str, ops: dict, act: dict, default: int) -> dict:
    """[activation] choices / element_cost / float_output_ops / cost_allowance: the activation-precision
    decision; smoothing: what the default (no --smooth / --no-smooth) does -- "off", or "outliers":
    SmoothQuant migration of the statically quantized MatMul inputs that are outlier groups
    (passes/smooth.py)."""
    where = f"{source} [activation]"
    choices = act.get("choices", [])
    if not isinstance(choices, list) or not all(isinstance(c, int) for c in choices):
        raise TargetError(f"{where} choices: expected a list of bit-widths like [8, 16, 32] (32 = float)")
    dtypes = {int(k) for k in act.get("dtypes", {8: "uint8"})}
    bad = [c for c in choices if c != FLOAT_BITS and c not in dtypes]
    if bad:
        raise TargetError(f"{where} choices: {bad[0]} has no type in [activation] dtypes (or use 32 = float)")
    if choices and default not in choices:
        raise TargetError(f"{where} choices: must contain default_act_bits {default}")
    cost = act.get("element_cost", {})
    if not isinstance(cost, dict):
        raise TargetError(f"{where} element_cost: expected a table like {{ 16 = 0.5 }}")
    try:
        cost = {int(k): float(v) for k, v in cost.items()}
    except ValueError:
        raise TargetError(f"{where} element_cost: keys must be bit-widths, values numbers") from None
    if any(k not in choices for k in cost):
        raise TargetError(f"{where} element_cost: {sorted(set(cost) - set(choices))[0]} is not in choices")
    outs = act.get("float_output_ops", [])
    if not isinstance(outs, list) or any(op not in ops for op in outs):
        raise TargetError(f"{where} float_output_ops: expected a list of op types listed in [ops]")
    allowance = act.get("cost_allowance", 0.0)
    if not isinstance(allowance, (int, float)) or allowance < 0:
        raise TargetError(f"{where} cost_allowance: expected a non-negative number (a share of the "
                          "all-default-bits plan's cost)")
    smoothing = act.get("smoothing", "off")
    if smoothing not in SMOOTHING:
        raise TargetError(f"{where} smoothing: '{smoothing}' must be one of {', '.join(SMOOTHING)}")
    return {"act_choices": tuple(sorted(set(choices))), "act_element_cost": MappingProxyType(cost),
            "float_output_ops": tuple(str(o) for o in outs), "act_cost_allowance": float(allowance),
            "smoothing": str(smoothing)}


def parse_op_list(source: str, ops: dict, names, key: str = "[placement] shared_encoding_ops"
                  ) -> tuple[str, ...]:
    where = f"{source} {key}"
    if not isinstance(names, list):
        raise TargetError(f"{where}: expected a list of op types like [\"Concat\"]")
    for op in names:
        if op not in ops:
            raise TargetError(f"{where}: '{op}' is not listed in [ops]")
    return tuple(str(op) for op in names)


def parse_fixed_outputs(source: str, ops: dict, table: dict) -> Mapping[str, tuple[float, float]]:
    out = {}
    for op, enc in table.items():
        where = f"{source} [fixed_outputs] {op}"
        if op not in ops:
            raise TargetError(f"{where}: '{op}' is not listed in [ops]")
        if not isinstance(enc, dict) or set(enc) != {"min", "span"}:
            raise TargetError(f"{where}: expected {{ min = <float>, span = <float> }} "
                              "(scale = span / 2^bits, zero point = -min / scale)")
        lo, span = float(enc["min"]), float(enc["span"])
        if not span > 0 or not (lo <= 0 <= lo + span):
            raise TargetError(f"{where}: range [{lo}, {lo + span}] must have span > 0 and contain 0")
        out[str(op)] = (lo, span)
    return MappingProxyType(out)


def parse_op_pairs(source: str, ops: dict, pairs, table: dict) -> Mapping[str, tuple[tuple[int, int], ...]]:
    out = {}
    for op, seq in table.items():
        where = f"{source} [candidates.ops] {op}"
        if op not in ops:
            raise TargetError(f"{where}: '{op}' is not listed in [ops]")
        own = parse_pairs(where, seq)
        extra = [p for p in own if p not in pairs]
        if extra:
            raise TargetError(f"{where}: W{extra[0][0]}A{extra[0][1]} is not in [candidates] pairs")
        out[str(op)] = own
    return MappingProxyType(out)
