"""The compile report as one self-contained HTML file (`--report out.html`).

Everything is inline: CSS in a <style> element, plots rendered with matplotlib's Agg backend and embedded
as base64 PNG data URIs; no script, font or stylesheet is fetched from anywhere. Input is the report's
JSON dict (`Report.to_dict()`), so an HTML file can also be rendered later from a saved JSON report.

    summary | FP32 vs quantized | bits per layer (plot) | sensitivity heat map | activation precision
    (outlier groups, their damage and choice) | Pareto curve | per-layer table | activations | passes
    (timings, forward passes) | warnings and skips
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2330;
max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea}
h3{font-size:15px;margin:20px 0 6px}
.sub{color:#5a6478;font-size:13px}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{background:#f3f6fa;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:19px}.card span{font-size:12px;color:#5a6478}
table{border-collapse:collapse;font-size:12.5px;width:100%}th,td{padding:3px 7px;text-align:right;
border-bottom:1px solid #edf0f4}th{background:#f3f6fa;position:sticky;top:0}td.l,th.l{text-align:left}
.w{color:#8a4b00}.bad{color:#b3261e}img{max-width:100%;border:1px solid #edf0f4;margin:6px 0}
details summary{cursor:pointer;color:#34507a}code{font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v == 0:
            return "0"          # not "-0"
        return f"{v:.{digits}g}"
    return _e(v)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(headers))
    cls = ["l" if i < left else "" for i in range(len(headers))]
    cells = ("".join(f'<td class="{cls[i]}">{c}</td>' for i, c in enumerate(r)) for r in rows)
    body = "".join(f"<tr>{c}</tr>" for c in cells)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _summary(r: dict) -> str:
    m, layers = r.get("model", {}), r.get("layers", [])
    params = sum(int(x.get("params") or 0) for x in layers)
    bits = sum(int(x.get("params") or 0) * int(x.get("weight_bits") or 0) for x in layers)
    avg = bits / params if params else 0
    cards = [("weighted layers", len(layers)), ("parameters", f"{params:,}"),
             ("avg weight bits", f"{avg:.2f}"),
             ("forward passes", r.get("forward_passes", 0)), ("warnings", len(r.get("warnings") or [])),
             *([("nodes", f"{m.get('nodes_in', '-')} → {m.get('nodes', '-')}"),
                ("opset", f"{m.get('opset_in', '-')} → {m.get('opset', '-')}")] if "nodes" in m else [])]
    opts = m.get("options") or {}
    shown = {k: v for k, v in sorted(opts.items()) if v not in (None, {}, [], ())}
    return ('<div class="cards">' + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
                                           for k, v in cards) + "</div>"
            + f'<details><summary>options</summary><code>{_e(shown)}</code></details>')


def _comparison(r: dict) -> str:
    c = r.get("comparison")
    if not c or not c.get("outputs"):
        return "<p class='sub'>no comparison (no samples could be formed)</p>" if c else ""
    rows = [[_e(o["output"]), _e(o["shape"]), "identical" if o["sqnr_db"] is None else _num(o["sqnr_db"]),
             _num(o["max_abs_error"]), _num(o.get("top1_agreement"))] for o in c["outputs"]]
    return (f"<p class='sub'>{c['samples']} {_e(c['source'])} samples, FP32 model vs the emitted QDQ model, "
            "both in ONNX Runtime</p>"
            + _table(["output", "shape", "SQNR dB", "max |error|", "top-1 agreement"], rows))


def _bits_plot(layers: list[dict]) -> str:
    if not layers:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 2.8))
    names = [x["node"] for x in layers]
    bits = [x.get("weight_bits") or 0 for x in layers]
    colors = plt.get_cmap("viridis")([(b - 2) / 6 if b else 0 for b in bits])
    ax.bar(range(len(bits)), bits, color=colors)
    ax.set_ylabel("weight bits")
    ax.set_ylim(0, max(bits + [8]) + 0.5)
    ax.set_xticks(range(len(names)), names if len(names) <= 40 else [""] * len(names), rotation=90,
                  fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(range(len(bits)), [x.get("params") or 0 for x in layers], "k.", ms=4)
    ax2.set_yscale("log")
    ax2.set_ylabel("params (dots)")
    ax.set_title("weight bits per layer (bars) and parameter count (dots)", fontsize=10)
    return _png(fig)


def _sensitivity(r: dict) -> str:
    s = r.get("sensitivity")
    if not s or not s.get("groups"):
        return ""
    plt = _pyplot()
    import numpy as np

    loss = np.array(s["loss"], dtype=float).T          # candidates x groups
    shown = np.log10(np.clip(np.nan_to_num(loss, nan=0.0), 1e-8, None))
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(s["candidates"]) + 1.6))
    im = ax.imshow(shown, aspect="auto", cmap="magma_r", interpolation="nearest")
    ax.set_yticks(range(len(s["candidates"])), s["candidates"])
    groups = s["groups"]
    ax.set_xticks(range(len(groups)), groups if len(groups) <= 60 else [""] * len(groups), rotation=90,
                  fontsize=7)
    fig.colorbar(im, ax=ax, label=f"log10 loss ({s.get('metric', '')})", pad=0.01)
    ax.set_title("sensitivity: predicted output loss when one group takes a candidate, all others FP32",
                 fontsize=10)
    return _png(fig)


def _pareto(r: dict) -> str:
    pts = r.get("pareto")
    if not pts:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))

    def val(p, k):   # a number, or the first number of a dict (a budget given as {"avg_weight_bits": 4})
        v = p.get(k)
        if isinstance(v, dict):
            v = next((x for x in v.values() if isinstance(x, (int, float))), None)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    xkey = "avg_weight_bits" if any(val(p, "avg_weight_bits") is not None for p in pts) else "budget"
    for key, style in (("predicted", "o-"), ("measured", "s--")):
        xy = [(val(p, xkey), val(p, key)) for p in pts]
        xy = sorted((x, y) for x, y in xy if x is not None and y is not None)
        if xy:
            ax.plot(*zip(*xy), style, label=key)
    ax.set_xlabel(xkey.replace("_", " "))
    ax.set_ylabel("output loss")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend()
    ax.set_title("Pareto curve", fontsize=10)
    cols = [k for k in ("budget", "budget_avg_weight_bits", "avg_weight_bits", "size_mb", "bops_ratio",
                        "predicted", "measured") if any(k in p for p in pts)]
    rows = [[_num(val(p, k)) for k in cols] + [_e(_bits_text(p.get("bits")))] for p in pts]
    return _png(fig) + _table([c.replace("_", " ") for c in cols] + ["bits"], rows, left=0)


def _bits_text(bits) -> str:
    """{group: [w, a]} -> 'W4A8 x12, W8A8 x3' (counts per candidate), else the value as text."""
    if not isinstance(bits, dict):
        return "-" if bits is None else str(bits)
    counts: dict[str, int] = {}
    for v in bits.values():
        name = f"W{v[0]}A{v[1]}" if isinstance(v, (list, tuple)) and len(v) == 2 else str(v)
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def _layers(r: dict) -> str:
    rows = []
    for x in r.get("layers", []):
        sens = x.get("sensitivity") or {}
        worst = max(sens.values()) if sens else None
        rows.append([_e(x["node"]), _e(x["op"]), _e("×".join(map(str, x.get("shape") or [])) or "-"),
                     f"{int(x.get('params') or 0):,}", _num(x.get("weight_bits")),
                     _e(_prec(x.get("act_bits"))),
                     _num(x.get("weight_scale_max")), _num(x.get("input_scale")), _num(worst),
                     _num(x.get("predicted_loss")), _e(x.get("group") or "-")])
    return _table(["node", "op", "shape", "params", "W bits", "A bits", "max weight scale", "input scale",
                   "sensitivity (worst cand.)", "predicted contribution", "group"], rows, left=3)


def _act_precision(r: dict) -> str:
    """The activation-precision decision: gate numbers, each outlier group's damage and choice (bars)."""
    a = (r.get("notes") or {}).get("activations") or {}
    if "skipped" in a:
        return f"<p class='sub'>{_e(a['skipped'])}</p>"
    outs = a.get("outliers") or {}
    m = a.get("measured") or {}
    head = (f"<p class='sub'>{len(outs)} outlier groups of {_e(a.get('groups', '?'))} (damage at A8 alone "
            f"above the weights' {_num(a.get('weight_loss'))}); activation cost {_num(a.get('cost'))} of "
            f"allowance {_num(a.get('cost_allowance'))}"
            + (f"; measured output loss {_num(m.get('all_base'))} (all A8) -> {_num(m.get('chosen'))}"
               if m else "")
            + "</p>")
    if not outs:
        return head
    base = str(a.get("base", 8))
    rows = [[_e(k), _e(", ".join(o["tensors"])[:120]), _num(o["loss"].get(base)), _e(_prec(o["choice"]))]
            for k, o in outs.items()]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 2.6))
    vals = [max(o["loss"].get(base) or 0.0, 1e-12) for o in outs.values()]
    ax.bar(range(len(vals)), vals, color=["#c44e52" if str(o["choice"]) != base else "#4c72b0"
                                          for o in outs.values()])
    ax.set_yscale("log")
    ax.set_xticks(range(len(vals)), list(outs) if len(vals) <= 60 else [""] * len(vals), rotation=90,
                  fontsize=7)
    ax.set_title(f"damage of each outlier group at A{base} alone (red: raised to A16 / float)", fontsize=10)
    return head + _png(fig) + _table(["group", "tensors", f"loss at A{base}", "choice"], rows, left=2)


