"""``clipseg_refine``: another combiner's mask refined by CLIPSeg's probability map for the text prompt."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, PromptError
from ..registry import build, build_spec, register
from ..types import Instances, Selection
from . import Combiner, default_combine

MODES = ("intersect", "union", "weighted", "overlap")


@register(
    "combine",
    "clipseg_refine",
    description="another combiner's mask refined by CLIPSeg for the text "
    "(intersect / union / weighted / overlap)",
    source="https://huggingface.co/CIDAS/clipseg-rd64-refined",
)
class ClipSegRefine(Combiner):
    """The pipeline's mask (from ``base``, e.g. SAM + CLIP's choice) combined with CLIPSeg's mask for the
    text.

    ``mode``: ``intersect`` (pixels both agree on), ``union``, ``weighted``
    (``weight * p_clipseg + (1 - weight) * base > threshold``) or ``overlap`` (the connected parts of the
    base mask of which at least ``min_overlap`` lies inside the CLIPSeg mask: the base's boundaries,
    CLIPSeg's decision of which parts match the text).

    Args:
        base: the combiner whose mask is refined (a name or ``{name: ..., **kwargs}``); default ``best`` with
            a selector, else ``union``.
        model: CLIPSeg weights: a Hugging Face id, a ``save_pretrained`` directory or ``tiny-random``.
        decoder_checkpoint: decoder weights from ``lvlm train clipseg``.
        threshold: on CLIPSeg's probabilities.
        image_size: CLIPSeg's input side (default: the checkpoint's).
        device: where CLIPSeg runs.
        mode: how the two masks combine (above).
        weight: CLIPSeg's weight in ``weighted`` mode.
        min_overlap: the fraction of a base component inside the CLIPSeg mask for ``overlap`` mode to keep it.
    """

    needs_text = True

    def __init__(
        self,
        base: Any = None,
        model: str = "CIDAS/clipseg-rd64-refined",
        decoder_checkpoint: str | None = None,
        threshold: float = 0.5,
        image_size: int | None = None,
        device: str = "auto",
        mode: str = "intersect",
        weight: float = 0.5,
        min_overlap: float = 0.5,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"clipseg_refine mode={mode!r}; valid values: {', '.join(MODES)}")
        if not 0.0 <= float(weight) <= 1.0:
            raise ConfigError(f"clipseg_refine weight={weight!r}: must lie in [0, 1]")
        if (
            isinstance(base, (str, dict))
            and (base if isinstance(base, str) else base.get("name")) == "clipseg_refine"
        ):
            raise ConfigError(
                "clipseg_refine base: give the combiner whose mask is refined (best, union, merge, ...)"
            )
        self.base_spec = base
        self._base = {}
        self.mode = mode
        self.clipseg = build(
            "segmenter",
            "clipseg",
            model=model,
            decoder_checkpoint=decoder_checkpoint,
            threshold=threshold,
            image_size=image_size,
            device=device,
            refine_weight=float(weight),
            min_overlap=float(min_overlap),
        )

    def base(self, has_selector: bool) -> Combiner:
        """The combiner whose mask is refined.

        Args:
            has_selector: whether the pipeline's selector ran (chooses the default).
        """
        spec = self.base_spec if self.base_spec is not None else default_combine(has_selector)
        key = repr(spec) if self.base_spec is None else "given"
        if key not in self._base:
            self._base[key] = build_spec("combine", spec)
        return self._base[key]

    def combine(self, image, text, candidates, selection=None):
        if not text or not str(text).strip():
            raise PromptError("clipseg_refine needs a text prompt (CLIPSeg refines the mask for the text)")
        base = self.base(selection is not None).combine(image, text, candidates, selection)
        refined = np.asarray(self.clipseg.refine_mask(image, text, base.mask, mode=self.mode), bool)
        extra = dict(base.extra)
        extra["refine_base"] = base.mask
        h, w = refined.shape
        inst = (
            Instances(refined[None], None, [base.score], [text]) if refined.any() else Instances.empty(h, w)
        )
        return Selection(refined, base.score, base.index, base.scores, extra, inst)

    def __repr__(self) -> str:
        return f"ClipSegRefine(mode={self.mode!r}, base={self.base_spec!r}, clipseg={self.clipseg!r})"
