"""Which elementwise nodes stay float though the target quantizes their op (passes/quant_groups.py asks).

Elementwise ops next to layers the target encodes by a form (ORT CPU's dynamic MatMul) stay float unless
a statically quantized layer reads them (`feeds_weighted`) -- not through a normalization (a LayerNorm,
or the nodes applying a decomposed one's statistics): a static head after a transformer's last LayerNorm
leaves its residual stream float. Elementwise ops after the last weighted layer stay float too.

On a target with `[placement] activation_functions = false` (OpenVINO), the ops of an activation
function written as several pointwise ops (GELU's Div / Erf / Add / Mul, x * Sigmoid(x), hard-swish;
core/act_functions.py) are not quantized: the backend fuses them into one float op, and only their
output is quantized where a quantized op reads it; with `constant_affine = false`, neither are `x * c`
or `x + c` with c constant (`constant_affine_nodes`).

Normalization statistics stay float: a Reduce{Mean,Sum,SumSquare,L1,L2,LogSumExp,Prod} output, what
is computed from such outputs alone (a decomposed LayerNorm's mean, E[x^2] - E[x]^2, rsqrt(var + eps),
rsqrt x gamma), the x^2 read only by the reduction, and the elementwise op applying a statistic to the
features (x_centred * rsqrt) are not quantized. They are [N, .., 1]-sized or cheap, and 8 bits on them
is what breaks the normalization: var = E[x^2] - E[x]^2 cancels (Magika's LayerNorm after its max pool:
E[x^2] 222..257, var 10..19 at one 8-bit step of 0.13 each), and rsqrt amplifies a small variance's
rounding. Max / Min reductions are pooled features, not statistics, and stay quantizable.

What a Log reads stays float, back to the layers that compute it (a log-magnitude front end: torch's
STFT as Conv -> power -> mel MatMul -> Clip(1e-10) -> Log, openWakeWord's melspectrogram). A uniform
grid of step d has relative error d / (2 x) at x, and log(x) passes exactly that on as an absolute error:

    |log(x + e) - log(x)| ~ |e| / x <= d / (2 x)

unbounded as x -> 0, where a log-magnitude's quiet bins live (a spectrum spans 60-80 dB; 8 bits
span 48). The relative error is carried back unchanged through products and powers (Mul, Div, Pow,
Sqrt: relative errors add or scale), sums of like-signed terms (Add: re^2 + im^2, a filterbank
MatMul), floors (Clip, Max), Abs and layout ops, and through linear layers (Conv, Gemm, MatMul with
a constant weight: an STFT's quiet bins sit under the rounding noise of its input, which spreads over
every bin, as under its own output's rounding, relative to its loudest bin). The walk back from a
Log's input marks those nodes and stops at any other op: a Relu, a Softmax (probabilities read by a
Log stay float; the network before them does not), a graph input. The data-free samples cannot show
this loss (noise has a flat spectrum, no quiet bins), so it is decided from the graph: the builder
log-mel at W8A8 errs by 26 dB on average on tones over a faint noise floor, 0.1 dB with this rule.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs
from dfq_onnx.passes.static_heads import is_static_head

from dfq_onnx.core.graph_utils import is_const, is_float, is_graph_output

ROW_NORMALIZATIONS = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                      "SkipSimplifiedLayerNormalization", "RMSNormalization", "GroupNormalization",
                      "InstanceNormalization", "MeanVarianceNormalization", "LpNormalization")


def feeds_weighted(graph: gs.Graph, target, appliers: set[int], form_read: set[int]) -> set[int]:
    """ids of nodes from which a statically quantized weighted layer is reachable along float tensors,
    through any op but a normalization (ops the target encodes by a form, e.g. every MatMul on ORT CPU,
    do not count; `form_read`: ids of the tensors a form reads, `appliers`: ids of the nodes applying a
    decomposed normalization's statistics).

    Elementwise ops in the tail after the last weighted layer (detector box decoding, score
    concatenation) stay float: quantizing them buys no integer kernel and can mix unrelated ranges.
    Ops the target does not quantize (a Div in an exported hard-swish) do not stop the reach: the
    elementwise ops before them sit between Q/DQ pairs, where the runtime runs them in integer only if
    they are quantized. A normalization does (a LayerNormalization, or in decomposed form the nodes
    applying its statistics to the features, `appliers`): it rescales each row in float from that row's
    own statistics, so its input's quantizer buys no integer kernel, and the layer after it quantizes
    its output anyway. What stops there is a transformer's residual stream: with its MatMuls dynamic,
    a static classifier head after the last LayerNorm reached every residual Add of the model, and
    8-bit steps on a stream with outlier channels cost a small ViT / BERT / GPT-2 3-20 dB of output
    SQNR (ViT 12.7 dB with them, 30.4 without, ORT's quantize_dynamic 32.7; BENCHMARKS.md, session 14).
    On a target that keeps attention's activation products float (`[placement] activation_products`),
    they stop the reach as a form does. A node writing or reading a tensor a form reads stops it too: a
    stream without normalizations (MobileBERT's NoNorm is an elementwise x * gamma + beta) feeds every
    block's MatMuls, which quantize it per call; a static grid on it rounds what the forms read and buys
    no integer kernel (session 16).
    """
    reach: set[int] = set()
    for node in reversed(graph.nodes):
        role = target.role(node.op)
        if role == "weighted" and target.forms_for(node.op) and not is_static_head(node, target):
            continue        # the target encodes this op by a form (any of them: the attention MatMul too)
        if id(node) in appliers or (node.op in ROW_NORMALIZATIONS and role is None):
            continue        # a normalization: its input stays float unless something else needs it
        if node.op == "MatMul" and activation_product(node) and not target.activation_products:
            continue        # attention's products stay float on this target, and what feeds them
        if any(id(t) in form_read for t in (*node.inputs, *node.outputs)):
            continue        # writes or reads a form's input: the form quantizes it per call
        if role == "weighted" or any(
                id(c) in reach for out in node.outputs if is_float(out) for c in out.outputs):
            reach.add(id(node))
    return reach


STAT_REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSumExp",
                   "ReduceProd")


def statistics_nodes(graph: gs.Graph, target) -> tuple[set[int], set[int]]:
    """ids of the elementwise nodes that compute or apply normalization statistics (module docstring),
    and of those among them that apply one to the features (x - mean, x_c / std: a statistic and a
    feature read). A statistic stops at a weighted layer (an SE block's pooled mean through its convs is
    a feature)."""
    stats: set[int] = set()           # ids of statistic tensors
    nodes: set[int] = set()
    appliers: set[int] = set()
    for node in graph.nodes:          # topological order
        floats = [t for t in node.inputs if is_float(t) and not is_const(t)]
        read = [t for t in floats if id(t) in stats]
        weighted = target.role(node.op) == "weighted"
        if node.op in STAT_REDUCTIONS or (floats and len(read) == len(floats) and not weighted):
            stats.update(id(t) for t in node.outputs)
        if read:
            nodes.add(id(node))
            if len(read) < len(floats) and not weighted:
                appliers.add(id(node))
        square = node.op == "Mul" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]
        readers = [c for t in node.outputs for c in t.outputs]
        if square and readers and all(c.op in STAT_REDUCTIONS for c in readers) \
                and not any(is_graph_output(graph, t) for t in node.outputs):
            nodes.add(id(node))       # x^2 read only by the reduction
    return nodes, appliers


RELATIVE = ("Mul", "Div", "Pow", "Sqrt", "Abs", "Add", "Sum", "Clip", "Max", "Neg",
            "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Split", "Concat",
            "ReduceSum", "ReduceMean", "ReduceSumSquare",
            "Conv", "ConvTranspose", "Gemm", "MatMul")   # carry a relative error back (module docstring)


def log_domain_nodes(graph: gs.Graph) -> set[int]:
    """ids of the nodes whose output a Log reads through relative-error carriers (module docstring)."""
    nodes: set[int] = set()
    frontier = [n.inputs[0] for n in graph.nodes if n.op == "Log" and n.inputs]
    seen: set[int] = set()
    while frontier:
        t = frontier.pop()
        if id(t) in seen or not t.inputs:
            continue
        seen.add(id(t))
        producer = t.inputs[0]
        if producer.op in RELATIVE:
            nodes.add(id(producer))
            frontier.extend(x for x in producer.inputs if is_float(x) and not is_const(x))
    return nodes


def activation_product(node: gs.Node) -> bool:
    """A MatMul of two activations (attention's Q K^T and A V): quantized like an elementwise op."""
    return len(node.inputs) == 2 and all(is_float(t) and not is_const(t) for t in node.inputs)


AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def constant_affine_nodes(graph: gs.Graph, target) -> set[int]:
    """ids of the `x * c`, `x + c` (c constant) nodes a target with `[placement] constant_affine =
    false` leaves float: OpenVINO runs no integer kernel for them (its low-precision transformations fold
    them into the dequantization of x: a per-channel scale and shift, NNCF's unquantized ScaleShift), so a
    quantizer on them only rounds -- and hands the folded shift to the transformations that move a
    dequantization through a later Gather, which fail on a per-channel constant of lower rank
    (MobileBERT's NoNorm x * gamma + beta before the pooler's Gather). A bias Add the target fuses into the
    weighted op writing its input (`bias_add_fuses`) stays that layer's output."""
    if target.constant_affine:
        return set()
    out = set()
    for node in graph.nodes:
        if node.op not in AFFINE_OPS or len(node.inputs) != 2 or not all(is_float(t) for t in node.inputs):
            continue
        live = [t for t in node.inputs if not is_const(t)]
        if len(live) != 1:
            continue
        producer = live[0].inputs[0] if live[0].inputs else None
        if node.op == "Add" and target.bias_add_fuses and producer is not None \
                and target.role(producer.op) == "weighted":
            continue
        out.add(id(node))
    return out
