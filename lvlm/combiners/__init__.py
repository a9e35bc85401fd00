"""Combiners: the last stage, candidates (and a selector's scores) -> the result's mask and instances.

Every pipeline ends in one combiner (``combine:`` in a config, a name or ``{name: ..., **kwargs}``):

- ``best``: the selector's choice, or the candidate with the highest score without a selector;
- ``union``: the union of every candidate (the masks of several box prompts);
- ``merge``: the best candidate plus near-best ones that add new area (two lungs that SAM returns apart);
- ``instances``: every candidate as an instance (score threshold, mask NMS), the mask is their union;
- ``clipseg_refine``: another combiner's mask refined by CLIPSeg's probability map for the text.

A combiner is a class registered under the ``combine`` kind with a ``combine`` method (see
:class:`Combiner`); the modules of this package register themselves on the first registry lookup.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import Candidates, Selection


class Combiner:
    """Candidates of one image (and the selector's answer, when a selector ran) -> mask and instances.

    Class attributes:
        standalone: True when the combiner gives a useful result for an everything-mode generator without a
            selector (and without a text prompt): ``instances`` does, picking one mask does not.
        needs_text: True when the combiner itself reads the text prompt (``clipseg_refine``).
    """

    standalone = False
    needs_text = False

    def combine(
        self, image: np.ndarray, text: str | None, candidates: Candidates, selection: Selection | None = None
    ) -> Selection:
        """The combined answer: ``mask`` (H x W bool), ``score``, ``index`` and ``instances``.

        Args:
            image: the H x W x 3 uint8 input image.
            text: the text prompt, or None (box / point prompts, everything mode).
            candidates: the candidate masks of the image.
            selection: the selector's answer (its ``scores`` rate every candidate), or None without a
                selector.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def default_combine(has_selector: bool) -> str:
    """The combiner used when a config names none: the selector's choice, else the union of the masks.

    Args:
        has_selector: whether the pipeline has a selector.
    """
    return "best" if has_selector else "union"


def candidate_scores(candidates: Candidates, selection: Selection | None) -> np.ndarray:
    """The score of every candidate: the selector's where it ran and rated them all, else the producer's.

    Args:
        candidates: the candidate masks.
        selection: the selector's answer, or None.
    """
    if selection is not None and selection.scores is not None and len(selection.scores) == len(candidates):
        return np.asarray(selection.scores, np.float32)
    return np.asarray(candidates.scores, np.float32)


__all__: list[Any] = ["Combiner", "candidate_scores", "default_combine"]
