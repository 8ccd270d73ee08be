"""`dfq-onnx demo`: the bundled digits CNN quantized data-free stays within 2 points of FP32."""

from __future__ import annotations

import re

from dfq_onnx.cli import main


def test_demo_table(tmp_path, capsys):
    assert main(["-q", "demo", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = {m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^(FP32|dfq-onnx \(data-free\))\s+([0-9.]+)\s", out, re.MULTILINE)}
    assert set(rows) == {"FP32", "dfq-onnx (data-free)"}, out
    assert rows["FP32"] > 90.0                         # the model is trained, not random
    assert abs(rows["dfq-onnx (data-free)"] - rows["FP32"]) <= 2.0, out
    written = {p.name for p in tmp_path.iterdir()}
    assert {"digits_fp32.onnx", "digits_quantized.onnx", "report.json"} <= written
