"""lvlm: zero-shot, text-prompted image segmentation by composing off-the-shelf foundation models.

    from lvlm import Pipeline
    pipe = Pipeline.from_config("embedded")
    result = pipe("image.png", "a red triangle")
    result.mask  # H x W bool at the input resolution
"""
__version__ = "0.1.0"

from .errors import (  # noqa: E402
    ConfigError,
    ImageError,
    LvlmError,
    MissingDependencyError,
    PromptError,
    UnknownComponentError,
    WeightsError,
    WeightsNotFoundError,
)
from .io import load_image, save_mask  # noqa: E402
from .pipeline import Pipeline  # noqa: E402
from .registry import available, build, register  # noqa: E402
from .types import Candidates, Prompts, Result, Selection  # noqa: E402

__all__ = [
    "Pipeline", "Candidates", "Prompts", "Result", "Selection", "register", "build", "available",
    "load_image", "save_mask", "LvlmError", "ConfigError", "ImageError", "PromptError",
    "UnknownComponentError", "WeightsError", "WeightsNotFoundError", "MissingDependencyError", "__version__",
]
