"""Data of the SAM decoder trainer: cached image embeddings, training objects, their prompts and targets.

- :class:`EmbeddingCache`: image embeddings on disk, one ``.npy`` per image under
  ``<cache_dir>/<model fingerprint>/<image content hash>.npy``, so the frozen encoder runs once per image;
- :class:`Items` / :func:`build_items`: one entry per object (mask): its embedding key, the low-resolution
  target (packed bits) with its un-padded extent, and its centre point and tight box in the model's frame;
- :class:`EmbeddingStore`: the embeddings of a run in memory when they fit, else read per batch;
- :func:`split_samples`: the seeded train / validation split (by image or by object);
- :func:`prompt_kinds` / :func:`random_points`: the per-epoch prompt draws.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..components import image_key
from ..errors import ConfigError
from ..fsutil import atomic_write
from ..models.sam import SamFamilyAdapter

__all__ = [
    "EmbeddingCache",
    "EmbeddingStore",
    "Items",
    "build_items",
    "prompt_kinds",
    "random_points",
    "split_samples",
    "unpack_targets",
    "valid_mask",
]


# ----------------------------------------------------------------------------------- embedding cache
class EmbeddingCache:
    """Image embeddings on disk, one ``.npy`` per image, keyed by image content hash under a model
    fingerprint.

    Args:
        arch: the model's family adapter (its ``encode`` and ``fingerprint``).
        cache_dir: the cache folder (default ``$LVLM_HOME/embeddings``).
        batch_size: images encoded per encoder call.
        progress: show a progress bar while encoding.
    """

    def __init__(
        self,
        arch: SamFamilyAdapter,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 4,
        progress: bool = True,
    ):
        if cache_dir is None:
            from ..weights import cache_dir as lvlm_home

            cache_dir = lvlm_home() / "embeddings"
        self.arch = arch
        self.dir = Path(cache_dir).expanduser() / arch.fingerprint
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.n_encoded = 0  # images run through the encoder by this cache (not found on disk)
        self._pending: dict[str, np.ndarray] = {}
        self._bar = None

    def path(self, key: str) -> Path:
        """The ``.npy`` file of one embedding.

        Args:
            key: the image's content key.
        """
        return self.dir / f"{key}.npy"

    def has(self, key: str) -> bool:
        """Whether the embedding is cached (on disk or pending encoding).

        Args:
            key: the image's content key.
        """
        return key in self._pending or self.path(key).is_file()

    def add(self, image: np.ndarray) -> str:
        """The image's key; its embedding is computed (in batches) unless already cached.

        Args:
            image: an H x W x 3 uint8 image.
        """
        key = image_key(image)
        if not self.has(key):
            self._pending[key] = image
            if len(self._pending) >= self.batch_size:
                self.flush()
        return key

    def flush(self) -> None:
        if not self._pending:
            return
        if self._bar is None and self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="encoding images (once)", unit="img")
        self.dir.mkdir(parents=True, exist_ok=True)
        keys = list(self._pending)
        emb = self.arch.encode([self._pending[k] for k in keys]).float().cpu().numpy()
        for k, e in zip(keys, emb):
            atomic_write(self.path(k), lambda f, e=e: np.save(f, e), fsync=False)
        self.n_encoded += len(keys)
        if self._bar is not None:
            self._bar.update(len(keys))
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def load(self, key: str, mmap: bool = False) -> np.ndarray:
        """One cached embedding as an array (pending images are encoded first).

        Args:
            key: the image's content key.
            mmap: memory-map the file instead of reading it.
        """
        if key in self._pending:
            self.flush()
        return np.load(self.path(key), mmap_mode="r" if mmap else None)

    def get(self, image: np.ndarray):
        """The 1 x C x h x w embedding tensor of one image (encoded and cached if new).

        Args:
            image: an H x W x 3 uint8 image.
        """
        import torch

        key = self.add(image)
        return torch.as_tensor(np.asarray(self.load(key)), device=self.arch.device)[None]


# ------------------------------------------------------------------------------------------- items
@dataclass
class Items:
    """Training / validation objects: which embedding, the low-res target and the prompts (model frame)."""

    keys: list[str] = field(default_factory=list)  # embedding key per object
    targets: list[np.ndarray] = field(default_factory=list)  # packed bits of the L x L bool target
    valid: list[tuple[int, int]] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)  # (2,) centre point
    boxes: list[np.ndarray] = field(default_factory=list)  # (4,) tight box
    flipped: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def _as_image(image: Any) -> np.ndarray:
    from ..io import load_image

    return load_image(image)


def _as_mask(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    if isinstance(mask, (str, os.PathLike)):
        from ..io import load_mask

        mask = load_mask(mask)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ConfigError(f"mask of shape {mask.shape} does not match its image {shape}")
    return mask


def _sample_parts(s: Any) -> tuple[Any, Any]:
    """(image, mask) of a Sample-like object or an (image, mask) pair."""
    if hasattr(s, "image") and hasattr(s, "mask"):
        return s.image, s.mask
    if isinstance(s, (tuple, list)) and len(s) >= 2:
        return s[0], s[1]
    raise ConfigError(
        f"training samples must be lvlm.types.Sample or (image, mask) pairs, got {type(s).__name__}"
    )


def _add_item(items: Items, arch: SamFamilyAdapter, key: str, mask: np.ndarray, flipped: bool) -> None:
    from ..data.prompts import center_point, tight_box

    h, w = mask.shape
    sx, sy = arch.scale(h, w)
    target, valid = arch.lowres_target(mask)
    items.keys.append(key)
    items.targets.append(np.packbits(target))
    items.valid.append(valid)
    items.points.append(center_point(mask)[0] * np.array([sx, sy], np.float32))
    items.boxes.append(tight_box(mask) * np.array([sx, sy, sx, sy], np.float32))
    items.flipped.append(flipped)


def _group_key(image: Any, index: int, split_by: str) -> str:
    if split_by == "item":
        return f"item{index}"
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return image_key(np.asarray(image))


def build_items(
    samples: Sequence[Any], arch: SamFamilyAdapter, cache: EmbeddingCache, flip: bool
) -> tuple[Items, int]:
    """Items of the samples (with their flipped copies when ``flip``); embeddings cached on the way.

    Args:
        samples: Samples or ``(image, mask)`` pairs, one object each.
        arch: the model's family adapter.
        cache: where the embeddings go.
        flip: also add each image flipped left-right (encoded as such).

    Returns:
        ``(items, number of samples skipped for an empty mask)``.
    """
    items = Items()
    skipped = 0
    for s in samples:
        image, mask = _sample_parts(s)
        image = _as_image(image)
        mask = _as_mask(mask, image.shape[:2])
        if not mask.any():
            skipped += 1
            continue
        _add_item(items, arch, cache.add(image), mask, False)
        if flip:
            fimg = np.ascontiguousarray(image[:, ::-1])
            _add_item(items, arch, cache.add(fimg), np.ascontiguousarray(mask[:, ::-1]), True)
    cache.flush()
    return items, skipped


def split_samples(
    samples: Sequence[Any], val_fraction: float, seed: int = 0, split_by: str = "image"
) -> tuple[list[Any], list[Any]]:
    """(train, val) lists: a seeded split of images (``split_by="image"``) or of objects (``"item"``).

    With ``split_by="image"`` all objects of one image land on the same side; when there is only one
    image the split falls back to objects.

    Args:
        samples: Samples or ``(image, mask)`` pairs.
        val_fraction: share of the groups held out.
        seed: the split's seed.
        split_by: ``"image"`` or ``"item"``.
    """
    samples = list(samples)
    groups = [_group_key(_sample_parts(s)[0], i, split_by) for i, s in enumerate(samples)]
    uniq = list(dict.fromkeys(groups))
    if len(uniq) < 2 and split_by == "image":
        return split_samples(samples, val_fraction, seed, "item")
    if len(uniq) < 2:
        raise ConfigError(
            f"need at least 2 training objects to hold some out for validation, got {len(samples)}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    n_val = min(len(uniq) - 1, max(1, round(val_fraction * len(uniq))))
    val_groups = {uniq[i] for i in order[:n_val]}
    train = [s for s, g in zip(samples, groups) if g not in val_groups]
    val = [s for s, g in zip(samples, groups) if g in val_groups]
    return train, val


class EmbeddingStore:
    """Embeddings of the items' keys: one in-memory tensor when small enough, else read per batch.

    Args:
        cache: the embedding cache holding them.
        keys: the embedding keys of the run.
        max_memory_mb: keep them in memory up to this size.
    """

    def __init__(self, cache: EmbeddingCache, keys: Iterable[str], max_memory_mb: int):
        import torch

        self.cache = cache
        self.keys = list(dict.fromkeys(keys))
        self.index = {k: i for i, k in enumerate(self.keys)}
        c = 256
        if self.keys:
            c = int(np.prod(cache.load(self.keys[0], mmap=True).shape))
        self.tensor = None
        if len(self.keys) * c * 4 <= max_memory_mb * 2**20:
            self.tensor = torch.from_numpy(np.stack([cache.load(k) for k in self.keys]))

    def get(self, keys: Sequence[str], device):
        """The embeddings of ``keys`` stacked into one tensor on ``device``.

        Args:
            keys: image keys of the store.
            device: the target device.
        """
        import torch

        if self.tensor is not None:
            idx = torch.as_tensor([self.index[k] for k in keys])
            return self.tensor[idx].to(device, non_blocking=True)
        return torch.from_numpy(np.stack([np.asarray(self.cache.load(k, mmap=True)) for k in keys])).to(
            device
        )


def valid_mask(valid: Sequence[tuple[int, int]], size: int, device):
    """B x size x size bool masks of the un-padded extents ``(h, w)`` of the objects' frames.

    Args:
        valid: per object, the un-padded height and width in the low-resolution frame.
        size: the low-resolution side.
        device: torch device of the result.
    """
    import torch

    v = torch.as_tensor(np.asarray(valid, np.int64), device=device)
    r = torch.arange(size, device=device)
    return (r[None, :, None] < v[:, 0, None, None]) & (r[None, None, :] < v[:, 1, None, None])


def unpack_targets(items: Items, idx: Sequence[int], size: int, device):
    """B x size x size float targets of the items ``idx`` (unpacked from their bits).

    Args:
        items: the objects.
        idx: which of them.
        size: the low-resolution side.
        device: torch device of the result.
    """
    import torch

    t = np.stack([np.unpackbits(items.targets[i], count=size * size) for i in idx]).reshape(-1, size, size)
    return torch.from_numpy(t.astype(np.float32)).to(device)


def prompt_kinds(n: int, point_fraction: float, seed: int, epoch: int) -> np.ndarray:
    """Per object, True for a point prompt (probability ``point_fraction``), else a box; fixed by
    (seed, epoch).

    Args:
        n: number of objects.
        point_fraction: share of point prompts.
        seed: the run's seed.
        epoch: the epoch.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    return rng.random(n) < point_fraction


def random_points(
    items: Items, idx: Sequence[int], arch: SamFamilyAdapter, seed: int, epoch: int
) -> np.ndarray:
    """A random foreground pixel of each object's low-res target, in the model's input frame.

    Args:
        items: the objects.
        idx: which of them, in order.
        arch: the model's family adapter (its frame sizes).
        seed: the run's seed.
        epoch: the epoch (the draw is fixed by seed and epoch).
    """
    rng = np.random.default_rng([seed, epoch, 2])
    size = arch.lowres
    f = arch.img_size / size
    out = []
    for i in idx:
        t = np.unpackbits(items.targets[i], count=size * size).reshape(size, size)
        ys, xs = np.nonzero(t)
        if len(xs) == 0:
            out.append(items.points[i])
            continue
        j = rng.integers(len(xs))
        out.append(np.array([(xs[j] + 0.5) * f - 0.5, (ys[j] + 0.5) * f - 0.5], np.float32))
    return np.stack(out)
