"""Prompter ``detector``: text -> open-vocabulary detector boxes -> any prompted segmenter (Grounded-SAM
style).

The detector -> SAM family of Grounded-SAM (Ren et al., 2024) and lang-segment-anything: a text-conditioned
detector (GroundingDINO, MM-GroundingDINO / LLMDet, OWLv2, OmDet-Turbo; :mod:`lvlm.models.detectors`)
turns the prompt into boxes, and every box goes to a prompted segmenter (sam, sam2, medsam, mobilesam,
litemedsam) in one decoder call::

    prompter:  {name: detector, model: grounding-dino-tiny, threshold: 0.3, text_threshold: 0.25}
    segmenter: {name: sam2}
    combine: union

A prompt may name several classes separated by ``.`` or ``;`` (``"cat. dog"``). :meth:`prompts_many`
runs a batch of images through the detector in one forward (``Pipeline.run_many`` calls it per chunk).
An image where nothing passes the thresholds gets no boxes, so the pipeline returns an empty mask with
an ``EmptyMaskWarning``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..components import Prompter, resolve_device
from ..errors import ConfigError, PromptError
from ..models.detectors import (
    DEFAULT_NMS,
    DEFAULT_TEXT_THRESHOLD,
    DEFAULT_THRESHOLD,
    PRESETS,
    SEPARATORS,
    Detections,
    load_detector,
    nms_and_top,
    split_classes,
)
from ..registry import register
from ..types import Prompts

_UNSET: Any = "default"


@register(
    "prompter",
    "detector",
    description="text -> open-vocabulary detector boxes (GroundingDINO, OWLv2, OmDet-Turbo) for a segmenter",
    source="transformers: " + ", ".join(sorted(set(PRESETS.values()))),
)
class DetectorPrompter(Prompter):
    """Box prompts from an open-vocabulary detector, with the score and the class of each box.

    Args:
        model: a preset (``grounding-dino-tiny``, ``grounding-dino-base``, ``mm-grounding-dino-tiny``,
            ``llmdet-tiny``, ``owlv2-base``, ``omdet-turbo``), a Hugging Face id, a ``save_pretrained``
            folder, or ``tiny-random-grounding-dino`` / ``tiny-random-owlv2`` / ``tiny-random-omdet-turbo``
            (tests).
        threshold: box score threshold; ``default``: GroundingDINO 0.3 (lang-sam's box threshold), OWLv2 0.1,
            OmDet-Turbo 0.3 (transformers' post-processing defaults).
        text_threshold: GroundingDINO: a box's class is the phrase of its most probable token when that
            probability exceeds it (0.25, as lang-sam), else the box matched no class; others ignore it.
        drop_unmatched: drop the boxes that matched no class (default false: every box above ``threshold``
            is kept, as lang-sam and transformers' post-processing keep them).
        nms: IoU of a non-maximum suppression after the detector, or None; ``default``: none for GroundingDINO
            and OWLv2 (as their references), 0.5 for OmDet-Turbo (its post-processing's per-class NMS).
        class_agnostic_nms: suppress overlapping boxes across classes too.
        max_boxes: keep at most this many boxes per image (highest scores); None keeps all.
        min_box_size: drop boxes (after clipping to the image) with a side shorter than this many pixels.
        lowercase: GroundingDINO prompts in lower case (as it was trained).
        separators: characters that separate several classes in one prompt.
        batch_size: images per detector forward in :meth:`prompts_many`.
        revision: hub revision to pin.
        device: ``auto`` (GPU when visible), ``cpu``, ``cuda``...
        seed: initialisation seed of the ``tiny-random-*`` models.
    """

    def __init__(
        self,
        model: str = "grounding-dino-tiny",
        threshold: Any = _UNSET,
        text_threshold: float = DEFAULT_TEXT_THRESHOLD,
        drop_unmatched: bool = False,
        nms: Any = _UNSET,
        class_agnostic_nms: bool = False,
        max_boxes: int | None = None,
        min_box_size: float = 1.0,
        lowercase: bool = True,
        separators: str = SEPARATORS,
        batch_size: int = 8,
        revision: str | None = None,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        if max_boxes is not None and (isinstance(max_boxes, bool) or int(max_boxes) < 1):
            raise ConfigError(f"detector max_boxes={max_boxes!r}: must be a positive integer or null")
        if int(batch_size) < 1:
            raise ConfigError(f"detector batch_size={batch_size!r}: must be >= 1")
        if not separators:
            raise ConfigError("detector separators: give at least one character (e.g. '.;')")
        self.device = resolve_device(device)
        self.detector = load_detector(model, revision=revision, device=self.device, seed=seed)
        family = self.detector.family
        self.family = family
        self.threshold = DEFAULT_THRESHOLD[family] if threshold == _UNSET else float(threshold)
        self.text_threshold = float(text_threshold)
        self.drop_unmatched = bool(drop_unmatched)
        self.nms = DEFAULT_NMS[family] if nms == _UNSET else (None if nms is None else float(nms))
        for key, val in (
            ("threshold", self.threshold),
            ("text_threshold", self.text_threshold),
            ("nms", self.nms),
        ):
            if val is not None and not 0.0 <= val <= 1.0:
                raise ConfigError(f"detector {key}={val!r}: must lie in [0, 1]")
        self.class_agnostic_nms = bool(class_agnostic_nms)
        self.max_boxes = None if max_boxes is None else int(max_boxes)
        self.min_box_size = float(min_box_size)
        self.lowercase = bool(lowercase)
        self.separators = str(separators)
        self.batch_size = int(batch_size)
        self.model_name = str(model)

    def classes(self, text: str) -> list[str]:
        """The class phrases of a prompt (``"cat. dog"`` -> ``["cat", "dog"]``).

        Args:
            text: the text prompt.
        """
        if not isinstance(text, str) or not text.strip():
            raise PromptError("the detector prompter needs a non-empty text prompt (e.g. 'a cat. a dog')")
        return split_classes(text, self.separators)

    def detect_many(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[Detections]:
        """The filtered :class:`Detections` of each image (clipped to the image, NMS, ``max_boxes``).

        Args:
            images: H x W x 3 uint8 images.
            texts: one text prompt per image.
        """
        classes = [self.classes(t) for t in texts]
        out: list[Detections] = []
        for s in range(0, len(images), self.batch_size):
            imgs = list(images[s : s + self.batch_size])
            cls = classes[s : s + self.batch_size]
            dets = self.detector.detect(
                imgs,
                cls,
                threshold=self.threshold,
                text_threshold=self.text_threshold,
                nms=self.nms if self.family == "omdet_turbo" else None,
                lowercase=self.lowercase,
            )
            for im, det in zip(imgs, dets):
                out.append(self._filter(det, im.shape[:2]))
        return out

    def _filter(self, det: Detections, size: tuple[int, int]) -> Detections:
        h, w = size
        if self.drop_unmatched and len(det):
            det = det.subset(np.flatnonzero(det.labels >= 0))
        if len(det):
            det.boxes[:, [0, 2]] = det.boxes[:, [0, 2]].clip(0, w)
            det.boxes[:, [1, 3]] = det.boxes[:, [1, 3]].clip(0, h)
            side = np.minimum(det.boxes[:, 2] - det.boxes[:, 0], det.boxes[:, 3] - det.boxes[:, 1])
            det = det.subset(np.flatnonzero(side >= max(self.min_box_size, 1e-6)))
        nms = (
            None if self.family == "omdet_turbo" else self.nms
        )  # OmDet-Turbo's post-processing ran it already
        return nms_and_top(det, nms, self.max_boxes, self.class_agnostic_nms)

    @staticmethod
    def _as_prompts(det: Detections, text: str) -> tuple[Prompts, dict[str, Any]]:
        extra = {"detector_scores": det.scores, "detector_labels": det.text_labels, "detections": det}
        labels = [lab or text for lab in det.text_labels]  # a box that matched no class carries the prompt
        return Prompts(boxes=det.boxes, text=text, labels=labels), extra

    def prompts(self, image: np.ndarray, text: str) -> tuple[Prompts, dict[str, Any]]:
        """Box prompts (K x 4, input pixels) for one image; extras ``detector_scores`` / ``detector_labels``.

        Args:
            image: an H x W x 3 uint8 image.
            text: the text prompt.
        """
        return self._as_prompts(self.detect_many([image], [text])[0], text)

    def prompts_many(
        self, images: Sequence[np.ndarray], texts: Sequence[str]
    ) -> list[tuple[Prompts, dict[str, Any]]]:
        """:meth:`prompts` for a batch of images, ``batch_size`` images per detector forward.

        Args:
            images: H x W x 3 uint8 images.
            texts: one text prompt per image.
        """
        if len(images) != len(texts):
            raise ConfigError(f"{len(images)} images but {len(texts)} prompts")
        return [self._as_prompts(d, t) for d, t in zip(self.detect_many(images, texts), texts)]

    def __repr__(self) -> str:
        return (
            f"DetectorPrompter(model={self.model_name!r}, family={self.family!r}, "
            f"threshold={self.threshold}, nms={self.nms}, max_boxes={self.max_boxes})"
        )
