"""lvlm: zero-shot, text-prompted image segmentation by composing off-the-shelf foundation models.

from lvlm import Pipeline
pipe = Pipeline.from_config("embedded")
result = pipe("image.png", "a red triangle")
result.mask  # H x W bool at the input resolution
"""

__version__ = "0.1.0"

from .errors import (
    ConfigError,
    ImageError,
    LvlmError,
    MissingDependencyError,
    PromptError,
    UnknownComponentError,
    WeightsError,
    WeightsNotFoundError,
)
from .io import load_image, save_mask
from .pipeline import Pipeline
from .registry import available, build, register
from .types import Candidates, Prompts, Result, Selection

__all__ = [
    "Candidates",
    "ConfigError",
    "ImageError",
    "LvlmError",
    "MissingDependencyError",
    "Pipeline",
    "PromptError",
    "Prompts",
    "Result",
    "Selection",
    "UnknownComponentError",
    "WeightsError",
    "WeightsNotFoundError",
    "__version__",
    "available",
    "build",
    "load_image",
    "register",
    "save_mask",
]
