"""``mobilesam``: the ``sam`` automatic mask generator on MobileSAM (TinyViT encoder, SAM decoder)."""

from __future__ import annotations

from ..models.sam import signature_without
from ..registry import register
from .sam import SamGenerator


@register(
    "generator",
    "mobilesam",
    description="MobileSAM automatic mask generator (everything mode)",
    source="MobileSAM weights mobile_sam.pt from github.com/ChaoningZhang/MobileSAM (Apache-2.0)",
)
class MobileSamGenerator(SamGenerator):
    """:class:`~lvlm.generators.sam.SamGenerator` with ``model_type="mobilesam"``; same keys and defaults
    otherwise.

    Args:
        checkpoint: ``default`` (the official MobileSAM weights), a path, or None / ``random``.
        device: ``auto``, ``cpu``, ``cuda``...
        **knobs: the other :class:`~lvlm.generators.sam.SamGenerator` arguments.
    """

    def __init__(self, checkpoint="default", device="auto", **knobs) -> None:
        super().__init__(model_type="mobilesam", checkpoint=checkpoint, device=device, **knobs)

    # the config keys are SamGenerator's less model_type (so unknown keys are still reported by name)
    __init__.__signature__ = signature_without(SamGenerator.__init__, "model_type")
