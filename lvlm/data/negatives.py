"""``negatives``: every sample of another dataset prompted with a class that is absent from its image.

The ground truth is the empty mask, so a pipeline scores IoU 1 when it answers nothing and 0 when it
segments anything: ``1 - mean IoU`` over this dataset is the **false-positive rate**, how often an
absent class gets a confident box / mask (the question open-vocabulary detectors are known to fail)::

    datasets:
      COCO: {name: coco, root: data/coco, selection: data/coco/selection.csv}
      COCO-absent: {name: negatives, of: {name: coco, root: data/coco, selection: data/coco/selection.csv}}
      CXR-absent: {name: negatives, of: {name: cxr, root: data/cxr, n: 100}, prompts: [brain tumor, a dog]}

The absent prompt of a sample is drawn (seeded) from ``prompts`` when given, else from the other samples'
prompts that no sample of the same image carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..registry import build_spec, register
from ..types import Sample
from .base import Dataset, stable_seed


def _image_key(sample: Sample, index: int) -> str:
    img = sample.image
    return str(img) if isinstance(img, (str, bytes)) or hasattr(img, "__fspath__") else f"#{index}"


@register(
    "dataset",
    "negatives",
    description="another dataset's images prompted with absent classes, empty "
    "ground truth (false-positive rate = 1 - mean IoU)",
)
class Negatives(Dataset):
    """Absent-class prompts on another dataset's images.

    Args:
        of: the dataset spec (``{name: coco, root: ...}``) whose images are used.
        prompts: absent prompts to draw from (default: the other samples' prompts not on the same image).
        seed: seed of the draw.
        n: keep a seeded subset of ``n`` samples.
    """

    name = "negatives"

    def __init__(
        self, of: Any, prompts: Sequence[str] | None = None, seed: int = 0, n: int | None = None
    ) -> None:
        if of is None:
            raise ConfigError("negatives: give 'of', the dataset whose images get absent-class prompts")
        self.inner = build_spec("dataset", of)
        samples = list(self.inner)
        on_image: dict[str, set[str]] = {}
        keys = []
        for i, s in enumerate(samples):
            k = _image_key(s, i)
            keys.append(k)
            on_image.setdefault(k, set()).update([s.prompt, *s.prompts])
        pool = list(dict.fromkeys(prompts if prompts else [s.prompt for s in samples]))
        items = []
        for i, s in enumerate(samples):
            allowed = [p for p in pool if p not in on_image[keys[i]]]
            if not allowed:
                continue
            rng = np.random.default_rng(stable_seed("negatives", seed, s.id))
            items.append((i, allowed[int(rng.integers(len(allowed)))]))
        if not items:
            raise ConfigError("negatives: no absent prompt could be drawn (give 'prompts')")
        self._samples = samples
        self._finish(items, n, seed)

    def _load(self, item: Any) -> Sample:
        i, prompt = item
        s = self._samples[i]
        from ..io import load_image

        img = load_image(s.image)
        return Sample(
            id=f"{s.id}~absent",
            image=img,
            prompt=prompt,
            mask=np.zeros(img.shape[:2], bool),
            tags={**s.tags, "negative": True, "present": s.prompt},
        )
