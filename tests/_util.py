"""Helpers for the tests: ORT runs on in-memory models, inputs, and partial pipelines on a CompileState."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort

from dfq_onnx.core import ir
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.pass_base import run_passes
from dfq_onnx.core.report import Report
from dfq_onnx.core.state import CompileState
from dfq_onnx.core.target import load_target


def session(model: onnx.ModelProto, optimized_path: str | None = None,
            level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = level
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def normal_feeds(model: onnx.ModelProto, n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """N(0, 1) float32 samples for every float input (batch n; dynamic dims must not occur elsewhere)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else n for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def padded_token_feeds(n: int = 64, seq: int = 16, vocab: int = 512, seed: int = 1) -> dict[str, np.ndarray]:
    """input_ids and an attention_mask with every other row padded after 10 tokens."""
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), np.int64)
    mask[::2, 10:] = 0
    return {"input_ids": rng.integers(1, vocab, (n, seq)), "attention_mask": mask}


def ids_layout(model: onnx.ModelProto) -> tuple:
    """(input, vocabulary rows, table, length) of the token layout of `model`'s input 'ids'."""
    from dfq_onnx.synth.tokens import token_layout

    layout = token_layout(ir.to_graph(model))
    ids = layout.of("ids")
    return ids.name, ids.rows, layout.table, layout.length


def token_agreement(model: onnx.ModelProto, vocab: int, seq: int, axis: int) -> float:
    """Compile a one-input token model with no data (checked, samples from the token objective) and return
    how often its argmax over `axis` agrees with the FP32 model's on 64 random id rows."""
    import dfq_onnx

    out, report = dfq_onnx.quantize(model, progress=False, use_cache=False, latency_check=False)
    onnx.checker.check_model(out, full_check=True)
    assert report.notes["synthesis"]["objective"] == "tokens"
    ids = np.random.default_rng(1).integers(0, vocab, (64, seq)).astype(np.int32)
    want, got = run(model, {"ids": ids})[0], run(out, {"ids": ids})[0]
    return float(np.mean(want.argmax(axis) == got.argmax(axis)))


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf for identical outputs)."""
    noise = np.sum((ref - got) ** 2, dtype=np.float64)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2, dtype=np.float64) / noise))


def openvino_output(model: onnx.ModelProto, feeds: dict[str, np.ndarray], f32: bool = True) -> np.ndarray:
    """The first output of `model` compiled by OpenVINO on CPU (at f32 inference precision: its bf16 float
    parts on some CPUs are OpenVINO's own difference, not the model's); callers importorskip openvino."""
    import openvino as ov

    core = ov.Core()
    weights = ov.Tensor(np.empty(0, np.uint8))          # the weights are inside the serialized model
    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else {}
    compiled = core.compile_model(core.read_model(model.SerializeToString(), weights), "CPU", config)
    return np.asarray(compiled(feeds)[compiled.outputs[0]])


def model_upto(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of `model` whose only output is the tensor `name`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out


def compile_state(model: onnx.ModelProto, passes, target: str = "ort-cpu", **options) -> CompileState:
    """Run `passes` on a fresh CompileState for `model` (progress bars off)."""
    options.setdefault("progress", False)
    state = CompileState(graph=None, target=load_target(target), options=QuantizeOptions(**options),
                         report=Report(), source=ir.load_model(model))
    return run_passes(passes, state)


def state_model(state: CompileState) -> onnx.ModelProto:
    """The state's graph as a runnable model (graph copied, state untouched)."""
    graph = ir.copy_graph(state.graph)
    return ir.to_model(graph, ir_version=ir.min_ir_version(graph.opset))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def nodes_by_op(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


def point_external_data_to(path, location: str) -> None:
    """Rewrite the external-data location recorded in the model file at `path`."""
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


def static_matmul_target(tmp_path, allowance: float | None = None) -> str:
    """ort-cpu with statically quantized MatMuls (its [forms] removed: dynamic int8 / weight-only MatMuls
    have no activation quantizer), for tests of static Q/DQ on transformer blocks; `allowance` replaces
    its [activation] cost_allowance."""
    text = open(load_target("ort-cpu").source).read()
    if allowance is not None:
        text = re.sub(r"(?m)^cost_allowance = .*$", f"cost_allowance = {allowance}", text)
    path = tmp_path / "ort_cpu_static_matmul.toml"
    path.write_text(text[:text.index("[forms]")] + text[text.index("[latency]"):])
    return str(path)


def stub_timings(ratios_per_call):
    """A stand-in for `backends.integer_pays.measure` returning the given integer / FP32 ratios per call
    (one list per call, in order); `calls` records each timed model's QuantizeLinear count."""
    from dfq_onnx.backends import integer_pays
    calls = []

    def measure(runtime, fp32_model, int_model, **_):
        ratios = ratios_per_call[len(calls)]
        calls.append(len(nodes_by_op(int_model, "QuantizeLinear")))
        return {"fp32_ms": 1.0, "int_ms": float(np.median(ratios)), "ratios": list(ratios), "calls": 3,
                "rounds": len(ratios), "ratio": float(np.median(ratios)),
                "integer_slower": integer_pays.slower(ratios)}
    return measure, calls
