"""The HTML report: self-contained (no external URL), well-formed, with its sections and plots; and the
JSON report carries the per-layer table, sensitivity matrix and FP32-vs-quantized comparison."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import onnx
from dfq_onnx.models import builders

from dfq_onnx.cli import main
from dfq_onnx.report.html import render

MIXED = ["--avg-weight-bits", "5", "--act-bits", "8", "--synth-samples", "8", "--synth-steps", "2",
         "--no-cache"]
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Collects tags, checks nesting and every URL-bearing attribute."""

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.urls, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href", "action", "srcset", "poster") and v]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def _parse(text: str) -> _Checker:
    p = _Checker()
    p.feed(text)
    p.close()
    return p


def _self_contained(text: str, parsed: _Checker) -> None:
    assert parsed.errors == [] and parsed.stack == []
    assert all(u.startswith("data:image/png;base64,") for u in parsed.urls), parsed.urls
    assert not re.search(r"url\(|@import|<script|<link", text, re.I)
    for u in parsed.urls:
        assert base64.b64decode(u.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_report_of_a_mixed_plan(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    onnx.save(builders.with_data_bn_stats(builders.conv_bn_relu_residual()), src)
    html_path, json_path = tmp_path / "r.html", tmp_path / "r.json"
    assert main(["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--report", str(html_path),
                 *MIXED]) == 0
    text = html_path.read_text()
    parsed = _parse(text)
    _self_contained(text, parsed)
    for section in ("Summary", "FP32 vs quantized outputs", "Bits per layer", "Sensitivity", "Layers",
                    "Passes", "Warnings and skips"):
        assert f"<h2>{section}</h2>" in text
    assert "Pareto curve" not in text                         # no curve on the state: no section
    assert parsed.tags.count("img") == 3                      # bits, sensitivity heat map, pass timings
    for node in ("conv1", "conv2", "fc"):
        assert f">{node}<" in text
    # the same run as JSON: per-layer sensitivity and predicted contribution, comparison, matrix
    assert main(["-q", "quantize", str(src), "-o", str(tmp_path / "q2.onnx"), "--report", str(json_path),
                 *MIXED]) == 0
    data = json.loads(json_path.read_text())
    layer = data["layers"][0]
    assert {"shape", "params", "weight_bits", "sensitivity", "predicted_loss", "group"} <= set(layer)
    assert layer["predicted_loss"] == layer["sensitivity"][f"W{layer['weight_bits']}A{layer['act_bits']}"]
    assert len(data["sensitivity"]["groups"]) == len(data["sensitivity"]["loss"]) >= 3
    out = data["comparison"]["outputs"][0]
    assert data["comparison"]["source"] == "synthetic" and out["output"] == "output" and out["sqnr_db"] > 10


def test_pareto_section_renders_when_points_exist():
    report = {"model": {"name": "m"}, "layers": [], "passes": [],
              "pareto": [{"budget": 4.0, "predicted": 0.3, "measured": None, "bits": {"g0": [4, 8]}},
                         {"budget": {"avg_weight_bits": 6.0}, "predicted": 0.1, "measured": 0.12,
                          "bits": None}]}
    text = render(report)
    parsed = _parse(text)
    _self_contained(text, parsed)
    assert "<h2>Pareto curve</h2>" in text and parsed.tags.count("img") == 1
    section = text.split("<h2>Pareto curve</h2>")[1].split("<h2>")[0]
    assert section.count("<tr>") == 3                          # header + two points
    assert ">6<" in section and ">0.12<" in section           # a budget given as a dict is read too


def test_analytic_report_compares_on_noise(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu(), src)
    assert main(["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--calib", "analytic",
                 "--report", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["forward_passes"] == 0 and data["comparison"]["source"] == "noise"
    assert data["comparison"]["forward_passes"] == 2 and data["sensitivity"] is None


def test_corrupt_cache_entries_are_warnings_in_the_report(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.with_data_bn_stats(builders.conv_bn_relu_residual()), src)
    argv = ["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--report", str(tmp_path / "r.json"),
            "--cache-dir", str(tmp_path / "cache"), *MIXED[:-1]]
    assert main(argv) == 0
    first = (tmp_path / "q.onnx").read_bytes()
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(entries) == 2                                   # synthetic samples, sensitivity table
    for p in entries:
        p.write_bytes(b"not a cache entry")
    assert main(argv) == 0
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert len(warnings) == 2 and all("ignoring unreadable" in w for w in warnings)
    assert (tmp_path / "q.onnx").read_bytes() == first         # recomputed, same result


def test_pareto_sweep_appears_in_the_html_report(tmp_path):
    import dfq_onnx

    curve, html = tmp_path / "curve.json", tmp_path / "r.html"
    dfq_onnx.quantize(builders.conv_bn_relu_residual(), calib="noise", pareto=str(curve), progress=False,
                      cache_dir=str(tmp_path / "c"), score_bits=(2, 4, 8), synth_samples=16, synth_steps=4,
                      report_path=html)
    points = json.loads(curve.read_text())["points"]
    text = html.read_text()
    _self_contained(text, _parse(text))
    section = text.split("<h2>Pareto curve</h2>")[1].split("<h2>")[0]
    assert section.count("<tr>") == len(points) + 1 and section.count("<img") == 1
    assert "avg weight bits" in section and "measured" in section


def test_renders_in_headless_chromium(tmp_path):
    # A real browser, networking pointed at a dead proxy: a page needing anything external would break.
    import shutil
    import subprocess

    import numpy as np
    import pytest
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium (apt-get install -y chromium)")
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu_residual(), src)
    html = tmp_path / "r.html"
    assert main(["-q", "quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--report", str(html)]) == 0
    png = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
           "--proxy-server=127.0.0.1:9", "--window-size=1000,1400", f"--screenshot={png}", html.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape == (1400, 1000)
    assert (pixels < 100).mean() > 0.005 and (pixels > 240).mean() > 0.5    # text and plots on white
