"""Texture mosaics (Dhungana and Bista, wood textures): 2 x 2 tiles of 256 px -> a 512 px image with 4
quadrant masks.

Textures are grouped by appearance: ResNet18 features (torchvision's architecture; ImageNet weights
resolved through :mod:`lvlm.weights`, failing fast offline, or ``features="random"`` for a seeded random
network) clustered by k-means into ``k`` (5) clusters. Two modes:

- ``standard``: the four tiles come from four different clusters (contrasting textures);
- ``hard``: all four tiles come from one cluster (similar colours; grain and pattern differ).

Each mosaic yields four samples, one per quadrant (mask = the quadrant, box = its box, prompt = the
texture's name), so a decoder learns where one texture ends and the next begins.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import register
from ..types import Sample
from ..weights import WeightSpec
from .base import IMAGE_EXTS, Dataset, not_found

TILE = 256
MODES = ("standard", "hard")
RESNET18 = WeightSpec(
    "resnet18-f37072fd.pth",
    url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
    license="BSD-3-Clause (torchvision)",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
URL = (
    "e.g. the wood texture set of Dhungana and Bista (530 species images, 'wood_data/images/images/*.jpg'), "
    "or any texture folder"
)
LAYOUT = """\
  ROOT/**/*.jpg|png|...   texture images (searched recursively; the file stem names the texture,
                          a trailing size such as '-60x60' is dropped: 'oak-60x60.jpg' -> 'oak')"""


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def make_mosaic(tiles: Sequence[np.ndarray], tile: int = TILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(2t x 2t x 3 image, 4 x 2t x 2t quadrant masks, 4 x 2 centre points) of 4 tiles (TL, TR, BL, BR).

    Each tile is resized to ``tile`` x ``tile`` (bicubic).

    Args:
        tiles: four H x W x 3 uint8 images.
        tile: the side each tile is resized to.
    """
    if len(tiles) != 4:
        raise ValueError(f"a mosaic takes 4 tiles, got {len(tiles)}")
    t = int(tile)
    img = np.zeros((2 * t, 2 * t, 3), np.uint8)
    masks = np.zeros((4, 2 * t, 2 * t), bool)
    points = np.zeros((4, 2), np.float32)
    for q, im in enumerate(tiles):
        r, c = divmod(q, 2)
        img[r * t : (r + 1) * t, c * t : (c + 1) * t] = _resize(np.asarray(im, np.uint8), t)
        masks[q, r * t : (r + 1) * t, c * t : (c + 1) * t] = True
        points[q] = (c * t + t // 2, r * t + t // 2)
    return img, masks, points


def resnet18_features(
    images: Sequence[np.ndarray],
    weights: str = "imagenet",
    device: str = "cpu",
    batch_size: int = 32,
    size: int = 224,
    seed: int = 0,
) -> np.ndarray:
    """N x 512 global-average-pooled ResNet18 features of H x W x 3 uint8 images.

    ``weights``: ``"imagenet"`` (torchvision's ImageNet weights from ``$LVLM_HOME`` or a download; a
    WeightsNotFoundError within seconds when neither works), a path to that file, or ``"random"`` (a
    random network seeded with ``seed``: offline clustering by colour / texture statistics).

    Args:
        images: H x W x 3 uint8 images.
        weights: ``imagenet``, a weights file, or ``random``.
        device: the device of the network.
        batch_size: images per forward pass.
        size: the side images are resized to.
        seed: the seed of the random network.
    """
    import torch
    from torchvision.models import resnet18

    from ..weights import is_random, load_state_dict, resolve

    path = None if is_random(weights) else resolve(RESNET18, None if weights == "imagenet" else weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = resnet18(weights=None)
    if path is not None:
        net.load_state_dict(load_state_dict(path))
    net.fc = torch.nn.Identity()
    net = net.to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = np.stack([_resize(np.asarray(im, np.uint8), size) for im in images[s : s + batch_size]])
            x = torch.as_tensor(x, device=device).permute(0, 3, 1, 2).float() / 255.0
            out.append(net((x - mean) / std).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 512), np.float32)


def cluster_textures(features: np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Cluster labels (N,) of L2-normalised features by k-means (scipy ``kmeans2``, k-means++ init, seeded).

    Args:
        features: N x D features.
        k: the number of clusters.
        seed: the random seed of the k-means initialisation.
    """
    from scipy.cluster.vq import kmeans2

    f = np.asarray(features, np.float64)
    if len(f) < k:
        raise ConfigError(f"{len(f)} textures cannot form k={k} clusters")
    f = f / np.clip(np.linalg.norm(f, axis=1, keepdims=True), 1e-12, None)
    kw = (
        {"rng": np.random.default_rng(seed)}
        if "rng" in inspect.signature(kmeans2).parameters
        else {"seed": seed}
    )
    _, labels = kmeans2(f, k, minit="++", **kw)
    return labels.astype(np.int64)


def texture_name(path: str | Path) -> str:
    """'oak-60x60.jpg' -> 'oak'; 'african-blackwood-60x60' -> 'african blackwood'.

    Args:
        path: the texture image's path.
    """
    stem = re.sub(r"[-_ ]?\d+x\d+$", "", Path(path).stem)
    return re.sub(r"[-_]+", " ", stem).strip() or Path(path).stem


@register(
    "dataset",
    "mosaics",
    description="2x2 texture mosaics, standard or hard mode (Dhungana and Bista wood textures)",
    source="generated from your texture images; ResNet18 (torchvision) features + k-means clusters",
)
class TextureMosaics(Dataset):
    """``n`` mosaics of textures from ``root`` (4 samples each: one per quadrant), deterministic by ``seed``.

    ``mode``: ``standard`` (four clusters) or ``hard`` (one cluster); ``k``: number of clusters;
    ``features``: ResNet18 weights for clustering (``imagenet``, a path, or ``random``);
    ``split``: ``all``, or ``train`` / ``test`` for disjoint texture sets (``test_fraction`` of each
    cluster's textures are test textures). Tags: ``{"mode", "cluster", "texture", "quadrant"}``.

    Args:
        root: a folder of texture images (searched recursively; file stems name the textures), or None with
            ``images``.
        images: texture images (paths or arrays) to use instead of ``root``.
        n: the number of mosaics.
        mode: ``standard`` or ``hard``.
        seed: the random seed.
        k: the number of texture clusters.
        tile: the side of each quadrant in pixels.
        features: the ResNet18 weights used for clustering.
        device: the device of the feature network.
        split: ``all``, ``train`` or ``test``.
        test_fraction: the fraction of each cluster's textures that are test textures.
        feature_size: the side images are resized to for the features.
        prompt: the prompt template, with ``{texture}`` the texture's name.
        names: one name per image of ``images`` (default: ``texture {i}``).
    """

    name = "mosaics"

    def __init__(
        self,
        root: str | None = None,
        images: Sequence[Any] | None = None,
        n: int = 500,
        mode: str = "standard",
        seed: int = 0,
        k: int = 5,
        tile: int = TILE,
        features: str = "imagenet",
        device: str = "auto",
        split: str = "all",
        test_fraction: float = 0.2,
        feature_size: int = 224,
        prompt: str = "{texture}",
        names: Sequence[str] | None = None,
    ):
        from ..components import resolve_device
        from ..io import load_image

        if mode not in MODES:
            raise ConfigError(f"mosaics mode={mode!r}; valid modes: {', '.join(MODES)}")
        if split not in ("all", "train", "test"):
            raise ConfigError(f"mosaics split={split!r}; valid splits: all, train, test")
        if images is None:
            if root is None:
                raise ConfigError("mosaics needs root= (a folder of texture images) or images=")
            rootp = Path(root).expanduser()
            files = (
                sorted(p for p in rootp.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
                if rootp.is_dir()
                else []
            )
            if not files:
                raise not_found("mosaics", root, "no texture image", LAYOUT, URL)
            images, names = files, [texture_name(p) for p in files]
        self.textures = [load_image(im) for im in images]
        self.names = list(names) if names is not None else [f"texture {i}" for i in range(len(self.textures))]
        if len(self.names) != len(self.textures):
            raise ConfigError(f"mosaics: {len(self.names)} names for {len(self.textures)} images")
        feats = resnet18_features(
            self.textures, features, resolve_device(device), size=feature_size, seed=seed
        )
        self.clusters = cluster_textures(feats, k, seed)
        self.mode, self.seed, self.tile, self.prompt, self.k = mode, seed, tile, prompt, k
        rng = np.random.default_rng([seed, 7])
        is_test = np.zeros(len(self.textures), bool)
        for c in range(k):
            members = np.nonzero(self.clusters == c)[0]
            n_test = int(np.floor(test_fraction * len(members)))
            is_test[rng.permutation(members)[:n_test]] = True
        self.pool = (
            np.arange(len(self.textures)) if split == "all" else np.nonzero(is_test == (split == "test"))[0]
        )
        sizes = {c: int(np.sum(self.clusters[self.pool] == c)) for c in range(k)}
        if mode == "standard" and sum(v > 0 for v in sizes.values()) < 4:
            raise ConfigError(f"mosaics standard mode needs textures in 4 clusters; cluster sizes: {sizes}")
        if mode == "hard" and not any(v >= 4 for v in sizes.values()):
            raise ConfigError(
                f"mosaics hard mode needs a cluster of at least 4 textures; cluster sizes: {sizes}"
            )
        self._cache: tuple[int, tuple] | None = None
        self._finish([(i, q) for i in range(n) for q in range(4)], None, seed)

    def choose(self, i: int) -> list[int]:
        """Texture indices (TL, TR, BL, BR) of mosaic ``i``.

        Args:
            i: the mosaic index.
        """
        rng = np.random.default_rng([self.seed, i, MODES.index(self.mode)])
        labels = self.clusters[self.pool]
        if self.mode == "standard":
            present = sorted(set(labels.tolist()))
            cl = rng.choice(present, size=4, replace=False)
            return [int(rng.choice(self.pool[labels == c])) for c in cl]
        big = [c for c in sorted(set(labels.tolist())) if np.sum(labels == c) >= 4]
        c = big[int(rng.integers(len(big)))]
        return [int(j) for j in rng.choice(self.pool[labels == c], size=4, replace=False)]

    def mosaic(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """(image, 4 quadrant masks, 4 centre points, texture indices) of mosaic ``i``.

        Args:
            i: the mosaic index.
        """
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        idx = self.choose(i)
        img, masks, points = make_mosaic([self.textures[j] for j in idx], self.tile)
        out = (img, masks, points, idx)
        self._cache = (i, out)
        return out

    def _load(self, item: tuple[int, int]) -> Sample:
        i, q = item
        img, masks, _, idx = self.mosaic(i)
        j = idx[q]
        r, c = divmod(q, 2)
        t = self.tile
        box = np.array([c * t, r * t, (c + 1) * t, (r + 1) * t], np.float32)
        name = self.names[j]
        prompt = self.prompt.format(texture=name)
        return Sample(
            id=f"mosaic{i:05d}_q{q}",
            image=img,
            prompt=prompt,
            mask=masks[q],
            tags={"mode": self.mode, "cluster": int(self.clusters[j]), "texture": name, "quadrant": q},
            prompts=[prompt, name, "texture"],
            box=box,
        )

    def ids(self) -> list[str]:
        return [f"mosaic{i:05d}_q{q}" for i, q in self.items]