def _prec(bits) -> str:
    return "float" if bits == 32 else ("-" if bits is None else f"A{bits}")


def _passes(r: dict) -> str:
    ps = r.get("passes", [])
    rows = [[_e(p["pass"]), _num(p.get("seconds"), 3), _num(p.get("peak_rss_mb")),
             _e(p.get("forward_passes", 0)), _e(p.get("modified")), _e(p.get("summary", ""))] for p in ps]
    plot = ""
    if ps and any("seconds" in p for p in ps):
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(ps) + 0.8))
        ax.barh([p["pass"] for p in ps][::-1], [p.get("seconds", 0) for p in ps][::-1], color="#4c72b0")
        ax.set_xlabel("seconds")
        plot = _png(fig)
    return plot + _table(["pass", "seconds", "peak RSS MB", "forward passes", "modified", "summary"], rows,
                         left=1)


def _activations(r: dict) -> str:
    acts = r.get("activations", [])
    rows = [[_e(a["tensor"]), _e(a.get("group") or "-"), _e(a.get("dtype")), _num(a.get("scale")),
             _num(a.get("zero_point")), _e(", ".join(_num(v) for v in a.get("range") or [])),
             _e(a.get("range_source"))] for a in acts]
    return (f"<details><summary>{len(acts)} activation encodings</summary>"
            + _table(["tensor", "group", "dtype", "scale", "zero point", "range", "range source"], rows)
            + "</details>")


