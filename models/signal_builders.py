"""Tiny non-image float-input models (audio waveforms), for synthesis on inputs with no image layout.

``waveform_classifier``: a raw-audio classifier with no BatchNormalization (as openWakeWord's
melspectrogram front end and Silero-style models are exported)::

    audio [N, T] ─ Unsqueeze [N, 1, T] ─ conv1 (stride 4) ─ Relu ─ conv2 ─ Relu ─ GAP ─ Flatten ─ fc

(`post_bn`: a BatchNormalization after the first Relu, as CREPE's Conv - Relu - BN blocks are exported,
which no layer can absorb.)

``log_mel_classifier``: a log-mel front end as torch exports an STFT (openWakeWord's melspectrogram),
then a small classifier on the log-mel::

    audio [N, T] ─ Unsqueeze ─ conv_re / conv_im (windowed cos / sin, hop 64) ─ Pow 2 ─ Add ─ Transpose
                 ─ MatMul mel filterbank (>= 0) ─ Clip(1e-10) ─ Log ─ Mul 10 / ln 10 (dB)
                 ─ Unsqueeze ─ conv ─ Relu ─ GAP ─ Flatten ─ fc

``rate_switched_vad``: a streaming voice-activity model as silero-vad v5 is exported: a scalar int64
input `sr` selects the 16 kHz or the 8 kHz network through a top-level If, each branch a conv front end
and an LSTM cell whose state input [2, N, H] carries the batch on axis 1 (dimensions unnamed), and the
LSTM's two state outputs pass through a nested two-output If on a shape condition (torch's "is this
input batched" test)::

    sr ─ Equal 16000 ─ If ─┬─ then: audio ─ conv (stride 4) ─ Relu ─ ReduceMean ─┐
                           │        state ─ Gather 0 / 1 ─ Unsqueeze ────────────┴─ LSTM ─ If(rank) ─ h, c
                           │        h ─ MatMul ─ Sigmoid ─ prob;  Concat(h, c) ─ stateN
                           └─ else: the same with its own weights (conv stride 2)

``unbatched_spectrogram_net``: a network for one example, as madmom's model converter writes its beat
and key CNNs: a spectrogram [frames, bins] with no batch axis, which the graph itself makes the Conv
input [1, 1, frames, bins] (channel and batch axes added, NHWC -> NCHW) and takes back after the Conv::

    spec [T, F] ─ Unsqueeze 2 ─ Unsqueeze 0 ─ Transpose ─ conv (3 x 3, same) ─ Transpose ─ Squeeze 0
                ─ Elu ─ ReduceMean over F ─ fc (MatMul + Add) ─ Sigmoid ─ Squeeze ─ act [T]

``spectrogram_max_head``: a score from a spectrogram as Keras exports DNSMOS's CNN: channel axis added,
NHWC -> NCHW, a conv, then GlobalMaxPooling2D written back in NHWC as ReduceMax over the two spatial axes
(keepdims 0), and dense layers::

    spec [N, T, F] ─ Unsqueeze 3 ─ Transpose ─ conv ─ Relu ─ Transpose ─ ReduceMax (1, 2) ─ fc1 ─ Relu ─ fc2

All pass the ONNX checker and run in ONNX Runtime (opset 17).
"""

from __future__ import annotations

import numpy as np
import onnx
from dfq_onnx.models.builders import _init, _model, _vi
from onnx import helper, numpy_helper

__all__ = ["log_mel_classifier", "rate_switched_vad", "smoothing_signal_net", "spectrogram_max_head",
           "unbatched_spectrogram_net", "waveform_classifier"]


