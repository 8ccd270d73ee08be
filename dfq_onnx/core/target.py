"""Backend target profiles: declarative TOML files loaded into frozen dataclasses.

The loader rejects unknown keys, naming the file and the key; backend knowledge lives in the TOML,
never in if/elif code.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from dfq_onnx.core.errors import TargetError
from dfq_onnx.core.target_sections import FLOAT_BITS as FLOAT_BITS
from dfq_onnx.core.target_sections import (
    parse_act_choices,
    parse_fixed_outputs,
    parse_forms,
    parse_op_list,
    parse_op_pairs,
    parse_pairs,
)

ROLES = ("weighted", "elementwise", "passthrough", "activation")
DTYPE_NAMES = ("int4", "uint4", "int8", "uint8", "int16", "uint16")
_TOP = {"name", "description", "min_opset", "default_weight_bits", "default_act_bits",
        "quantize_graph_outputs", "activation", "weight", "bias", "opset", "candidates", "ops",
        "placement", "fixed_outputs", "latency", "forms"}
_SECTIONS = {
    "activation": {"symmetric", "dtypes", "fuse_relu", "fuse_relu_bits", "choices", "element_cost",
                   "float_output_ops", "cost_allowance", "smoothing"},
    "weight": {"symmetric", "per_channel", "narrow_range", "dtypes", "blocked"},
    "bias": {"mode", "separate"},
    "candidates": {"pairs", "integer_kernels", "cost", "ops"},
    "placement": {"quantize_outputs", "unread_outputs", "add_fuses_weighted_input", "bias_add_fuses",
                  "activation_products", "activation_functions", "quantized_reads_only",
                  "constant_affine", "shared_encoding_ops", "residual_sum"},
    "latency": {"runtime"},
}
RUNTIMES = ("onnxruntime", "openvino", "none")


@dataclass(frozen=True)
class TargetProfile:
    """One backend's quantization conventions."""

    name: str
    description: str
    source: str
    min_opset: int
    default_weight_bits: int
    default_act_bits: int
    quantize_graph_outputs: bool
    act_symmetric: bool
    act_dtypes: Mapping[int, str]
    fuse_relu: bool
    weight_symmetric: bool
    per_channel: bool
    narrow_range: bool
    weight_dtypes: Mapping[int, str]
    bias_mode: str
    dtype_opset: Mapping[str, int]
    pairs: tuple[tuple[int, int], ...]
    integer_kernels: tuple[tuple[int, int], ...]
    cost: Mapping[tuple[int, int], float]
    ops: Mapping[str, str]
    blocked_weights: bool = False                  # blocked (block_size) weight DQ allowed
    quantize_outputs: bool = True                  # Q/DQ on quantized ops' outputs, not only their inputs
    unread_outputs: bool = True                    # also on outputs no quantized op reads (graph outputs too)
    add_fuses_weighted_input: bool = False         # Add input from a weighted op stays float (fused)
    bias_add_fuses: bool = False                   # MatMul -> Add(constant bias): one kernel, no Q/DQ between
    activation_products: bool = True               # activation x activation MatMuls (attention) quantized
    activation_functions: bool = True              # ops inside a multi-op activation function quantized
    quantized_reads_only: bool = False             # only quantized readers read a Q/DQ (others: float)
    constant_affine: bool = True                   # x * c, x + c (c constant) quantized as elementwise ops
    shared_encoding_ops: tuple[str, ...] = ()      # ops whose inputs and output share one encoding
    residual_sum: bool = False                     # a float Add read only by a LayerNorm written as Sum
    fixed_outputs: Mapping[str, tuple[float, float]] = field(default_factory=dict)   # op -> (min, span)
    op_pairs: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    runtime: str = "none"                          # runtime that profile-target measures with
    forms: Mapping[str, tuple[tuple, ...]] = field(default_factory=dict)   # op -> form candidates
    form_settings: Mapping[str, object] = field(default_factory=dict)      # [forms] kernels, accuracy
    act_choices: tuple[int, ...] = ()              # per-activation-group precisions (32 = float), () = none
    act_element_cost: Mapping[int, float] = field(default_factory=dict)   # extra cost per element at bits
    float_output_ops: tuple[str, ...] = ()         # weighted ops keeping an integer kernel, float output
    act_cost_allowance: float = 0.0                # default plan: extra activation cost / all-base cost
    smoothing: str = "off"                         # --smooth default: "off" / "outliers" (passes/smooth.py)
    bias_separate: tuple[str, ...] = ()            # ops whose float bias is written as an Add after them
    fuse_relu_bits: tuple[int, ...] = ()           # activation bits a Relu/Clip is absorbed at; () = any

    def absorbs_relu_at(self, bits: int) -> bool:
        """Whether a Relu/Clip absorbed into an output encoding of `bits` may be left out of the graph."""
        return self.fuse_relu and (not self.fuse_relu_bits or bits in self.fuse_relu_bits)

    def forms_for(self, op: str) -> tuple[tuple, ...]:
        """The emit-form candidates of `op` (core/candidates.py); () when it is statically quantized."""
        return self.forms.get(op, ())

    def uniform_form(self, op: str, w_bits: int, a_bits: int | None = None, fits=None) -> tuple | None:
        """What a uniform W<w>A<a> plan uses for a form op: its first candidate with those weight and
        activation bits, else with those weight bits, else the first with more weight bits (None when the
        op has no forms or none fits); with `fits` (candidate -> bool: e.g. its blocks divide the layer's
        weight), among the candidates it accepts."""
        cands = [c for c in self.forms_for(op) if fits is None or fits(c)]
        both = [c for c in cands if c[0] == w_bits and c[1] == a_bits]
        exact = [c for c in cands if c[0] == w_bits]
        wider = sorted((c for c in cands if c[0] > w_bits), key=lambda c: c[0])
        return (both or exact or wider or [None])[0]

    def role(self, op_type: str) -> str | None:
        return self.ops.get(op_type)

    def act_dtype(self, bits: int) -> str:
        if bits not in self.act_dtypes:
            raise TargetError(f"target '{self.name}' has no {bits}-bit activation type "
                              f"(legal: {sorted(self.act_dtypes)})")
        return self.act_dtypes[bits]

    def weight_dtype(self, bits: int) -> str:
        if bits not in self.weight_dtypes:
            raise TargetError(f"target '{self.name}' has no {bits}-bit weight type "
                              f"(legal: {sorted(self.weight_dtypes)})")
        return self.weight_dtypes[bits]

    def opset_for(self, dtypes) -> int:
        return max([self.min_opset] + [self.dtype_opset.get(d, 0) for d in dtypes])

    def pairs_for(self, ops) -> tuple[tuple[int, int], ...]:
        """Pairs legal for every op in `ops` (the profile's pairs, narrowed by [candidates.ops])."""
        legal = set(self.pairs)
        for op in ops:
            legal &= set(self.op_pairs.get(op, self.pairs))
        return tuple(p for p in self.pairs if p in legal)

    def fixed_encoding(self, op: str, bits: int) -> tuple[float, int] | None:
        """(scale, zero point) an op's output must use: scale = span / 2^bits, zero point = -min / scale."""
        if op not in self.fixed_outputs:
            return None
        lo, span = self.fixed_outputs[op]
        scale = span / float(1 << bits)
        return scale, int(round(-lo / scale))

    def check_pair(self, w_bits: int, a_bits: int) -> None:
        if (w_bits, a_bits) not in self.pairs:
            legal = ", ".join(f"W{w}A{a}" for w, a in self.pairs)
            raise TargetError(f"W{w_bits}A{a_bits} is not legal on target '{self.name}' (legal: {legal})")


