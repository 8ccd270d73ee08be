"""Command line: `dfq-onnx quantize | inspect | targets | demo`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import DfqError, UsageError


def _shape_hint(text: str) -> tuple[str, tuple[int, ...]]:
    name, _, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"'{text}': expected NAME:D0,D1,... with positive integers")
    return name, shape


def _add_quant_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="ort-cpu", help="target profile name or .toml path (default ort-cpu)")
    p.add_argument("--weight-bits", type=int, default=None, help="uniform weight bits (target default)")
    p.add_argument("--act-bits", type=int, default=None, help="uniform activation bits (target default)")
    p.add_argument("--calib", default="analytic",
                   help="activation ranges: 'analytic' (BN statistics, default), 'noise', or FILE.npz "
                        "holding one preprocessed float32 array per model input")
    p.add_argument("--calib-samples", type=int, default=64, help="noise samples (default 64)")
    p.add_argument("--act-range", choices=("minmax", "percentile"), default="minmax")
    p.add_argument("--input-shape", type=_shape_hint, action="append", default=[], metavar="NAME:D0,D1,..",
                   help="concrete shape for an input with dynamic dims (repeatable)")
    p.add_argument("--seed", type=int, default=0)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dfq-onnx", description="Data-free mixed-precision ONNX quantizer")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars or pass log")
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="quantize a model into a QDQ ONNX model")
    q.add_argument("model")
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--report", help="write the JSON report here")
    _add_quant_options(q)
    i = sub.add_parser("inspect", help="opset, quantizable groups, BN count, unsupported ops")
    i.add_argument("model")
    i.add_argument("--target", default="ort-cpu")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument("--input-shape", type=_shape_hint, action="append", default=[], metavar="NAME:D0,..")
    sub.add_parser("targets", help="list the available target profiles")
    d = sub.add_parser("demo", help="quantize the bundled digits CNN and compare with FP32")
    d.add_argument("-o", "--output-dir", default="dfq-demo", help="where to write the models (dfq-demo/)")
    d.add_argument("--weight-bits", type=int, default=None)
    d.add_argument("--act-bits", type=int, default=None)
    return ap


def _options(args):
    from .options import QuantizeOptions

    return QuantizeOptions(weight_bits=args.weight_bits, act_bits=args.act_bits, calib=args.calib,
                           calib_samples=args.calib_samples, act_range=args.act_range,
                           input_shapes=dict(args.input_shape), seed=args.seed, progress=not args.quiet)


def _cmd_quantize(args) -> int:
    from .api import quantize

    if Path(args.output).resolve() == Path(args.model).resolve():
        raise UsageError("-o/--output must differ from the input model (the input is never modified)")
    _, report = quantize(args.model, target=args.target, options=_options(args), output=args.output,
                         report_path=args.report)
    n = len(report.layers)
    print(f"wrote {args.output}: {n} weighted layers quantized, {report.forward_passes} forward passes"
          + (f", report {args.report}" if args.report else ""))
    return 0


def _cmd_inspect(args) -> int:
    from .inspect_model import inspect
    from .options import QuantizeOptions
    from .target import load_target

    info = inspect(args.model, load_target(args.target),
                   QuantizeOptions(input_shapes=dict(args.input_shape), progress=False))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model']}: opset {info['opset']}, IR {info['ir_version']}, {info['producer']}")
    print(f"  inputs   {info['inputs']}\n  outputs  {info['outputs']}")
    print(f"  nodes    {info['nodes']}  BatchNormalization {info['batchnorm']} "
          f"(foldable {info['bn_foldable']})")
    print(f"  quantized nodes {info['quantized_nodes']}, activation quantizers "
          f"{info['activation_quantizers']}, groups {len(info['groups'])}")
    for g in info["groups"]:
        print(f"    {g['id']:>5}  params {g['params']:>9}  {', '.join(g['ops'])}")
    if info["float_ops"]:
        left = ", ".join(f"{k} x{v}" for k, v in info["float_ops"].items())
        print(f"  left in float on this target: {left}")
    for s in info["skipped"]:
        print(f"  skipped {s['node']}: {s['reason']}")
    return 0


def _cmd_targets(args) -> int:
    from .target import builtin_targets, load_target

    for name in builtin_targets():
        t = load_target(name)
        pairs = " ".join(f"W{w}A{a}" for w, a in t.pairs)
        print(f"{name:12s} {t.description}\n{'':12s} legal: {pairs}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    print(run_demo(Path(args.output_dir), weight_bits=args.weight_bits, act_bits=args.act_bits,
                   progress=not args.quiet))
    return 0


COMMANDS = {"quantize": _cmd_quantize, "inspect": _cmd_inspect, "targets": _cmd_targets, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except DfqError as exc:
        if args.debug:
            raise
        print(f"dfq-onnx: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("dfq-onnx: interrupted; no output written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
