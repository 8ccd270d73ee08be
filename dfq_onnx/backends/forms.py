"""Emit forms besides static Q/DQ (core/candidates.py): the weights each stores and the nodes it writes.

Dynamic int8, "W<b>A8-dyn" (ORT quantize_dynamic's form, fused by ORT into DynamicQuantizeMatMul /
MatMulIntegerToFloat). 8-bit weights: symmetric per output column, narrow range, as static Q/DQ stores
them; fewer bits: asymmetric per column with a clipped range (core/blockwise.py, blocks = whole columns),
codes and zero points shifted by 2^(b-1) into signed storage (MLAS's fast int8 kernels multiply uint8 by
int8; uint8 x uint8 ran 1.6x slower), 4-bit storage widened by a Cast that ORT folds when it loads the
model, so the kernel is the same int8 one and only the file shrinks:

    x ─► DynamicQuantizeLinear ─► x_q, s_x, z_x                  (one per tensor, shared by its readers)
    [W_q int4 ─► Cast(int8)]
    MatMulInteger(x_q, W_q [K, N], z_x, z_w[N] or 0) ─► Cast(float) ─► Mul(·, s_x * s_w[N]) ─► y

Weight-only, block-wise "W<b>A32-b<B>" (dfq_onnx/core/blockwise.py; activations stay float):

    x   ─► MatMulNBits(B, scales, zero_points; K, N, bits, block_size, accuracy_level) ─► y
    ids ─► GatherBlockQuantized(data, ids, scales, zero_points; block_size, bits)      ─► y

(com.microsoft contrib ops; the target's [forms] names the kernels.) "W32A32" leaves the node float.
`weight_hat` gives the float weights each form computes with, for the sensitivity probe.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core import blockwise, candidates, ir, numerics
from dfq_onnx.core.errors import UnsupportedModelError
from dfq_onnx.core.gptq import LaidHessian

CONTRIB = "com.microsoft"
# form layers whose weight is W [K, N] read as x @ W: MatMul, and com.microsoft Attention's fused
# q / k / v projection (W [D, 3D]); a Gather table [V, D] is the other layout
COLUMN_WEIGHTS = ("MatMul", "Attention")


def dynamic_weight(w: np.ndarray, bits: int,
                   importance=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(W_q [K, N], s_w [N], z_w [N], storage type) of a dynamic candidate (module docstring); below 8
    bits the clip search weighs each k by `importance` ([K, 1]: E[x_k^2], backends/input_moments.py);
    with a LaidHessian (--gptq) its codes are GPTQ's on those scales where e^T H e falls (core/gptq.py)."""
    if bits >= 8:
        scale = numerics.weight_scales(w, bits, 1)
        q = numerics.quantize(w, scale, 0, bits, True, 1, narrow=True)
        return q, scale, np.zeros(scale.shape, np.int64), "int8"
    hess = importance if isinstance(importance, LaidHessian) and importance.kind == "matmul" else None
    h = importance if hess is None else (hess.diagonal(w.shape) if hess.clip else None)
    h = None if not isinstance(h, np.ndarray) else np.broadcast_to(h, w.shape).T
    q, scale, zero = blockwise.quantize_blocks(np.asarray(w, np.float32).T, bits, w.shape[0], clip=True,
                                               importance=h)
    q, scale, zero = q.T.astype(np.int64), scale[:, 0], zero[:, 0].astype(np.int64)
    if hess is not None:
        q, scale, zero = hess.round(w, [scale], [zero], 0, (1 << bits) - 1)
    shift = 1 << (bits - 1)       # signed storage: MLAS's fast kernels are uint8 x int8
    return q - shift, scale, zero - shift, "int4" if bits <= 4 else "int8"


def tensor_params(w: np.ndarray) -> tuple[np.float32, int]:
    """One asymmetric uint8 scale and zero point for all of `w` (the "tensor" form)."""
    return numerics.affine_params(float(w.min()), float(w.max()), 8, False)


