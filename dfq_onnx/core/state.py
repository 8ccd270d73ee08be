"""The compile state carried through the pipeline, and the typed results analysis passes leave on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.report import Report
from dfq_onnx.core.target import FLOAT_BITS, TargetProfile  # noqa: F401 (FLOAT_BITS: plan values)


@dataclass(frozen=True)
class BNStats:
    """Statistics of a BatchNormalization folded into `layer` (per output channel)."""

    layer: str
    tensor: str           # the tensor the BN produced (now produced by `layer`)
    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    eps: float


@dataclass(frozen=True)
class QuantGroup:
    """Tensors and layers that must share a bit-width: weighted layers and the activations they read."""

    id: str
    layers: tuple[str, ...]          # weighted layers (their weights take the group's weight bits)
    ops: tuple[str, ...]             # every quantized node of the group
    activations: tuple[str, ...]     # activation tensors read by the group (they take its act bits)
    params: int                      # weight parameter count


@dataclass(frozen=True)
class ActGroup:
    """Activation tensors sharing one encoding (a class of `QuantSpec.encoding_of`): one precision decision.

    `readers` / `writers` are the quantized nodes reading / writing a member (a weighted layer whose
    absorbed Relu writes a member counts as its writer); `elements` is the per-sample element count of
    the members (0 when a shape is unknown); `choices` the precisions the target allows for it.
    """

    id: str
    rep: str
    tensors: tuple[str, ...]
    readers: tuple[str, ...]
    writers: tuple[str, ...]
    elements: int
    choices: tuple[int, ...]


@dataclass(frozen=True)
class BitPlan:
    """Group id -> (weight bits, activation bits); `acts`: activation group id -> its own precision
    (FLOAT_BITS = float), overriding the activation bits of the group that reads it."""

    bits: dict[str, tuple[int, int]]
    acts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def uniform(cls, groups, w_bits: int, a_bits: int) -> "BitPlan":
        return cls({g.id: (w_bits, a_bits) for g in groups})


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    source: str


@dataclass
class CompileState:
    graph: gs.Graph | None
    target: TargetProfile
    options: QuantizeOptions
    report: Report
    model_hash: str = ""
    source: object | None = None      # the loaded onnx.ModelProto until Normalize imports it
    declared: object | None = None    # Normalize: the source's interface and metadata, without weights
    length_inputs: list = field(default_factory=list)   # Normalize: synth/lengths.py, on the declared dims
    source_opset: int = 0
    bn_stats: dict[str, BNStats] = field(default_factory=dict)
    bn_kept: dict[str, BNStats] = field(default_factory=dict)   # BNs left in the graph (fold_bn.py), by BN
    calib: dict[str, np.ndarray] | None = None
    ranges: dict[str, Range] = field(default_factory=dict)
    spec: "QuantSpec | None" = None
    groups: list[QuantGroup] = field(default_factory=list)
    act_groups: list[ActGroup] = field(default_factory=list)   # FindQuantGroups: one per encoding class
    plan: BitPlan | None = None
    recurrent: dict = field(default_factory=dict)   # LSTM -> its form candidate (passes/choose_recurrent)
    synthetic: object | None = None    # SynthesisResult of the Synthesize pass (samples, labels, losses)
    sensitivity: object | None = None  # SensitivityTable of the ScoreSensitivity pass
    meter: object | None = None        # PlanMeter of ScoreSensitivity: measures whole plans on the probe
    pareto: list | None = None         # Pareto points of AllocateBits (--pareto), allocation/pareto.py
    forward_passes: int = 0
    model_out: object | None = None   # the emitted onnx.ModelProto
    weight_gain: dict[str, np.ndarray] = field(default_factory=dict)  # DF-MPC: layer -> c (see passes/dfmpc)
    input_moments: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> E[x_j^2] of its input
    input_means: dict[str, tuple] = field(default_factory=dict)   # layer -> (E[x_j], Var[x_j]) measured
    tail: object | None = None         # core.tail.Tail set aside by DetachTail until AttachTail
    batch_first: list = field(default_factory=list)   # core.tail.BatchFirst: outputs read batch-first
    batch_axis1: list = field(default_factory=list)       # inputs compiled batch-major (core/batch_axis)
    output_batch_axes: dict = field(default_factory=dict)  # outputs' (batch axis, rank) beside them
    unbatched: list = field(default_factory=list)      # inputs of a model with no batch axis (core/unbatched)
    low_precision_io: dict = field(default_factory=dict)   # float16 graph inputs / outputs (core/float16)


@dataclass(frozen=True)
class LayerSpec:
    """A quantized node: its role on the target and, for weighted ops, the weight/bias tensors."""

    node: str
    op: str
    role: str
    weight: str | None = None
    bias: str | None = None
    axis: int | None = None       # per-channel axis of the weight
    weight_index: int = 1         # the node input holding the weight (0: a Gather's table)
    form: bool = False            # encoded by the target's [forms] (core/candidates.py), not static Q/DQ


@dataclass(frozen=True)
class QuantSpec:
    """Where Q/DQ goes: quantized nodes, activation tensors, shared encodings, absorbed activations.

    `act_tensors` are names in the FP32 graph (before absorbed Relu/Clip nodes are removed);
    `encoding_of[t]` is the representative tensor whose encoding `t` shares;
    `absorbed[node]` = the Relu/Clip node removed at emit time, mapping to the tensor it reads.
    """

    layers: dict[str, LayerSpec]
    act_tensors: tuple[str, ...]
    encoding_of: dict[str, str]
    absorbed: dict[str, str]
    const_inputs: tuple[tuple[str, str], ...]   # (node, constant float input) of elementwise ops
