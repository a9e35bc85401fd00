"""Device names: ``auto`` -> ``cuda`` when a GPU is visible, else ``cpu`` (used by models and stages
alike)."""

from __future__ import annotations


def resolve_device(device: str | None = "auto") -> str:
    """The torch device name that ``device`` means.

    Args:
        device: ``"auto"`` / ``None`` (``cuda`` when a GPU is visible, else ``cpu``) or a torch device name.

    Returns:
        The device name, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    """
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
