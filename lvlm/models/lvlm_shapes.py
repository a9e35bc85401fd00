"""``lvlm-shapes``: the small CLIP this library trained itself on generated shapes scenes, shipped in the
package.

It knows 6 colours x 5 shapes (and 3 textures) of :mod:`lvlm.data.synthetic`; it runs offline and is the
CLIP of the embedded text-prompted default (``configs/embedded.yaml``). Model card:
``lvlm/assets/lvlm_shapes/MODEL_CARD.md`` (how it was trained, the exact command and seed).
"""

from __future__ import annotations

from pathlib import Path

from ..registry import register

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "lvlm_shapes"
WEIGHTS = ASSET_DIR / "open_clip_model.safetensors"


@register(
    "clip",
    "lvlm-shapes",
    description="small CLIP trained by lvlm on generated shapes scenes (offline, 160 px)",
    source="bundled: lvlm/assets/lvlm_shapes (trained with `lvlm train clip`, Apache-2.0)",
)
def build_lvlm_shapes(checkpoint: str | None = "default", device: str = "auto"):
    """The bundled shapes CLIP.

    Args:
        checkpoint: ``default`` (the bundled ``open_clip_model.safetensors``), or a retrained one (with its
            ``open_clip_config.json`` beside it); read through :func:`lvlm.weights.load_state_dict`.
        device: torch device (``auto``: CUDA when available).
    """
    from ..errors import WeightsNotFoundError
    from .clip import load_open_clip

    path = Path(WEIGHTS if checkpoint in (None, "default") else checkpoint)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"CLIP lvlm-shapes weights {str(path)!r}: file not found"
            + (
                f" (missing from the package; retrain them with the command in {ASSET_DIR / 'MODEL_CARD.md'})"
                if checkpoint in (None, "default")
                else ""
            )
        )
    return load_open_clip(checkpoint=str(path), device=device, name="lvlm-shapes")