def _messages(r: dict) -> str:
    items = [f'<li class="w">{_e(w)}</li>' for w in r.get("warnings") or []]
    items += [f"<li>skipped {_e(s['node'])}: {_e(s['reason'])}</li>" for s in r.get("skipped") or []]
    return "<ul>" + "".join(items) + "</ul>" if items else "<p class='sub'>none</p>"


def _sections(report: dict) -> list[tuple[str, str]]:
    return [("Summary", _summary(report)), ("FP32 vs quantized outputs", _comparison(report)),
            ("Bits per layer", _bits_plot(report.get("layers", []))),
            ("Sensitivity", _sensitivity(report)), ("Activation precision", _act_precision(report)),
            ("Pareto curve", _pareto(report)),
            ("Layers", _layers(report)), ("Activations", _activations(report)),
            ("Passes", _passes(report)), ("Warnings and skips", _messages(report))]


def _branches(report: dict) -> str:
    """A model compiled branch by branch (an If between two networks): each branch's own report."""
    m = report.get("model", {})
    out = [f"<p class='sub'>two networks behind the If on '{_e(m.get('flag'))}', each compiled as its own "
           "model; the written model still chooses between them by the value fed</p>"]
    for name, sub in report["branches"].items():
        out.append(f"<h2>Branch {_e(name)}</h2>")
        why = (sub.get("notes") or {}).get("float")
        if why:
            out.append(f"<p class='w'>written float: {_e(why)}</p>")
            continue
        out += [f"<h3>{_e(title)}</h3>{content}" for title, content in _sections(sub)
                if content and title != "Warnings and skips"]
    return "".join(out)


def render(report: dict) -> str:
    """The HTML page of a report dict."""
    m = report.get("model", {})
    title = f"dfq-onnx report: {m.get('name') or m.get('path') or 'model'}"
    if report.get("branches"):
        sections = [("Summary", _summary(report) + _branches(report)),
                    ("Warnings and skips", _messages(report))]
    else:
        sections = _sections(report)
    body = "".join(f"<h2>{_e(name)}</h2>{content}" for name, content in sections if content)
    sub = (f"target {_e(m.get('target'))} · producer {_e(m.get('producer') or '-')} · "
           f"source {_e(m.get('path') or 'in-memory model')}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{_e(title)}</h1><div class="sub">{sub}</div>{body}</body></html>\n')