def reduction_length(op: str, w: np.ndarray) -> int:
    """Length of the axis a weight's blocks run along: K of a MatMul W [K, N], D of a table [V, D]."""
    return int(w.shape[0] if op in COLUMN_WEIGHTS else w.shape[1])


def fits(op: str, cand, w_shape) -> bool:
    """Whether `cand` can encode a weight of this shape (blocks must divide the reduction axis)."""
    length = int(w_shape[0] if op in COLUMN_WEIGHTS else w_shape[1])
    b = candidates.block(cand, length)
    return not b or length % b == 0


def uniform_fit(target, op: str, w_shape, w_bits: int, a_bits: int | None = None):
    """The target's uniform form for `op` among the candidates whose blocks divide this weight (a table
    of width 96 or 312 takes no 8-bit blocks of 128: the next form, float if no other fits)."""
    return target.uniform_form(op, w_bits, a_bits, fits=lambda c: fits(op, c, w_shape))


def weight_hat(op: str, w: np.ndarray, cand, importance: np.ndarray | None = None) -> np.ndarray:
    """The float weights `cand` computes with (what the probe evaluates); `importance` as Emit's."""
    w = np.asarray(w, np.float32)
    f = candidates.form(cand)
    if f == "float":
        return w
    if f == "dyn":
        q, scale, zero, _ = dynamic_weight(w, cand[0], importance)
        return numerics.dequantize(q, scale, zero, 1)
    if f == "tensor":
        return numerics.fake_quant(w, *tensor_params(w), 8, False)
    b = candidates.block(cand, reduction_length(op, w))
    return blockwise.fake_quantize(w, cand[0], b, 0 if op in COLUMN_WEIGHTS else 1)


def _var(graph: gs.Graph, name: str, dtype, shape=None) -> gs.Variable:
    return gs.Variable(name, dtype=dtype, shape=shape)


def _quantized_input(graph: gs.Graph, x: gs.Tensor, shared: dict) -> tuple:
    if x.name not in shared:
        outs = [_var(graph, f"{x.name}_dyn_quantized", np.uint8, x.shape),
                _var(graph, f"{x.name}_dyn_scale", np.float32, []),
                _var(graph, f"{x.name}_dyn_zero_point", np.uint8, [])]
        graph.nodes.append(gs.Node("DynamicQuantizeLinear", name=f"{x.name}_DynamicQuantizeLinear",
                                   inputs=[x], outputs=outs))
        shared[x.name] = outs
    return shared[x.name]


def emit_dynamic(graph: gs.Graph, node: gs.Node, w: np.ndarray, bits: int, shared: dict,
                 importance: np.ndarray | None = None) -> dict:
    """Replace MatMul `node` by the dynamic int8 form; `shared` maps x -> its DynamicQuantizeLinear."""
    label, y = node.name, node.outputs[0]
    q, scale, zero, storage = dynamic_weight(w, bits, importance)
    xq, xs, xz = _quantized_input(graph, node.inputs[0], shared)
    wq = ir.constant(f"{label}_weight_quantized", q, storage)
    # symmetric weights: one scalar zero point (MLAS's per-column zero-point path ran ~1.5x slower)
    wz = ir.constant(f"{label}_weight_zero_point", zero if np.any(zero) else np.zeros((), np.int64), "int8")
    acc = _var(graph, f"{label}_int32", np.int32)
    acc_f = _var(graph, f"{label}_int32_float", np.float32)
    both = _var(graph, f"{label}_scale", np.float32, list(scale.shape))
    if storage == "int4":
        wide_q = _var(graph, f"{label}_weight_int8", np.int8, list(q.shape))
        graph.nodes.append(gs.Node("Cast", name=f"{label}_weight_Cast", inputs=[wq], outputs=[wide_q],
                                   attrs={"to": 3}))
        wq = wide_q
    graph.nodes += [
        gs.Node("MatMulInteger", name=f"{label}_MatMulInteger", inputs=[xq, wq, xz, wz], outputs=[acc]),
        gs.Node("Mul", name=f"{label}_scales_Mul", inputs=[xs, gs.Constant(f"{label}_weight_scale",
                                                                         scale.astype(np.float32))],
                outputs=[both]),
        gs.Node("Cast", name=f"{label}_Cast", inputs=[acc], outputs=[acc_f], attrs={"to": 1}),
        gs.Node("Mul", name=f"{label}_output_Mul", inputs=[acc_f, both], outputs=[y]),
    ]
    node.outputs.clear()
    return {"weight_dtype": storage, "scale_min": float(scale.min()), "scale_max": float(scale.max())}


