"""Exceptions a user sees: each one says what went wrong and what to do about it."""

from __future__ import annotations


class LvlmError(Exception):
    """Base class of every error raised on purpose by lvlm."""


class ConfigError(LvlmError, ValueError):
    """A config names an unknown key or holds a bad value."""


class UnknownComponentError(ConfigError, KeyError):
    """A component name that is not registered (the message lists the valid names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ImageError(LvlmError, ValueError):
    """An image that cannot be read or used (corrupt, empty, too large, ...)."""


class PromptError(LvlmError, ValueError):
    """A box or point prompt that is malformed or lies outside the image."""


class WeightsError(LvlmError):
    """A weight file (or hub model) that cannot be loaded: missing, empty, truncated, not a checkpoint,
    refused by ``torch.load(weights_only=True)``, gated, or holding the wrong keys or shapes.

    The message is one line naming the file (or hub id), the model it was meant for and what is wrong.
    """


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """Model weights that are not on disk and cannot be downloaded now."""


class MissingDependencyError(LvlmError, ImportError):
    """An optional dependency is not installed (the message names the extra)."""
