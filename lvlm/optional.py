"""Lazy imports of optional dependencies with one clear message naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# import name -> (pip extra of lvlm, pip package)
EXTRAS = {
    "sam2": ("sam2", "sam2"),
    "open_clip": ("clip", "open_clip_torch"),
    "pytorch_grad_cam": ("cam", "grad-cam"),
    "pydensecrf": ("crf", "pydensecrf2"),
    "pydensecrf.densecrf": ("crf", "pydensecrf2"),
    "transformers": ("clipseg", "transformers"),
    "pandas": ("bench", "pandas"),
    "matplotlib": ("bench", "matplotlib"),
    "matplotlib.pyplot": ("bench", "matplotlib"),
    "pycocotools": ("bench", "pycocotools"),
    "pycocotools.mask": ("bench", "pycocotools"),
    "tifffile": ("bench", "tifffile"),
    "skimage": ("bench", "scikit-image"),
    "ray": ("ray", "ray"),
    "medclip": ("medclip", "medclip"),
    "cv2": ("sam2", "opencv-python-headless"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "onnx": ("onnx", "onnx"),
    "fastapi": ("serve", "fastapi"),
    "uvicorn": ("serve", "uvicorn"),
    "python_multipart": ("serve", "python-multipart"),
}


def require(module: str, feature: str = "") -> ModuleType:
    """Import ``module`` or raise MissingDependencyError telling which extra provides it.

    Args:
        module: the module to import (e.g. ``open_clip``).
        feature: what needs it, named in the error message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, pkg = EXTRAS.get(module, (None, module.split(".")[0]))
        what = f" (needed for {feature})" if feature else ""
        hint = f'pip install "lvlm[{extra}]"' if extra else f"pip install {pkg}"
        raise MissingDependencyError(
            f"{pkg} is not installed{what}; install it with: {hint}  [{exc}]"
        ) from exc


def has(module: str) -> bool:
    """True when ``module`` imports.

    Args:
        module: the module to try to import.
    """
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False