def emit_qattention(graph: gs.Graph, node: gs.Node, w: np.ndarray, bits: int, shared: dict) -> dict:
    """Replace com.microsoft Attention `node` (x, W_qkv [D, 3D], bias, [mask_index, [past]]) by QAttention
    on the dynamic int8 input and the W8 per-column weights (quantize_dynamic's form for it, with the
    symmetric per-column scales of `dynamic_weight`)."""
    if bits != 8:
        raise UnsupportedModelError(f"node '{node.name}': QAttention takes 8-bit weights, not {bits}")
    label, ins = node.name, node.inputs
    q, scale, zero, _ = dynamic_weight(w, bits)
    xq, xs, xz = _quantized_input(graph, node.inputs[0], shared)
    optional = [ins[i] if len(ins) > i and ins[i].name else gs.Variable.empty() for i in (3, 4)]
    wq = ir.constant(f"{label}_weight_quantized", q, "int8")
    ws = gs.Constant(f"{label}_weight_scale", scale.astype(np.float32))
    wz = ir.constant(f"{label}_weight_zero_point", zero, "int8")
    graph.nodes.append(gs.Node("QAttention", name=f"{label}_QAttention", domain=CONTRIB,
                               attrs=dict(node.attrs), inputs=[xq, wq, ins[2], xs, ws, optional[0], xz, wz,
                                                               optional[1]],
                               outputs=list(node.outputs)))
    node.outputs.clear()
    return {"weight_dtype": "int8", "scale_min": float(scale.min()), "scale_max": float(scale.max())}


def emit_qembed(graph: gs.Graph, node: gs.Node) -> dict:
    """Replace com.microsoft EmbedLayerNormalization `node` (ids, [segment ids], word / position /
    [segment] tables, gamma, beta, [mask]) by QEmbedLayerNormalization: the constants in uint8, one scale
    and zero point each (the kernel's only encoding; quantize_dynamic's form for it)."""
    label, ins = node.name, node.inputs
    quantized, scales, zeros = [], [], []
    for i, part in zip(range(2, 7), ("word", "position", "segment", "gamma", "beta")):
        if not ins[i].name:                 # no segment table (DistilBERT): its three inputs stay empty
            quantized.append(gs.Variable.empty())
            scales.append(gs.Variable.empty())
            zeros.append(gs.Variable.empty())
            continue
        w = np.asarray(ins[i].values, np.float32)
        scale, zero = tensor_params(w)
        quantized.append(ir.constant(f"{label}_{part}_quantized", numerics.quantize(w, scale, zero, 8, False),
                                     "uint8"))
        scales.append(gs.Constant(f"{label}_{part}_scale", np.asarray(scale, np.float32)))
        zeros.append(ir.constant(f"{label}_{part}_zero_point", np.asarray(zero, np.int64), "uint8"))
    mask = ins[7] if len(ins) > 7 and ins[7].name else gs.Variable.empty()
    graph.nodes.append(gs.Node("QEmbedLayerNormalization", name=f"{label}_QEmbedLayerNormalization",
                               domain=CONTRIB, attrs={k: v for k, v in node.attrs.items() if k == "epsilon"},
                               inputs=[ins[0], ins[1], *quantized, mask, *scales, *zeros],
                               outputs=list(node.outputs[:2])))
    node.outputs.clear()
    word = scales[0].values
    return {"weight_dtype": "uint8", "scale_min": float(word), "scale_max": float(word)}


