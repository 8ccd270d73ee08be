"""The emitted plan as an AIMET / QNN quantization-overrides JSON (`--export-encodings FILE.json`).

Format (AIMET encodings 0.6.1, read by qairt-converter / qnn-onnx-converter --quantization_overrides):

    {"version": "0.6.1",
     "activation_encodings": {tensor: [{bitwidth, dtype, is_symmetric, min, max, offset, scale}]},
     "param_encodings":      {weight: [one entry per output channel, same keys]}}

QNN dequantizes as  float = (q_u + offset) * scale  with q_u the unsigned integer of `bitwidth` bits
(QnnTypes.h, Qnn_ScaleOffset_t), so for an ONNX encoding (scale, zero point z) of b logical bits:

    unsigned storage   offset = -z                   (uint8 / uint16 activations)
    signed storage     offset = -(z + 2^(b-1))       (int8 / int4 weights: z = 0 -> offset = -2^(b-1))
    min = offset * scale,  max = (offset + 2^b - 1) * scale

`bitwidth` is the logical grid (a 5-bit weight grid stored in int8 says 5). Biases are left to the
converter (--bias_bitwidth 32 derives scale = input_scale * weight_scale, as the QDQ model does).
Activation names are the model's tensor names (a quantized graph output keeps its own name).
"""

from __future__ import annotations

import json

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.report import Report

VERSION = "0.6.1"


def _storage(const: gs.Constant) -> str:
    packed = getattr(const, "packed_dtype", None)
    return packed or np.dtype(const.values.dtype).name


def _entries(scale: np.ndarray, zp: np.ndarray, bits: int, signed: bool, symmetric: bool) -> list[dict]:
    out = []
    for s, z in zip(np.atleast_1d(scale).astype(np.float64), np.atleast_1d(zp).astype(np.int64)):
        offset = -(int(z) + (1 << (bits - 1) if signed else 0))
        s32 = float(np.float32(s))
        out.append({"bitwidth": int(bits), "dtype": "int", "is_symmetric": "True" if symmetric else "False",
                    "min": offset * s32, "max": (offset + (1 << bits) - 1) * s32, "offset": offset,
                    "scale": s32})
    return out


def _activation_name(graph: gs.Graph, q: gs.Node) -> str:
    """The model's name for the tensor a QuantizeLinear reads (graph outputs keep theirs)."""
    outputs = {t.name for t in graph.outputs}
    for dq in q.outputs[0].outputs:
        if dq.op == "DequantizeLinear" and dq.outputs[0].name in outputs:
            return dq.outputs[0].name
    return q.inputs[0].name


def export_encodings(graph: gs.Graph, report: Report, symmetric_acts: bool) -> dict:
    """Activation and weight encodings of an emitted QDQ graph, in the QNN overrides format."""
    acts: dict[str, list[dict]] = {}
    for node in graph.nodes:
        if node.op != "QuantizeLinear":
            continue
        scale, zp = node.inputs[1], node.inputs[2]
        storage = _storage(zp)
        bits = int(np.iinfo(np.dtype(zp.values.dtype)).bits) if storage not in ("int4", "uint4") else 4
        acts[_activation_name(graph, node)] = _entries(scale.values, zp.values, bits,
                                                       storage.startswith("int"), symmetric_acts)
    params: dict[str, list[dict]] = {}
    consts = {t.name: t for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    dq_by_input = {n.inputs[0].name: n for n in graph.nodes if n.op == "DequantizeLinear"}
    for layer in report.layers:
        weight = layer["weight"]
        dq = dq_by_input.get(f"{weight}_quantized")
        if weight in params or dq is None or weight + "_quantized" not in consts:
            continue
        signed = _storage(dq.inputs[0]).startswith("int")
        params[weight] = _entries(dq.inputs[1].values, dq.inputs[2].values, int(layer["weight_bits"]),
                                  signed, True)
    return {"version": VERSION, "activation_encodings": dict(sorted(acts.items())),
            "param_encodings": dict(sorted(params.items()))}


def to_json(encodings: dict) -> str:
    return json.dumps(encodings, indent=2, sort_keys=True) + "\n"