def _check_keys(where: str, table: dict, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TargetError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


def _bits_map(where: str, table) -> Mapping[int, str]:
    if not isinstance(table, dict):
        raise TargetError(f"{where}: expected a table like {{ 8 = \"int8\" }}")
    try:
        out = {int(k): str(v) for k, v in table.items()}
    except ValueError:
        raise TargetError(f"{where}: keys must be bit-widths (integers), got {sorted(table)}") from None
    for bits, name in out.items():
        if name not in DTYPE_NAMES:
            raise TargetError(f"{where}: {bits} = '{name}' is not a known type ({', '.join(DTYPE_NAMES)})")
    return MappingProxyType(out)


_TYPES = {"name": str, "description": str, "min_opset": int, "default_weight_bits": int,
          "default_act_bits": int, "quantize_graph_outputs": bool, "activation": dict, "weight": dict,
          "bias": dict, "opset": dict, "candidates": dict, "ops": dict, "placement": dict,
          "fixed_outputs": dict, "latency": dict, "forms": dict}


def parse_profile(data: dict, source: str) -> TargetProfile:
    """Validate a parsed TOML document and build the profile (errors name `source` and the key)."""
    _check_keys(source, data, _TOP)
    for key, typ in _TYPES.items():
        if key in data and not isinstance(data[key], typ):
            raise TargetError(f"{source}: key '{key}' must be a {typ.__name__} "
                              f"(got {type(data[key]).__name__} {data[key]!r})")
    try:
        return _build(data, source)
    except (TypeError, ValueError, AttributeError) as exc:
        raise TargetError(f"{source}: invalid value ({exc})") from None


def _build(data: dict, source: str) -> TargetProfile:
    for section, allowed in _SECTIONS.items():
        _check_keys(f"{source} [{section}]", data.get(section, {}), allowed)
    for key in ("name", "min_opset", "activation", "weight", "candidates", "ops"):
        if key not in data:
            raise TargetError(f"{source}: missing required key '{key}'")
    act, wt, cand = data["activation"], data["weight"], data["candidates"]
    ops = {str(k): str(v) for k, v in data["ops"].items()}
    for op, role in ops.items():
        if role not in ROLES:
            raise TargetError(f"{source} [ops] {op}: unknown role '{role}' (allowed: {', '.join(ROLES)})")
    cost = {}
    for key, value in cand.get("cost", {}).items():
        try:
            w, a = (int(x) for x in key.split("x"))
        except ValueError:
            raise TargetError(f"{source} [candidates.cost]: key '{key}' must look like '8x8'") from None
        cost[(w, a)] = float(value)
    bias_mode = data.get("bias", {}).get("mode", "float")
    if bias_mode not in ("float", "int32"):
        raise TargetError(f"{source} [bias] mode: '{bias_mode}' must be 'float' or 'int32'")
    pairs = parse_pairs(f"{source} [candidates] pairs", cand.get("pairs", [[8, 8]]))
    place = data.get("placement", {})
    runtime = str(data.get("latency", {}).get("runtime", "none"))
    if runtime not in RUNTIMES:
        raise TargetError(f"{source} [latency] runtime: '{runtime}' must be one of {', '.join(RUNTIMES)}")
    return TargetProfile(
        name=str(data["name"]), description=str(data.get("description", "")), source=source,
        min_opset=int(data["min_opset"]),
        default_weight_bits=int(data.get("default_weight_bits", 8)),
        default_act_bits=int(data.get("default_act_bits", 8)),
        quantize_graph_outputs=bool(data.get("quantize_graph_outputs", True)),
        act_symmetric=bool(act.get("symmetric", False)),
        act_dtypes=_bits_map(f"{source} [activation] dtypes", act.get("dtypes", {8: "uint8"})),
        fuse_relu=bool(act.get("fuse_relu", False)),
        fuse_relu_bits=tuple(int(b) for b in act.get("fuse_relu_bits", [])),
        weight_symmetric=bool(wt.get("symmetric", True)), per_channel=bool(wt.get("per_channel", True)),
        narrow_range=bool(wt.get("narrow_range", True)),
        weight_dtypes=_bits_map(f"{source} [weight] dtypes", wt.get("dtypes", {8: "int8"})),
        bias_mode=bias_mode,
        bias_separate=parse_op_list(source, ops, data.get("bias", {}).get("separate", []), "[bias] separate"),
        dtype_opset=MappingProxyType({str(k): int(v) for k, v in data.get("opset", {}).items()}),
        pairs=pairs,
        integer_kernels=parse_pairs(f"{source} [candidates] integer_kernels",
                                    cand.get("integer_kernels", [])),
        cost=MappingProxyType(cost), ops=MappingProxyType(ops),
        blocked_weights=bool(wt.get("blocked", False)),
        quantize_outputs=bool(place.get("quantize_outputs", True)),
        unread_outputs=bool(place.get("unread_outputs", True)),
        add_fuses_weighted_input=bool(place.get("add_fuses_weighted_input", False)),
        bias_add_fuses=bool(place.get("bias_add_fuses", False)),
        activation_products=bool(place.get("activation_products", True)),
        activation_functions=bool(place.get("activation_functions", True)),
        quantized_reads_only=bool(place.get("quantized_reads_only", False)),
        constant_affine=bool(place.get("constant_affine", True)),
        shared_encoding_ops=parse_op_list(source, ops, place.get("shared_encoding_ops", [])),
        residual_sum=bool(place.get("residual_sum", False)),
        fixed_outputs=parse_fixed_outputs(source, ops, data.get("fixed_outputs", {})),
        op_pairs=parse_op_pairs(source, ops, pairs, cand.get("ops", {})),
        runtime=runtime,
        **parse_forms(source, data.get("forms", {})),
        **parse_act_choices(source, ops, act, int(data.get("default_act_bits", 8))),
    )


def builtin_targets() -> dict[str, Path]:
    """Profiles shipped with the package, by name."""
    root = importlib.resources.files("dfq_onnx.targets")
    return {p.name[:-5]: Path(str(p)) for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.name.endswith(".toml")}


def load_target(name_or_path: str | Path) -> TargetProfile:
    """A built-in profile by name, or a user's TOML file by path."""
    known = builtin_targets()
    text_path = Path(name_or_path)
    if str(name_or_path) in known:
        path = known[str(name_or_path)]
    elif text_path.suffix == ".toml" or text_path.is_file():
        path = text_path
        if not path.is_file():
            raise TargetError(f"target file {path} not found")
    else:
        raise TargetError(f"unknown target '{name_or_path}' (available: {', '.join(known)}; "
                          "or pass a path to a .toml profile)")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{path}: invalid TOML: {exc}") from None
    return parse_profile(data, str(path))