def emit_nbits(graph: gs.Graph, node: gs.Node, w: np.ndarray, bits: int, block: int, accuracy: int) -> dict:
    """Replace MatMul `node` (weight W [K, N]) by MatMulNBits."""
    k, n = w.shape
    consts = blockwise.matmul_nbits(w, bits, block)
    sb = blockwise.storage_bits(bits)
    label = node.name
    ins = [node.inputs[0], gs.Constant(f"{label}_B", consts["B"]),
           gs.Constant(f"{label}_scales", consts["scales"]), gs.Constant(f"{label}_zero_points",
                                                                        consts["zero_points"])]
    graph.nodes.append(gs.Node("MatMulNBits", name=f"{label}_MatMulNBits", domain=CONTRIB, inputs=ins,
                               outputs=list(node.outputs), attrs={"K": int(k), "N": int(n), "bits": sb,
                                                                  "block_size": int(block),
                                                                  "accuracy_level": int(accuracy)}))
    node.outputs.clear()
    return {"weight_dtype": f"uint{sb}", "scale_min": float(consts["scales"].min()),
            "scale_max": float(consts["scales"].max())}


def emit_gather(graph: gs.Graph, node: gs.Node, table: np.ndarray, bits: int, block: int) -> dict:
    """Replace Gather `node` (constant table [V, D], axis 0) by GatherBlockQuantized."""
    consts = blockwise.gather_blocks(table, bits, block)
    sb = blockwise.storage_bits(bits)
    label = node.name
    ins = [gs.Constant(f"{label}_data", consts["data"]), node.inputs[1],
           gs.Constant(f"{label}_scales", consts["scales"]),
           gs.Constant(f"{label}_zero_points", consts["zero_points"])]
    graph.nodes.append(gs.Node("GatherBlockQuantized", name=f"{label}_GatherBlockQuantized", domain=CONTRIB,
                               inputs=ins, outputs=list(node.outputs),
                               attrs={"gather_axis": 0, "quantize_axis": 1, "block_size": int(block),
                                      "bits": sb}))
    node.outputs.clear()
    return {"weight_dtype": f"uint{sb}", "scale_min": float(consts["scales"].min()),
            "scale_max": float(consts["scales"].max())}


def emit(graph: gs.Graph, node: gs.Node, layer, cand, settings, shared: dict,
         importance: np.ndarray | None = None) -> dict | None:
    """Write `cand` for the form layer `node`; returns report fields (None when it stays float).
    `importance`: the dynamic form's clip weighting below 8 bits (`dynamic_weight`)."""
    w = np.asarray(node.inputs[layer.weight_index].values, np.float32)
    f = candidates.form(cand)
    if f == "float":
        return None
    if not fits(node.op, cand, w.shape):
        raise UnsupportedModelError(f"node '{node.name}': {candidates.name(cand)} blocks do not divide the "
                                    f"weight's reduction axis ({list(w.shape)})")
    if f == "tensor":
        return emit_qembed(graph, node)
    if f == "dyn" and node.op == "Attention":
        return emit_qattention(graph, node, w, cand[0], shared)
    if f == "dyn":
        return emit_dynamic(graph, node, w, cand[0], shared, importance)
    b = candidates.block(cand, reduction_length(node.op, w))
    if node.op == "Gather":
        return emit_gather(graph, node, w, cand[0], b)
    return emit_nbits(graph, node, w, cand[0], b, int(settings.get("accuracy_level", 0)))


