"""Train and export the bundled demo model ``models/demo/digits_cnn.onnx``.

Run as ``python models/train_digits.py`` (needs the dev-only dependency
``torch==2.13.0``; scikit-learn's bundled digits dataset ships with the
package, so no network access is needed).

Recipe
------
Data
    ``sklearn.datasets.load_digits``: 1797 grayscale 8x8 images, pixel values
    0..16, 10 classes. Fixed split with
    ``train_test_split(test_size=0.25, random_state=0, stratify=y)``
    -> 1347 train / 450 test.

Preprocessing (baked into ``digits_eval.npz``, NOT into the model)
    ``x = images.reshape(N, 1, 8, 8).astype(float32) / 16.0``  (-> [0, 1])
    ``x = (x - 0.5) / 0.5``                                      (-> [-1, 1])

Architecture (input ``input`` float32 [N,1,8,8], output ``logits`` [N,10])
    stem : Conv3x3(1->16, pad 1) + BN + ReLU                      -> a   [16,8,8]
    res  : Conv3x3(16->16, pad 1) + BN + ReLU, Add(a), ReLU        -> r   [16,8,8]
    pool : MaxPool 2x2 stride 2                                    -> p   [16,4,4]
    b1   : Conv1x1(16->16) + BN + ReLU                             -> [16,4,4]
    b2   : Conv3x3(16->16, pad 1) + BN + ReLU                      -> [16,4,4]
    cat  : Concat(b1, b2) on channels                              -> [32,4,4]
    head : GlobalAveragePool, Flatten, Linear(32->10) (Gemm)       -> [10]

Training
    Seeds 0 (python/numpy/torch), single CPU thread, deterministic algorithms.
    Adam(lr=3e-3, weight_decay=1e-4), cosine LR decay, batch 64, 60 epochs,
    augmentation: random integer shift of up to +/-1 pixel (zero padded in the
    preprocessed domain, i.e. the background value -1).

Export
    Legacy TorchScript exporter (``dynamo=False``), opset 17, dynamic batch
    dim, ``training=TrainingMode.PRESERVE`` on a model in eval() mode and
    ``do_constant_folding=False`` so the BatchNormalization nodes (with their
    running statistics, as a data-free quantizer needs them) are kept and NOT
    folded into the convolutions.

Achieved accuracy (450-image test split, FP32)
    torch: 98.44 % (443/450)   onnxruntime: 98.44 %  (identical predictions,
    max |logit difference| ~5e-6). ONNX file ~26 KB; reruns are byte-identical
    on the same machine (torch 2.13.0+cpu, 1 thread).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 0
EPOCHS = 60
BATCH = 64
LR = 3e-3
OPSET = 17
OUT_DIR = Path(__file__).resolve().parent / "demo"
MODEL_PATH = OUT_DIR / "digits_cnn.onnx"
EVAL_PATH = OUT_DIR / "digits_eval.npz"


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint-ish 0..16 images [N,8,8] -> float32 [N,1,8,8] in [-1, 1]."""
    x = images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    return ((x - 0.5) / 0.5).astype(np.float32)


def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(1, 16, 3)
        self.res_conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.res_bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.branch1 = conv_bn_relu(16, 16, 1)
        self.branch3 = conv_bn_relu(16, 16, 3)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        r = F.relu(self.res_bn(self.res_conv(a)))
        r = F.relu(r + a)
        p = self.pool(r)
        c = torch.cat([self.branch1(p), self.branch3(p)], dim=1)
        return self.fc(torch.flatten(self.gap(c), 1))


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer in [-1, 1] in both axes; fill with background (-1)."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8]
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def main() -> None:
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    digits = load_digits()
    x_all = preprocess(digits.images)
    y_all = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x_all, y_all, test_size=0.25, random_state=0, stratify=y_all)
    print(f"train {x_tr.shape}  test {x_te.shape}")

    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    xe = torch.from_numpy(x_te)
    gen = torch.Generator().manual_seed(SEED)

    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    steps_per_epoch = (len(xt) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS * steps_per_epoch)

    for epoch in range(EPOCHS):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for s in range(0, len(xt), BATCH):
            idx = perm[s : s + BATCH]
            xb = random_shift(xt[idx], gen)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = accuracy(model(xe).numpy(), y_te)
            print(f"epoch {epoch + 1:3d}  loss {total / len(xt):.4f}  test acc {acc:.4f}")

    model.eval()
    with torch.no_grad():
        torch_logits = model(xe).numpy()
    torch_acc = accuracy(torch_logits, y_te)
    if torch_acc < 0.96:
        raise SystemExit(f"test accuracy {torch_acc:.4f} < 0.96")

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(MODEL_PATH),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=False,
        external_data=False,
    )

    m = onnx.load(str(MODEL_PATH))
    onnx.checker.check_model(m, full_check=True)
    op_counts: dict[str, int] = {}
    for node in m.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    print("op counts:", dict(sorted(op_counts.items())))
    if op_counts.get("BatchNormalization", 0) != 4:
        raise SystemExit("BatchNormalization nodes were folded away")
    for required in ("Conv", "Relu", "Add", "Concat", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"):
        if required not in op_counts:
            raise SystemExit(f"exported graph lacks {required}")

    sess = ort.InferenceSession(str(MODEL_PATH), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"input": x_te})[0]
    ort_acc = accuracy(ort_logits, y_te)
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"FP32 test accuracy  torch {torch_acc:.4f}  onnxruntime {ort_acc:.4f}  max|dlogit| {max_diff:.2e}")
    if not np.array_equal(ort_logits.argmax(1), torch_logits.argmax(1)):
        raise SystemExit("torch and onnxruntime predictions disagree")

    np.savez_compressed(EVAL_PATH, input=x_te.astype(np.float32), labels=y_te.astype(np.int64))
    print(f"wrote {MODEL_PATH} ({MODEL_PATH.stat().st_size} bytes) and {EVAL_PATH}")


if __name__ == "__main__":
    main()
