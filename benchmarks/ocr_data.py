"""Labelled OCR test data rendered with Debian fonts, and the OCR metrics (benchmarks only).

Text comes from offline sources on the machine: the Python documentation topics shipped with the
interpreter (`pydoc_data.topics`) and the license texts in /usr/share/common-licenses, cut into
word runs of 6-48 characters of prose words (letters and digits with ordinary punctuation),
keeping only characters the recognizer's dictionary has.
Fonts: every TrueType face of fonts-dejavu-core and fonts-liberation (the Math face excepted).
Everything is a deterministic function of the seed; a different seed (or other fonts) gives a
held-out set.

* lines: one text line per image, tight crop with a few pixels of margin, dark ink on a light,
  slightly noisy background (1 in 8 inverted), font size 16-44 px, sometimes blurred;
* pages: 4-12 lines at random left offsets on a page of 640-1280 x 480-1100 pixels, top to bottom.

Metrics: CER = sum of Levenshtein distances / sum of reference lengths, on strings whose whitespace
runs are collapsed to one space (the recognizer's spacing is not what is measured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
LICENSES = Path("/usr/share/common-licenses")


def fonts(dirs=FONT_DIRS) -> list[Path]:
    found = sorted(p for d in dirs for p in d.glob("*.ttf") if "Math" not in p.name)
    if not found:
        raise SystemExit("no fonts: apt-get install -y fonts-dejavu-core fonts-liberation")
    return found


PROSE = re.compile(r"^[(\"']?[A-Za-z0-9][A-Za-z0-9'-]*[.,;:!?)\"']*$")
QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def words() -> list[str]:
    """The prose word stream of the offline text sources, in a fixed order: words of letters and
    digits with ordinary punctuation around them (code tokens such as `__init__()` are dropped)."""
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    texts += [p.read_text(errors="ignore") for p in sorted(LICENSES.glob("*")) if p.is_file()]
    return [w for t in texts for w in t.translate(QUOTES).split() if PROSE.match(w)]


def charset(rec_model: Path) -> set[str]:
    """The characters of a PP-OCR recognizer's dictionary (its `character` metadata)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(rec_model), load_external_data=False).metadata_props}
    return set(meta["character"].split("\n"))


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def text_lines(rng: np.random.Generator, n: int, charset: set[str], stream: list[str],
               lo: int = 6, hi: int = 48) -> list[str]:
    """n lines of consecutive words from random places of `stream`, 6-48 characters, in `charset`."""
    out: list[str] = []
    while len(out) < n:
        target = int(rng.integers(lo, hi + 1))
        i = int(rng.integers(0, len(stream)))
        line = ""
        while i < len(stream) and len(line) < target:
            line = (line + " " + stream[i]).strip()
            i += 1
        line = normalize(line)[:hi].strip()
        if len(line) >= lo and all(c in charset or c == " " for c in line):
            out.append(line)
    return out


@dataclass(frozen=True)
class Style:
    font: Path
    size: int
    ink: int
    paper: int
    blur: bool


def _style(rng, faces) -> Style:
    inverted = rng.random() < 1 / 8
    ink, paper = int(rng.integers(0, 90)), int(rng.integers(190, 256))
    if inverted:
        ink, paper = paper, ink
    return Style(faces[int(rng.integers(len(faces)))], int(rng.integers(16, 45)), ink, paper,
                 bool(rng.random() < 0.25))


def _finish(img, rng, style: Style) -> np.ndarray:
    """RGB uint8 array with a colour tint, sensor noise and an optional blur."""
    from PIL import ImageFilter

    if style.blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.0))))
    arr = np.asarray(img, np.float32)[..., None] * rng.uniform(0.85, 1.0, 3)[None, None, :]
    arr += rng.normal(0, rng.uniform(1, 6), arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def render_line(text: str, style: Style, rng) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(style.font), style.size)
    x0, y0, x1, y1 = font.getbbox(text)
    mx, my = int(rng.integers(2, 10)), int(rng.integers(2, 8))
    img = Image.new("L", (x1 - x0 + 2 * mx, y1 - y0 + 2 * my), style.paper)
    ImageDraw.Draw(img).text((mx - x0, my - y0), text, font=font, fill=style.ink)
    return _finish(img, rng, style)


def render_page(lines: list[str], style: Style, rng) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    w, h = int(rng.integers(640, 1281)), int(rng.integers(480, 1101))
    img = Image.new("L", (w, h), style.paper)
    draw = ImageDraw.Draw(img)
    y, placed = int(rng.integers(20, 60)), []
    for text in lines:
        font = ImageFont.truetype(str(style.font), int(rng.integers(18, 37)))
        x0, y0, x1, y1 = font.getbbox(text)
        if y + (y1 - y0) + 20 > h:
            break
        x = int(rng.integers(20, max(21, w - (x1 - x0) - 20)))
        if x + (x1 - x0) > w - 10:        # too wide for this page: skip the line
            continue
        draw.text((x - x0, y - y0), text, font=font, fill=style.ink)
        placed.append(text)
        y += (y1 - y0) + int(rng.integers(12, 40))
    return _finish(img, rng, style), placed


def line_set(n: int, seed: int, charset: set[str], faces=None) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng([seed, 1])
    faces = faces or fonts()
    texts = text_lines(rng, n, charset, words())
    return [render_line(t, _style(rng, faces), rng) for t in texts], texts


def page_set(n: int, seed: int, charset: set[str], faces=None) -> tuple[list[np.ndarray], list[list[str]]]:
    rng = np.random.default_rng([seed, 2])
    faces, stream = faces or fonts(), words()
    images, truths = [], []
    for _ in range(n):
        lines = text_lines(rng, int(rng.integers(4, 13)), charset, stream, lo=10, hi=48)
        style = _style(rng, faces)
        style = Style(style.font, style.size, min(style.ink, style.paper), max(style.ink, style.paper),
                      style.blur)
        img, placed = render_page(lines, style, rng)
        images.append(img)
        truths.append(placed)
    return images, truths


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(refs: list[str], hyps: list[str]) -> float:
    """Character error rate in percent over the whole set (normalized strings)."""
    dist = sum(levenshtein(normalize(r), normalize(h)) for r, h in zip(refs, hyps))
    return 100.0 * dist / max(1, sum(len(normalize(r)) for r in refs))


def exact(refs: list[str], hyps: list[str]) -> float:
    return 100.0 * float(np.mean([normalize(r) == normalize(h) for r, h in zip(refs, hyps)]))