def simulation_nodes(x: gs.Tensor, cand, settings, tag: str, opset: int) -> tuple[list[gs.Node], gs.Tensor]:
    """Nodes computing what `cand`'s kernel does to its activation input `x` (for the probe):
    dynamic int8 -- DynamicQuantizeLinear -> DequantizeLinear (per tensor, uint8); MatMulNBits at
    accuracy level 4 -- symmetric int8 per block of the weight's block length along K,
    x_hat = round(x / s) s with s = max|x_block| / 127. Returns (nodes, x_hat); ([], x) otherwise."""
    f = candidates.form(cand)
    var = {}

    def v(name: str, dtype=np.float32) -> gs.Variable:
        var.setdefault(name, gs.Variable(f"{tag}_{name}", dtype=dtype))
        return var[name]

    if f == "dyn":
        return [gs.Node("DynamicQuantizeLinear", name=f"{tag}_DQL", inputs=[x],
                        outputs=[v("q", np.uint8), v("s"), v("z", np.uint8)]),
                gs.Node("DequantizeLinear", name=f"{tag}_DQ", inputs=[v("q"), v("s"), v("z")],
                        outputs=[v("x_hat")])], v("x_hat")
    k = x.shape[-1] if x.shape else None
    b = candidates.block(cand, k) if isinstance(k, int) and f not in ("float", "qdq") else 0
    if not b or k % b or int(settings.get("accuracy_level", 0)) != 4:
        return [], x
    split = gs.Constant(f"{tag}_split", np.array([-1, k // b, b], np.int64))
    axes = np.array([2], np.int64)
    reduce = (gs.Node("ReduceMax", inputs=[v("abs"), gs.Constant(f"{tag}_axes", axes)], outputs=[v("max")],
                      attrs={"keepdims": 1}) if opset >= 18 else
              gs.Node("ReduceMax", inputs=[v("abs")], outputs=[v("max")], attrs={"keepdims": 1, "axes": [2]}))
    nodes = [gs.Node("Shape", inputs=[x], outputs=[v("shape", np.int64)]),
             gs.Node("Reshape", inputs=[x, split], outputs=[v("blocks")]),
             gs.Node("Abs", inputs=[v("blocks")], outputs=[v("abs")]), reduce,
             gs.Node("Div", inputs=[v("max"), gs.Constant(f"{tag}_127", np.array(127.0, np.float32))],
                     outputs=[v("ratio")]),
             gs.Node("Max", inputs=[v("ratio"), gs.Constant(f"{tag}_tiny", np.array(1e-30, np.float32))],
                     outputs=[v("s")]),
             gs.Node("Div", inputs=[v("blocks"), v("s")], outputs=[v("scaled")]),
             gs.Node("Round", inputs=[v("scaled")], outputs=[v("q")]),
             gs.Node("Mul", inputs=[v("q"), v("s")], outputs=[v("y")]),
             gs.Node("Reshape", inputs=[v("y"), v("shape")], outputs=[v("x_hat")])]
    for i, n in enumerate(nodes):
        n.name = f"{tag}_sim{i}"
    return nodes, v("x_hat")


def group_forms(graph: gs.Graph, spec, groups, target, weight_bits, base_bits: int) -> dict[str, tuple]:
    """Form group -> (its candidates, its base candidate): the target's forms legal for every layer of
    the group (blocks dividing each weight), with weight bits among `weight_bits` or float; the base is
    the uniform plan's candidate at `base_bits`."""
    nodes = {n.name: n for n in graph.nodes}
    out = {}
    for g in groups:
        layers = [spec.layers[n] for n in g.layers]
        if not layers or not all(layer.form for layer in layers):
            continue
        legal = None
        for layer in layers:
            shape = nodes[layer.node].inputs[layer.weight_index].shape
            own = [c for c in target.forms_for(layer.op) if fits(layer.op, c, shape)
                   and (c[0] in weight_bits or c[0] == candidates.FLOAT_BITS)]
            legal = own if legal is None else [c for c in legal if c in own]
        shapes = [nodes[layer.node].inputs[layer.weight_index].shape for layer in layers]
        base = max((uniform_fit(target, layer.op, shape, base_bits) for layer, shape in zip(layers, shapes)),
                   key=lambda c: c[0])
        if legal and base in legal:
            out[g.id] = (tuple(legal), base)
    return out
