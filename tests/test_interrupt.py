"""Interrupt safety: Ctrl-C during any pass exits 130 with one line and leaves no output, report or
temporary file; cache entries are complete files (written to a temporary name, then renamed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from dfq_onnx.models import builders

from dfq_onnx import pipeline
from dfq_onnx.cli import main
from dfq_onnx.core import cache
from dfq_onnx.core.options import QuantizeOptions
from dfq_onnx.core.target import load_target
from dfq_onnx.sensitivity.table import load_json

MIXED = ["--avg-weight-bits", "5", "--synth-samples", "8", "--synth-steps", "2"]
PASSES = [type(p) for p in pipeline.default_pipeline(load_target("ort-cpu"),
                                                     QuantizeOptions(avg_weight_bits=5.0, progress=False))]


def _cache_entries_complete(root):
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name], files        # no partial temporary file
    for p in files:
        ok = cache.load_npz(p) is not None if p.suffix == ".npz" else load_json(p) is not None
        assert ok, p
    return files


@pytest.mark.parametrize("cls", PASSES, ids=[c.__name__ for c in PASSES])
def test_ctrl_c_in_any_pass_leaves_nothing(cls, tmp_path, capsys, monkeypatch):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu_residual(), src)

    def interrupted(self, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "run", interrupted)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc = main(["-q", "quantize", str(src), "-o", str(out_dir / "q.onnx"), "--report", str(out_dir / "r.html"),
               "--cache-dir", str(tmp_path / "cache"), *MIXED])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().splitlines() == ["dfq-onnx: interrupted; no output written"]
    assert list(out_dir.iterdir()) == []
    if (tmp_path / "cache").exists():
        _cache_entries_complete(tmp_path / "cache")


def test_sigint_to_a_running_process(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(builders.conv_bn_relu_residual(c=16, hw=16), src)
    out_dir, cache_dir = tmp_path / "out", tmp_path / "cache"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "dfq_onnx.cli", "quantize", str(src), "-o", str(out_dir / "q.onnx"),
           "--report", str(out_dir / "r.json"), "--cache-dir", str(cache_dir), "--avg-weight-bits", "5",
           "--synth-samples", "32", "--synth-steps", "400"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # a shell's background job (`pytest &`) starts with SIGINT ignored, and a child inherits that:
    # the default disposition is restored so the CLI sees Ctrl-C as a user's terminal sends it
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:           # the pass log: interrupt once FindQuantGroups is done
        seen.append(line)
        if line.startswith("FindQuantGroups"):
            break
    time.sleep(1.0)                     # inside Synthesize (400 steps take far longer)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=60)
    assert rc == 130, "".join(seen) + rest
    assert "interrupted; no output written" in rest and "Traceback" not in rest
    assert list(out_dir.iterdir()) == []
    if cache_dir.exists():
        _cache_entries_complete(cache_dir)


def test_cache_write_interrupted_mid_file_leaves_no_entry(tmp_path, monkeypatch):
    real = np.savez

    def savez_then_interrupt(fh, **arrays):
        real(fh, **arrays)
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_then_interrupt)
    path = tmp_path / "synthetic" / "k.npz"
    with pytest.raises(KeyboardInterrupt):
        cache.save_npz_atomic(path, {"x": np.ones(3)})
    assert list(path.parent.iterdir()) == []