def waveform_classifier(samples: int = 256, c: int = 8, classes: int = 4, seed: int = 0,
                        post_bn: bool = False) -> onnx.ModelProto:
    """The classifier of the module docstring; input audio [N, samples], output [N, classes]."""
    rng = np.random.default_rng(seed)
    inits = [_init("axes", np.array([1], np.int64)),
             _init("conv1.weight", (rng.standard_normal((c, 1, 9)) / 3).astype(np.float32)),
             _init("conv1.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("conv2.weight", (rng.standard_normal((c, c, 3)) / np.sqrt(3 * c)).astype(np.float32)),
             _init("conv2.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32))]
    nodes = [helper.make_node("Unsqueeze", ["audio", "axes"], ["x"], name="unsqueeze"),
             helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", strides=[4]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["b1" if post_bn else "r1", "conv2.weight", "conv2.bias"], ["c2"],
                              name="conv2", pads=[1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]
    if post_bn:
        inits += [_init(f"bn1.{k}", v.astype(np.float32)) for k, v in (
            ("scale", rng.uniform(0.5, 1.5, c)), ("bias", rng.normal(0, 0.1, c)),
            ("mean", rng.uniform(0.2, 0.6, c)), ("var", rng.uniform(0.1, 0.4, c)))]
        nodes.insert(3, helper.make_node("BatchNormalization", ["r1"] + [f"bn1.{k}" for k in
                                         ("scale", "bias", "mean", "var")], ["b1"], name="bn1"))
    return _model(nodes, [_vi("audio", ["N", samples])], [_vi("logits", ["N", classes])], inits,
                  name="waveform_classifier")


def log_mel_classifier(samples: int = 1024, n_fft: int = 128, hop: int = 64, mels: int = 16, c: int = 4,
                       classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """The log-mel classifier of the module docstring; input audio [N, samples], outputs the log-mel
    `mel_db` [N, frames, mels] and `logits` [N, classes]."""
    rng = np.random.default_rng(seed)
    k = np.arange(n_fft // 2 + 1)[:, None]
    t = np.arange(n_fft)[None, :]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * t / n_fft)
    bins = n_fft // 2 + 1
    edges = np.linspace(1, bins - 1, mels + 2)
    fb = np.maximum(0.0, 1 - np.abs(np.arange(bins)[:, None] - edges[None, 1:-1]) / (edges[1] - edges[0]))
    cos, sin = window * np.cos(2 * np.pi * k * t / n_fft), -window * np.sin(2 * np.pi * k * t / n_fft)
    inits = [_init("axes", np.array([1], np.int64)),
             _init("conv_re.weight", cos[:, None].astype(np.float32)),
             _init("conv_im.weight", sin[:, None].astype(np.float32)),
             _init("two", np.array(2.0, np.float32)), _init("melW", fb.astype(np.float32)),
             _init("floor", np.array(1e-10, np.float32)), _init("db", np.array(10 / np.log(10), np.float32)),
             _init("conv.weight", (rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32)),
             _init("conv.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((classes, c)) / np.sqrt(c)).astype(np.float32))]
    stft = [helper.make_node("Unsqueeze", ["audio", "axes"], ["x"], name="unsqueeze"),
            helper.make_node("Conv", ["x", "conv_re.weight"], ["re"], name="conv_re", strides=[hop]),
            helper.make_node("Conv", ["x", "conv_im.weight"], ["im"], name="conv_im", strides=[hop]),
            helper.make_node("Pow", ["re", "two"], ["re2"], name="pow_re"),
            helper.make_node("Pow", ["im", "two"], ["im2"], name="pow_im"),
            helper.make_node("Add", ["re2", "im2"], ["power"], name="power"),
            helper.make_node("Transpose", ["power"], ["power_t"], name="transpose", perm=[0, 2, 1]),
            helper.make_node("MatMul", ["power_t", "melW"], ["mel"], name="mel"),
            helper.make_node("Clip", ["mel", "floor", ""], ["mel_floor"], name="floor"),
            helper.make_node("Log", ["mel_floor"], ["log_mel"], name="log"),
            helper.make_node("Mul", ["log_mel", "db"], ["mel_db"], name="to_db")]
    head = [helper.make_node("Unsqueeze", ["mel_db", "axes"], ["img"], name="unsqueeze_img"),
            helper.make_node("Conv", ["img", "conv.weight", "conv.bias"], ["c1"], name="conv",
                             pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
            helper.make_node("GlobalAveragePool", ["r1"], ["gap"], name="gap"),
            helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]
    frames = (samples - n_fft) // hop + 1
    return _model(stft + head, [_vi("audio", ["N", samples])],
                  [_vi("mel_db", ["N", frames, mels]), _vi("logits", ["N", classes])], inits,
                  name="log_mel_classifier")


def _vad_branch(tag: str, rng, stride: int, c: int, hidden: int, frame: int | None = None) -> onnx.GraphProto:
    """One rate's network of `rate_switched_vad` as an If branch (outputs prob, stateN); `frame`: the
    audio is first reshaped to rows of that many samples (the network runs at that length only)."""
    def name(x: str) -> str:
        return f"{tag}/{x}"
    w = {name("conv.weight"): rng.standard_normal((c, 1, 8)) / 3, name("conv.bias"): rng.normal(0, 0.1, c),
         name("W"): rng.standard_normal((1, 4 * hidden, c)) / np.sqrt(c),
         name("R"): rng.standard_normal((1, 4 * hidden, hidden)) / np.sqrt(hidden),
         name("fc.weight"): rng.standard_normal((hidden, 1)) / np.sqrt(hidden)}
    consts = [helper.make_node("Constant", [], [k], name=f"{k}/const",
                               value=numpy_helper.from_array(np.asarray(v, np.float32), k))
              for k, v in w.items()]
    ints = {name("one"): [1], name("zero"): [0], name("i0"): 0, name("i1"): 1, name("three"): 3}
    consts += [helper.make_node("Constant", [], [k], name=f"{k}/const",
                                value=numpy_helper.from_array(np.array(v, np.int64), k))
               for k, v in ints.items()]
    audio = "audio"
    if frame is not None:
        consts.append(helper.make_node("Constant", [], [name("frame")], name=name("frame/const"),
                                       value=numpy_helper.from_array(np.array([-1, frame], np.int64))))
        consts.append(helper.make_node("Reshape", ["audio", name("frame")], [name("rows")],
                                       name=name("rows")))
        audio = name("rows")
    n = [helper.make_node("Unsqueeze", [audio, name("one")], [name("x")], name=name("unsqueeze")),
         helper.make_node("Conv", [name("x"), name("conv.weight"), name("conv.bias")], [name("c")],
                          name=name("conv"), strides=[stride]),
         helper.make_node("Relu", [name("c")], [name("r")], name=name("relu")),
         helper.make_node("ReduceMean", [name("r")], [name("m")], name=name("pool"), axes=[2], keepdims=0),
         helper.make_node("Unsqueeze", [name("m"), name("zero")], [name("seq")], name=name("seq")),
         helper.make_node("Gather", ["state", name("i0")], [name("h0")], name=name("h0"), axis=0),
         helper.make_node("Gather", ["state", name("i1")], [name("c0")], name=name("c0"), axis=0),
         helper.make_node("Unsqueeze", [name("h0"), name("zero")], [name("h0u")], name=name("h0u")),
         helper.make_node("Unsqueeze", [name("c0"), name("zero")], [name("c0u")], name=name("c0u")),
         helper.make_node("LSTM", [name("seq"), name("W"), name("R"), "", "", name("h0u"), name("c0u")],
                          ["", name("yh"), name("yc")], name=name("lstm"), hidden_size=hidden),
         helper.make_node("Shape", [name("yh")], [name("shape")], name=name("shape")),
         helper.make_node("Size", [name("shape")], [name("rank")], name=name("rank")),
         helper.make_node("Equal", [name("rank"), name("three")], [name("batched")], name=name("batched")),
         _squeeze_if(name, hidden),
         helper.make_node("MatMul", [name("h"), name("fc.weight")], [name("logit")], name=name("fc")),
         helper.make_node("Sigmoid", [name("logit")], [name("prob")], name=name("sigmoid")),
         helper.make_node("Unsqueeze", [name("h"), name("zero")], [name("hu")], name=name("hu")),
         helper.make_node("Unsqueeze", [name("cc"), name("zero")], [name("cu")], name=name("cu")),
         helper.make_node("Concat", [name("hu"), name("cu")], [name("stateN")], name=name("concat"), axis=0)]
    return helper.make_graph(consts + n, tag, [], [_vi(name("prob"), None), _vi(name("stateN"), None)])


def _squeeze_if(name, hidden: int) -> onnx.NodeProto:
    """If(batched): the LSTM's Y_h / Y_c squeezed to [N, H] (two outputs), else passed through."""
    then = helper.make_graph(
        [helper.make_node("Squeeze", [name("yh"), name("zero")], [name("hs")], name=name("squeeze_h")),
         helper.make_node("Squeeze", [name("yc"), name("zero")], [name("cs")], name=name("squeeze_c"))],
        name("batched_then"), [], [_vi(name("hs"), None), _vi(name("cs"), None)])
    other = helper.make_graph(
        [helper.make_node("Identity", [name("yh")], [name("hi")], name=name("keep_h")),
         helper.make_node("Identity", [name("yc")], [name("ci")], name=name("keep_c"))],
        name("batched_else"), [], [_vi(name("hi"), None), _vi(name("ci"), None)])
    return helper.make_node("If", [name("batched")], [name("h"), name("cc")], name=name("if_batched"),
                            then_branch=then, else_branch=other)


def rate_switched_vad(samples: int | None = 64, c: int = 8, hidden: int = 16, seed: int = 0,
                      named: bool = False, frame_8k: int | None = None,
                      after: bool = False) -> onnx.ModelProto:
    """The VAD of the module docstring: inputs audio [N, samples] (None: any length), state [2, ?, hidden]
    (batch on axis 1, unnamed; `named`: [2, N, hidden], as torch.onnx.export's dynamic_axes name it), sr
    (int64 scalar); outputs prob [N, 1], stateN [?, ?, ?]. `frame_8k`: the 8 kHz network runs at that
    many samples only (silero-vad's: half the 16 kHz frame); `after`: prob goes through a Relu in the
    outer graph (the If is not the whole model)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Constant", [], ["rate16k"], name="rate16k",
                              value=numpy_helper.from_array(np.array(16000, np.int64), "rate16k")),
             helper.make_node("Equal", ["sr", "rate16k"], ["is16k"], name="is16k"),
             helper.make_node("If", ["is16k"], ["p" if after else "prob", "stateN"], name="rate",
                              then_branch=_vad_branch("r16k", rng, 4, c, hidden),
                              else_branch=_vad_branch("r8k", rng, 2, c, hidden, frame_8k))]
    nodes += [helper.make_node("Relu", ["p"], ["prob"], name="after")] if after else []
    return _model(nodes, [_vi("audio", ["N", samples]), _vi("state", [2, "N" if named else None, hidden]),
                          _vi("sr", [], onnx.TensorProto.INT64)],
                  [_vi("prob", ["N", 1]), _vi("stateN", [None, None, None])], [], name="rate_switched_vad")


def unbatched_spectrogram_net(frames: int | None = None, bins: int = 12, c: int = 4,
                              seed: int = 0) -> onnx.ModelProto:
    """The one-example network of the module docstring; `frames=None`: a dynamic frame count "T"."""
    rng = np.random.default_rng(seed)
    inits = [_init("axes2", np.array([2], np.int64)), _init("axes0", np.array([0], np.int64)),
             _init("axes1", np.array([1], np.int64)),
             _init("conv.weight", (rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32)),
             _init("conv.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("fc.weight", (rng.standard_normal((c, 1)) / np.sqrt(c)).astype(np.float32)),
             _init("fc.bias", np.array([0.1], np.float32))]
    nodes = [helper.make_node("Unsqueeze", ["spec", "axes2"], ["chan"], name="add_channel"),
             helper.make_node("Unsqueeze", ["chan", "axes0"], ["nhwc"], name="add_batch"),
             helper.make_node("Transpose", ["nhwc"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["conv_out"], ["back"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Squeeze", ["back", "axes0"], ["feat"], name="remove_batch"),
             helper.make_node("Elu", ["feat"], ["elu"], name="elu"),
             helper.make_node("ReduceMean", ["elu", "axes1"], ["pooled"], name="pool", keepdims=0),
             helper.make_node("MatMul", ["pooled", "fc.weight"], ["fc_mm"], name="fc"),
             helper.make_node("Add", ["fc_mm", "fc.bias"], ["logit"], name="fc_add"),
             helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid"),
             helper.make_node("Squeeze", ["prob", "axes1"], ["act"], name="squeeze")]
    t = frames if frames is not None else "T"
    return _model(nodes, [_vi("spec", [t, bins])], [_vi("act", [t])], inits, opset=18,
                  name="unbatched_spectrogram_net")


def smoothing_signal_net(channels: int = 2, length: int = 256, taps: int = 15, c: int = 4,
                         seed: int = 0) -> onnx.ModelProto:
    """A 1-D Conv net over a multichannel signal (EEG-like [N, C, L], no BatchNormalization), whose first
    layer averages `taps` samples as a band-pass / envelope filter does::

        signal [N, C, L] ─ conv1 (taps, all-positive kernels, same) ─ Relu ─ conv2 (3) ─ Relu ─► out [N, c, L]

    Its response to a signal correlated along L is ~taps times a sample's scale, to white noise
    ~sqrt(taps) times."""
    rng = np.random.default_rng(seed)
    smooth = rng.uniform(0.5, 1.5, (c, channels, taps)) / taps
    inits = [_init("conv1.weight", smooth.astype(np.float32)),
             _init("conv1.bias", rng.normal(0, 0.05, c).astype(np.float32)),
             _init("conv2.weight", (rng.standard_normal((c, c, 3)) / np.sqrt(3 * c)).astype(np.float32)),
             _init("conv2.bias", rng.normal(0, 0.05, c).astype(np.float32))]
    half = taps // 2
    nodes = [helper.make_node("Conv", ["signal", "conv1.weight", "conv1.bias"], ["c1"], name="conv1",
                              pads=[half, half]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2",
                              pads=[1, 1]),
             helper.make_node("Relu", ["c2"], ["out"], name="relu2")]
    return _model(nodes, [_vi("signal", ["N", channels, length])], [_vi("out", ["N", c, length])], inits,
                  name="smoothing_signal_net")


def spectrogram_max_head(frames: int = 16, bins: int = 12, c: int = 8, hidden: int = 16, seed: int = 0
                         ) -> onnx.ModelProto:
    """The score network of the module docstring; input spec [N, frames, bins], output score [N, 1]."""
    rng = np.random.default_rng(seed)
    inits = [_init("axes3", np.array([3], np.int64)),
             _init("conv.weight", (rng.standard_normal((c, 1, 3, 3)) / 3).astype(np.float32)),
             _init("conv.bias", rng.normal(0, 0.1, c).astype(np.float32)),
             _init("fc1.weight", (rng.standard_normal((c, hidden)) / np.sqrt(c)).astype(np.float32)),
             _init("fc1.bias", rng.normal(0, 0.1, hidden).astype(np.float32)),
             _init("fc2.weight", (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32)),
             _init("fc2.bias", np.array([0.5], np.float32))]
    nodes = [helper.make_node("Unsqueeze", ["spec", "axes3"], ["nhwc"], name="add_channel"),
             helper.make_node("Transpose", ["nhwc"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv.weight", "conv.bias"], ["conv_out"], name="conv",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv_out"], ["relu_out"], name="relu"),
             helper.make_node("Transpose", ["relu_out"], ["back"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMax", ["back"], ["pooled"], name="global_max", axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["pooled", "fc1.weight"], ["fc1_mm"], name="fc1"),
             helper.make_node("Add", ["fc1_mm", "fc1.bias"], ["fc1_out"], name="fc1_add"),
             helper.make_node("Relu", ["fc1_out"], ["fc1_relu"], name="fc1_relu"),
             helper.make_node("MatMul", ["fc1_relu", "fc2.weight"], ["fc2_mm"], name="fc2"),
             helper.make_node("Add", ["fc2_mm", "fc2.bias"], ["score"], name="fc2_add")]
    return _model(nodes, [_vi("spec", ["N", frames, bins])], [_vi("score", ["N", 1])], inits,
                  name="spectrogram_max_head")
