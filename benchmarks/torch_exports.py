"""PyTorch exports of Hugging Face architectures (legacy TorchScript and dynamo exporters): does the default
compile work with no data and no flag, what does it cost, how close is its output to FP32's.

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install "torch==2.13.0+cpu" transformers onnxscript
    python benchmarks/torch_exports.py --torch-python /tmp/tvenv/bin/python [--models bert,gpt2_past,...]

Each architecture is built from a small config with random weights (torch.manual_seed(0); nothing is
downloaded) and exported in the torch venv by one or both exporters (opset 17 legacy, 18 dynamo; batch and
sequence dynamic where the exporter keeps them). Then here: `dfq-onnx -q quantize M -o OUT --no-cache`
(default: W8A8, ort-cpu; with `--avg-weight-bits 6` for the `@6` rows) under `/usr/bin/time -v`, and ORT
`quantize_dynamic` (QInt8) beside. Weights are random, so there is no task metric: the figure is the output's
cosine to FP32 (per row of the last axis, mean / min) on 16 inputs the architecture reads -- token ids
drawn from the vocabulary, N(0, 1) images / audio / encoder states, and for decoders with a key/value
cache the caches the FP32 model computes for 23 tokens before a one-token step. `compile` says what the
tool needed: "ok" with no flag, or the error it printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, markdown_table  # noqa: E402
from ocr import timed  # noqa: E402

EXPORT = r'''
import sys, torch, transformers as T
from transformers.cache_utils import DynamicCache
name, dynamo, out = sys.argv[1], sys.argv[2] == "dyn", sys.argv[3]
torch.manual_seed(0)
ones = lambda n: torch.ones(1, n, dtype=torch.long)
tok = lambda: {"input_ids": torch.randint(5, 900, (1, 16)), "attention_mask": ones(16)}
image = lambda: {"pixel_values": torch.randn(1, 3, 64, 64)}
small = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)
outs = ["y"]
if name == "bert":
    m, x = T.BertForSequenceClassification(T.BertConfig(vocab_size=1000, num_labels=3, **small)), tok()
elif name == "distilbert":
    cfg = T.DistilBertConfig(vocab_size=1000, dim=128, n_layers=2, n_heads=4, hidden_dim=512)
    m, x = T.DistilBertModel(cfg), tok()
elif name == "deberta":
    cfg = T.DebertaV2Config(vocab_size=1000, num_labels=3, **small)
    m, x = T.DebertaV2ForSequenceClassification(cfg), tok()
elif name == "t5enc":
    cfg = T.T5Config(vocab_size=1000, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4)
    m, x = T.T5EncoderModel(cfg), tok()
elif name == "gpt2":
    cfg = T.GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=4, use_cache=False)
    m, x = T.GPT2LMHeadModel(cfg), {"input_ids": torch.randint(5, 900, (1, 16))}
elif name == "vit":
    cfg = T.ViTConfig(image_size=64, patch_size=8, num_labels=10, **small)
    m, x = T.ViTForImageClassification(cfg), image()
elif name == "convnext":
    cfg = T.ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_labels=10, image_size=64)
    m, x = T.ConvNextForImageClassification(cfg), image()
elif name == "wav2vec2":
    cfg = T.Wav2Vec2Config(conv_dim=(64,) * 7, **small)
    m, x = T.Wav2Vec2Model(cfg), {"input_values": torch.randn(1, 16000)}
elif name == "whisper_enc":
    cfg = T.WhisperConfig(d_model=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=512,
                          num_labels=5)
    m, x = T.WhisperForAudioClassification(cfg), {"input_features": torch.randn(1, 80, 3000)}
elif name == "gpt2_past":                 # decoder with past key/values in, presents out
    cfg = T.GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=4, use_cache=True)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = T.GPT2LMHeadModel(cfg)

        def forward(self, input_ids, attention_mask, k0, v0, k1, v1):
            cache = DynamicCache(config=cfg)
            cache.update(k0, v0, 0)
            cache.update(k1, v1, 1)
            o = self.lm(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                        use_cache=True)
            return (o.logits, *[t for layer in o.past_key_values.layers for t in (layer.keys, layer.values)])
    m, x = M(), {"input_ids": torch.randint(5, 900, (1, 1)), "attention_mask": ones(8)}
    kv = [f"past_key_values.{i}.{k}" for i in (0, 1) for k in ("key", "value")]
    x.update({k: torch.randn(1, 4, 7, 32) for k in kv})
    outs = ["logits"] + [k.replace("past_key_values", "present") for k in kv]
elif name == "whisper_dec":               # an encoder-decoder's decoder: ids + the encoder's states
    cfg = T.WhisperConfig(vocab_size=1000, d_model=128, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512,
                          decoder_ffn_dim=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                          decoder_start_token_id=1)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = T.WhisperForConditionalGeneration(cfg)

        def forward(self, input_ids, encoder_hidden_states):
            h = self.w.model.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states,
                                     use_cache=False)
            return self.w.proj_out(h.last_hidden_state)
    m = M()
    x = {"input_ids": torch.randint(5, 900, (1, 8)), "encoder_hidden_states": torch.randn(1, 1500, 128)}
else:
    raise SystemExit(f"unknown model {name}")
m = m.eval()
seq = lambda k, v: v.dtype == torch.long and not (name == "gpt2_past" and k == "input_ids")
if dynamo:
    B, P = torch.export.Dim("batch", max=64), torch.export.Dim("past", max=512)
    dims = {}
    for k, v in x.items():
        d = {0: B}
        if seq(k, v):
            d[1] = P + 1 if name == "gpt2_past" else torch.export.Dim("seq", max=448)
        if k.startswith("past_key_values"):
            d[2] = P
        dims[k] = d
    torch.onnx.export(m, tuple(x.values()), out, dynamo=True, external_data=False, input_names=list(x),
                      output_names=outs, dynamic_shapes=tuple(dims.values()))
else:
    axes = {k: {0: "batch", **({1: "seq"} if seq(k, v) else {}),
                **({2: "past"} if k.startswith("past") else {})} for k, v in x.items()}
    torch.onnx.export(m, tuple(x.values()), out, dynamo=False, input_names=list(x), output_names=outs,
                      dynamic_axes=axes, opset_version=17)
'''

MODELS = ("bert:leg,dyn", "distilbert:leg,dyn", "deberta:leg,dyn", "t5enc:leg", "gpt2:dyn",
          "gpt2_past:leg,dyn", "vit:leg", "convnext:leg", "wav2vec2:leg", "whisper_enc:leg",
          "whisper_dec:dyn", "whisper_dec@6:dyn")


def feeds_for(path: Path, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs the architecture reads (module docstring); caches computed by the FP32 model itself."""
    rng = np.random.default_rng(seed)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = sess.get_inputs()
    if any(i.name.startswith("past_key_values") for i in ins):
        return _with_past(sess, rng, n)
    out = {}
    for i in ins:
        dims = [d if isinstance(d, int) else None for d in i.shape]
        if i.type == "tensor(int64)":
            seq = dims[1] or 16
            out[i.name] = (np.ones((n, seq), np.int64) if "mask" in i.name
                           else rng.integers(5, 900, (n, seq)).astype(np.int64))
        else:
            out[i.name] = rng.standard_normal([n] + [d or 16000 for d in dims[1:]]).astype(np.float32)
    return out


