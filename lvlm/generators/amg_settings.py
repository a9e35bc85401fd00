"""The automatic-mask-generator knobs shared by ``sam``, ``mobilesam``, ``litemedsam``, ``sam_fast``,
``sam2`` and ``sam2_fast``: one dataclass, one :meth:`AmgSettings.validate` with one rule per knob.

The names, meanings and defaults are segment_anything's ``SamAutomaticMaskGenerator`` (and SAM 2's, which
adds ``mask_threshold``); each generator keeps them as constructor keyword arguments (config keys) and builds
an :class:`AmgSettings` from them, so a bad value fails the same way everywhere, before any model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..errors import ConfigError

#: the knobs segment_anything's SamAutomaticMaskGenerator takes (SAM 2's adds ``mask_threshold``)
SAM_KNOBS = (
    "points_per_side",
    "points_per_batch",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "crop_n_layers",
    "crop_nms_thresh",
    "crop_overlap_ratio",
    "crop_n_points_downscale_factor",
    "point_grids",
    "min_mask_region_area",
)


def _is_int(val: Any) -> bool:
    return isinstance(val, (int, np.integer)) and not isinstance(val, (bool, np.bool_))


def _is_number(val: Any) -> bool:
    return isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, (bool, np.bool_))


def check_positive_int(name: str, val: Any) -> int:
    """``val`` as an int >= 1 (a bool is not an integer here), else ConfigError naming ``name``.

    Args:
        name: the setting's name, for the error.
        val: the value to check.
    """
    if not _is_int(val) or val < 1:
        raise ConfigError(f"{name}={val!r}: expected a positive integer")
    return int(val)


def check_nonnegative_int(name: str, val: Any) -> int:
    """``val`` as an int >= 0, else ConfigError naming ``name``.

    Args:
        name: the setting's name, for the error.
        val: the value to check.
    """
    if not _is_int(val) or val < 0:
        raise ConfigError(f"{name}={val!r}: expected an integer >= 0")
    return int(val)


def check_fraction(name: str, val: Any) -> float:
    """``val`` as a float in [0, 1], else ConfigError naming ``name``.

    Args:
        name: the setting's name, for the error.
        val: the value to check.
    """
    if not _is_number(val) or not 0.0 <= float(val) <= 1.0:
        raise ConfigError(f"{name}={val!r}: expected a number in [0, 1]")
    return float(val)


def check_number(name: str, val: Any, minimum: float | None = None) -> float:
    """``val`` as a float (>= ``minimum`` when given), else ConfigError naming ``name``.

    Args:
        name: the setting's name, for the error.
        val: the value to check.
        minimum: the smallest allowed value, or None.
    """
    if not _is_number(val) or (minimum is not None and float(val) < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ConfigError(f"{name}={val!r}: expected a number{bound}")
    return float(val)


@dataclass
class AmgSettings:
    """The automatic-mask-generator knobs, validated (see segment_anything's ``SamAutomaticMaskGenerator``).

    Args:
        points_per_side: points along one side of the prompt grid (``None`` when ``point_grids`` is given).
        points_per_batch: point prompts per mask-decoder call.
        pred_iou_thresh: keep masks whose predicted IoU is above this, in [0, 1].
        stability_score_thresh: keep masks whose stability score is at least this, in [0, 1].
        stability_score_offset: the logit offset of the stability score, >= 0.
        box_nms_thresh: box IoU of the NMS within a crop, in [0, 1].
        crop_n_layers: layers of image crops (0: the whole image only), >= 0.
        crop_nms_thresh: box IoU of the NMS between crops, in [0, 1].
        crop_overlap_ratio: overlap of neighbouring crops, in [0, 1].
        crop_n_points_downscale_factor: the grid of crop layer n has ``points_per_side / factor**n`` points,
            >= 1.
        min_mask_region_area: holes and islands smaller than this (pixels) are removed, >= 0.
        mask_threshold: the logit threshold of a mask (SAM 2's knob; SAM's is fixed at 0).
        point_grids: explicit normalised point grids, one per crop layer (instead of ``points_per_side``).
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    mask_threshold: float = 0.0
    point_grids: Sequence[Any] | None = None

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]) -> AmgSettings:
        """The validated settings from a generator's keyword arguments (``locals()`` of its constructor; keys
        that are no knob, such as ``checkpoint``, are ignored; knobs it lacks keep their defaults).

        Args:
            knobs: a mapping holding some of this dataclass's field names.
        """
        return cls(**{f.name: knobs[f.name] for f in fields(cls) if f.name in knobs}).validate()

    def validate(self) -> AmgSettings:
        """Check every knob (ConfigError naming the key, its value and the valid range); normalise the types.

        Returns:
            ``self``, with ints as ``int``, numbers as ``float`` and point grids as N x 2 float64 arrays.
        """
        if (self.points_per_side is None) == (self.point_grids is None):
            raise ConfigError("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None:
            self.points_per_side = check_positive_int("points_per_side", self.points_per_side)
        self.points_per_batch = check_positive_int("points_per_batch", self.points_per_batch)
        self.crop_n_points_downscale_factor = check_positive_int(
            "crop_n_points_downscale_factor", self.crop_n_points_downscale_factor
        )
        self.crop_n_layers = check_nonnegative_int("crop_n_layers", self.crop_n_layers)
        self.min_mask_region_area = check_nonnegative_int("min_mask_region_area", self.min_mask_region_area)
        for name in (
            "pred_iou_thresh",
            "stability_score_thresh",
            "box_nms_thresh",
            "crop_nms_thresh",
            "crop_overlap_ratio",
        ):
            setattr(self, name, check_fraction(name, getattr(self, name)))
        self.stability_score_offset = check_number("stability_score_offset", self.stability_score_offset, 0.0)
        self.mask_threshold = check_number("mask_threshold", self.mask_threshold)
        if self.point_grids is not None:
            try:
                self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in self.point_grids]
            except (TypeError, ValueError):
                raise ConfigError(
                    "point_grids: expected a list of N x 2 arrays of points in [0, 1]"
                ) from None
            if len(self.point_grids) < self.crop_n_layers + 1:
                raise ConfigError(
                    f"point_grids has {len(self.point_grids)} grid(s); "
                    f"crop_n_layers={self.crop_n_layers} needs {self.crop_n_layers + 1}"
                )
        return self

    def kwargs(self, *extra: str) -> dict[str, Any]:
        """The knobs segment_anything's ``SamAutomaticMaskGenerator`` takes, plus ``extra`` ones (e.g.
        ``"mask_threshold"`` for SAM 2's), as keyword arguments.

        Args:
            *extra: further setting names to include.
        """
        d = asdict(self)
        return {k: d[k] for k in (*SAM_KNOBS, *extra)}
