"""Procedural scenes: coloured, textured shapes on varied backgrounds, each with its true mask and captions.

Deterministic by seed: ``make_scene(seed)`` always draws the same picture. Used to train and test
the embedded CLIP (``lvlm-shapes``), as a dataset (``scenes``) and in tests where the right answer
must be known::

    scene = make_scene(7)
    scene.image            # 224 x 224 x 3 uint8
    scene.objects[0].mask  # 224 x 224 bool
    scene.objects[0].caption  # "a red triangle"
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ..registry import register
from ..types import Sample, masks_to_boxes

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 225),
    "yellow": (240, 215, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}
TEXTURES = ("plain", "striped", "dotted")


@dataclass
class SceneObject:
    shape: str
    colour: str
    texture: str
    mask: np.ndarray  # H x W bool

    @property
    def caption(self) -> str:
        """The canonical caption: ``a {colour} {shape}`` (unique within a scene)."""
        return f"a {self.colour} {self.shape}"

    def captions(self) -> list[str]:
        """Every phrasing that describes this object (used for training)."""
        out = [f"a {self.colour} {self.shape}", f"{self.colour} {self.shape}"]
        if self.texture != "plain":
            out += [
                f"a {self.texture} {self.colour} {self.shape}",
                f"a {self.colour} {self.texture} {self.shape}",
            ]
        return out

    @property
    def box(self) -> np.ndarray:
        return masks_to_boxes(self.mask[None])[0]


@dataclass
class Scene:
    image: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)
    seed: int = 0

    def find(self, text: str) -> SceneObject | None:
        """The object a caption names (by colour and shape words), or None.

        Args:
            text: a caption naming a colour and a shape.
        """
        words = text.lower().split()
        for o in self.objects:
            if o.colour in words and o.shape in words:
                return o
        return None


def _shape_polygon(
    shape: str, cx: float, cy: float, r: float, rot: float
) -> list[tuple[float, float]] | None:
    def ring(n, radii, offset=0.0):
        pts = []
        for i in range(n * len(radii)):
            a = rot + offset + 2 * np.pi * i / (n * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [r * 1.05], np.pi / 4)
    if shape == "triangle":
        return ring(3, [r * 1.15], -np.pi / 2)
    if shape == "star":
        return ring(5, [r * 1.15, r * 0.5], -np.pi / 2)
    if shape == "cross":
        a, b = r, r * 0.36
        base = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
        c, s = np.cos(rot), np.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    return None  # circle


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    poly = _shape_polygon(shape, cx, cy, r, rot)
    if poly is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(canvas) > 127


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(0, 4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(70, 200, 3)
    if kind == 0:  # flat
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == 1:  # gradient
        other = rng.uniform(60, 210, 3)
        t = xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        img = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == 2:  # smooth noise
        small = rng.uniform(-40, 40, (6, 6, 3)).astype(np.float32)
        noise = np.asarray(
            Image.fromarray(small.astype(np.float32)[..., 0]).resize((size, size), Image.BICUBIC)
        )
        img = base + noise[..., None]
    else:  # soft checkerboard
        k = rng.integers(4, 10)
        check = ((np.floor(xx * k) + np.floor(yy * k)) % 2)[..., None]
        img = base + (check - 0.5) * rng.uniform(10, 35)
    # desaturate so backgrounds never look like an object colour
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * 0.35
    img = img + rng.normal(0, 4, img.shape)
    return img


def _paint(img: np.ndarray, mask: np.ndarray, colour: str, texture: str, rng: np.random.Generator) -> None:
    rgb = np.asarray(COLOURS[colour], np.float32) + rng.normal(0, 8, 3)
    size = img.shape[0]
    shade = rgb.copy()
    if texture == "striped":
        yy, xx = np.mgrid[0:size, 0:size]
        period = rng.integers(6, 11)
        ang = rng.uniform(0, np.pi)
        band = ((xx * np.cos(ang) + yy * np.sin(ang)) // (period / 2)) % 2 == 0
        pattern = np.where(band[..., None], rgb, rgb * 0.45 + 255 * 0.55)
    elif texture == "dotted":
        yy, xx = np.mgrid[0:size, 0:size]
        period = rng.integers(7, 11)
        dots = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period * 0.28) ** 2
        pattern = np.where(dots[..., None], rgb * 0.45 + 255 * 0.55, rgb)
    else:
        pattern = np.broadcast_to(shade, img.shape)
    img[mask] = pattern[mask]


def make_scene(
    seed: int,
    size: int = 224,
    n_objects: int | tuple[int, int] = (2, 4),
    black_background: bool = False,
    radius: tuple[float, float] = (0.09, 0.17),
) -> Scene:
    """One scene of ``n_objects`` non-overlapping objects with unique (colour, shape) pairs.

    Args:
        seed: the scene's random seed.
        size: the image side in pixels.
        n_objects: the number of objects, or a ``(min, max)`` range drawn from.
        black_background: a black background instead of a textured one.
        radius: the objects' radius range as fractions of ``size``.
    """
    rng = np.random.default_rng(seed)
    n = n_objects if isinstance(n_objects, int) else int(rng.integers(n_objects[0], n_objects[1] + 1))
    img = np.zeros((size, size, 3), np.float32) if black_background else _background(rng, size)
    occupied = np.zeros((size, size), bool)
    objects: list[SceneObject] = []
    used: set[tuple[str, str]] = set()
    tries = 0
    while len(objects) < n and tries < 200:
        tries += 1
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        if (colour, shape) in used:
            continue
        r = rng.uniform(*radius) * size
        cx, cy = rng.uniform(r + 2, size - r - 2, 2)
        m = _shape_mask(shape, size, cx, cy, r, rng.uniform(0, 2 * np.pi))
        grown = m.copy()
        pad = max(2, int(0.03 * size))
        grown[pad:] |= m[:-pad]
        grown[:-pad] |= m[pad:]
        grown[:, pad:] |= m[:, :-pad]
        grown[:, :-pad] |= m[:, pad:]
        if (grown & occupied).any() or m.sum() < 30:
            continue
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        _paint(img, m, colour, texture, rng)
        occupied |= m
        used.add((colour, shape))
        objects.append(SceneObject(shape, colour, texture, m))
    return Scene(np.clip(img, 0, 255).astype(np.uint8), objects, seed)


def all_captions() -> list[str]:
    """The canonical caption of every (colour, shape) pair: the zero-shot label set."""
    return [f"a {c} {s}" for c in COLOURS for s in SHAPES]


def training_pairs(
    seeds,
    size: int = 224,
    rng_seed: int = 0,
    black_prob: float = 0.25,
    n_objects: int | tuple[int, int] = (1, 3),
) -> Iterator[tuple[np.ndarray, str, int]]:
    """(image, caption, class index) pairs for CLIP training, one per seed.

    Each image holds 1-3 objects and is captioned by one of them; with probability ``black_prob``
    everything but that object is blacked out (the ``mask_black`` view the CLIP selector uses).
    The class index is the position of ``a {colour} {shape}`` in :func:`all_captions`.

    Args:
        seeds: the scene seeds, one pair each.
        size: the image side in pixels.
        rng_seed: the seed of the caption and blackout draws.
        black_prob: the chance that all but the captioned object is blacked out.
        n_objects: the number of objects per scene, or a ``(min, max)`` range.
    """
    labels = {c: i for i, c in enumerate(all_captions())}
    for s in seeds:
        rng = np.random.default_rng((rng_seed, s))
        scene = make_scene(int(s), size=size, n_objects=n_objects)
        obj = scene.objects[rng.integers(len(scene.objects))]
        image = scene.image
        if rng.random() < black_prob:
            image = np.where(obj.mask[..., None], image, 0).astype(np.uint8)
        caps = obj.captions()
        yield image, caps[rng.integers(len(caps))], labels[obj.caption]


@register(
    "dataset",
    "scenes",
    description="generated shapes scenes with true masks (deterministic by seed)",
    source="lvlm.data.synthetic",
)
class ScenesDataset:
    """Generated scenes; one sample per (scene, object), prompt ``a {colour} {shape}``.

    Seeds ``start .. start + n - 1``; the embedded CLIP was trained on seeds below 1,000,000, so the
    default ``start=10_000_000`` is held out.

    Args:
        n: the number of scenes.
        start: the first scene seed.
        size: the image side in pixels.
        objects_per_scene: objects in each scene.
        one_per_scene: one sample per scene (a random object) instead of one per object.
    """

    def __init__(
        self,
        n: int = 200,
        start: int = 10_000_000,
        size: int = 224,
        objects_per_scene: int = 3,
        one_per_scene: bool = True,
    ):
        self.n, self.start, self.size = n, start, size
        self.objects_per_scene = objects_per_scene
        self.one_per_scene = one_per_scene

    def __len__(self) -> int:
        return self.n if self.one_per_scene else self.n * self.objects_per_scene

    def __iter__(self) -> Iterator[Sample]:
        for i in range(self.n):
            seed = self.start + i
            scene = make_scene(seed, size=self.size, n_objects=self.objects_per_scene)
            objs = scene.objects
            if self.one_per_scene:
                objs = [objs[np.random.default_rng(seed).integers(len(objs))]]
            for o in objs:
                yield Sample(
                    id=f"scene{seed}_{o.colour}_{o.shape}",
                    image=scene.image,
                    prompt=o.caption,
                    mask=o.mask,
                    tags={"shape": o.shape, "colour": o.colour, "texture": o.texture},
                    box=o.box,
                )