def _with_past(sess, rng, n: int, before: int = 23) -> dict[str, np.ndarray]:
    ids = rng.integers(5, 900, (n, before + 1)).astype(np.int64)
    past = {i.name: np.zeros((n, 4, 0, 32), np.float32) for i in sess.get_inputs()
            if i.name.startswith("past")}
    for t in range(before):                      # one token per call: either exporter's graph takes it
        feeds = {"input_ids": ids[:, t:t + 1], "attention_mask": np.ones((n, t + 1), np.int64), **past}
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        past = {k: outs[k.replace("past_key_values", "present")] for k in past}
    return {"input_ids": ids[:, -1:], "attention_mask": np.ones((n, before + 1), np.int64), **past}


def cosine(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    a = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    b = got.reshape(-1, ref.shape[-1]).astype(np.float64)
    c = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(c.mean()), float(c.min())


def first_output(path: Path, feeds: dict) -> np.ndarray:
    """The first output on every row of `feeds`, in calls of the graph's fixed batch when it has one."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fixed = sess.get_inputs()[0].shape[0]
    n = len(next(iter(feeds.values())))
    step = fixed if isinstance(fixed, int) and fixed > 0 else n
    return np.concatenate([sess.run(None, {k: v[i:i + step] for k, v in feeds.items()})[0]
                           for i in range(0, n, step)])


def row(name: str, exporter: str, torch_python: str, work: Path) -> list:
    base, _, budget = name.partition("@")
    src = work / f"{base}_{exporter}.onnx"
    if not src.exists():
        proc = subprocess.run([torch_python, "-c", EXPORT, base, exporter, str(src)], capture_output=True,
                              text=True)
        if proc.returncode:
            return [name, exporter, "export fails: " + proc.stderr.strip().splitlines()[-1][:120], "", "", ""]
    out = work / f"{name}_{exporter}.dfq.onnx"
    cmd = [str(Path(sys.executable).parent / "dfq-onnx"), "-q", "quantize", str(src), "-o", str(out),
           "--no-cache"]
    cmd += ["--avg-weight-bits", budget] if budget else []
    try:
        cost = timed(cmd)
    except RuntimeError as exc:
        err = [ln for ln in str(exc).splitlines() if "error" in ln]
        return [name, exporter, (err[-1] if err else str(exc))[:160], "", "", ""]
    feeds = feeds_for(src, 16)
    ref = first_output(src, feeds)
    dfq = cosine(ref, first_output(out, feeds))
    ortq = work / f"{base}_{exporter}.ortdyn.onnx"
    try:
        quantize_dynamic(str(src), str(ortq), weight_type=QuantType.QInt8)
        ortc = "{:.4f} / {:.4f}".format(*cosine(ref, first_output(ortq, feeds)))
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a row, not a crash
        ortc = f"fails ({type(exc).__name__})"
    return [name, exporter, "ok", f"{cost['wall_s']:.0f} s / {cost['rss_mb']:.0f} MB (load {cost['load']})",
            f"{dfq[0]:.4f} / {dfq[1]:.4f}", ortc]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch-python", required=True,
                    help="python of a venv with torch, transformers, onnxscript")
    ap.add_argument("--models", default=",".join(m.split(":")[0] for m in MODELS))
    ap.add_argument("--work", default=None, help="keep exports and outputs here (default: a temp dir)")
    args = ap.parse_args()
    wanted = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [row(name, exp, args.torch_python, work) for spec in MODELS
                for name, exps in [spec.split(":")] if name in wanted for exp in exps.split(",")]
    print(machine_info())
    print(markdown_table(["model", "exporter", "compile", "wall / peak RSS", "dfq cos to FP32 mean / min",
                          "ORT quantize_dynamic cos mean / min"], rows))


if __name__ == "__main__":
    main()
