"""The one place where names become objects: ``register`` / ``build`` / ``available``.

A component registers itself with a decorator on its class or builder function::

    @register("generator", "sam", description="SAM automatic mask generator")
    class SamGenerator: ...

and is created by name, with keyword arguments that are exactly its constructor arguments
(this is what a YAML config holds)::

    build("generator", "sam", model_type="vit_b", points_per_side=16)

Component modules live in the sub-packages listed in ``_COMPONENT_PACKAGES``; they are imported
on the first lookup, so adding a component is writing one file in one of those folders.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, UnknownComponentError

KINDS = {
    "generator": "everything-mode mask generators: image -> candidate masks",
    "segmenter": "prompted segmenters: image + boxes/points (or text) -> masks",
    "selector": "selectors: image + text + candidates -> one mask",
    "prompter": "prompters: image + text -> box/point prompts for a segmenter",
    "combine": "combiners: candidates (and a selector's scores) -> the mask and its instances",
    "clip": "CLIP model presets (image/text encoders with their preprocessing)",
    "saliency": "saliency (CAM) methods on CLIP: image + text -> heat map",
    "crf": "dense CRF backends refining a saliency map",
    "dataset": "dataset loaders: samples of image, prompt, ground-truth mask",
}

_COMPONENT_PACKAGES = (
    "lvlm.models",
    "lvlm.generators",
    "lvlm.segmenters",
    "lvlm.selectors",
    "lvlm.combiners",
    "lvlm.data",
)


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Callable[..., Any]
    description: str
    source: str = ""  # where weights come from / what it wraps (shown by `lvlm list`)


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_loaded = False
_load_errors: dict[str, str] = {}


def register(kind: str, name: str, description: str = "", source: str = ""):
    """Decorator registering a class or builder function under ``(kind, name)``.

    Args:
        kind: the component kind, one of ``KINDS`` (``generator``, ``segmenter``, ``selector``, ...).
        name: the name configs and ``build`` use; registering another object under it raises ValueError.
        description: one line for ``lvlm list``; empty takes the first line of the object's docstring.
        source: where its weights come from or what it wraps, shown by ``lvlm list``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")

    def deco(obj):
        table = _REGISTRY[kind]
        if name in table and table[name].obj is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name].obj} and {obj})")
        desc = description or (inspect.getdoc(obj) or "").strip().splitlines()[0:1]
        if isinstance(desc, list):
            desc = desc[0] if desc else ""
        table[name] = Entry(kind, name, obj, desc, source)
        return obj

    return deco


def _load_components() -> None:
    """Import every module of the component packages once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for pkg_name in _COMPONENT_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            mod = f"{pkg_name}.{info.name}"
            try:
                importlib.import_module(mod)
            except ImportError as exc:  # an optional dependency of that module is missing
                _load_errors[mod] = str(exc)


def available(kind: str) -> list[str]:
    """Sorted registered names of one kind.

    Args:
        kind: the component kind, one of ``KINDS``.
    """
    _check_kind(kind)
    _load_components()
    return sorted(_REGISTRY[kind])


def entries(kind: str | None = None) -> list[Entry]:
    """Registry entries (all kinds when ``kind`` is None), sorted by kind then name.

    Args:
        kind: one component kind, or None for all of them.
    """
    _load_components()
    kinds = [kind] if kind else list(KINDS)
    for k in kinds:
        _check_kind(k)
    return [_REGISTRY[k][n] for k in kinds for n in sorted(_REGISTRY[k])]


def get(kind: str, name: str) -> Entry:
    """The registry entry for ``(kind, name)``; unknown names list the valid ones.

    Args:
        kind: the component kind, one of ``KINDS``.
        name: the registered name.
    """
    _check_kind(kind)
    _load_components()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY[kind])) or "(none registered)"
        raise UnknownComponentError(f"unknown {kind} {name!r}; valid {kind} names: {valid}") from None


def build(kind: str, name: str, **kwargs: Any) -> Any:
    """Create the registered component ``(kind, name)`` with constructor arguments ``kwargs``.

    Keys that the constructor does not take raise a :class:`ConfigError` naming the key and
    the valid ones, before anything is built.

    Args:
        kind: the component kind, one of ``KINDS``.
        name: the registered name.
        **kwargs: constructor arguments (a config's keys).
    """
    entry = get(kind, name)
    check_kwargs(entry.obj, kwargs, where=f"{kind} {name!r}")
    return entry.obj(**kwargs)


def build_spec(kind: str, spec: Any) -> Any:
    """Build from a config spec: a name, a ``{"name": ..., **kwargs}`` dict, or an already-built object.

    Args:
        kind: the component kind, one of ``KINDS``.
        spec: a registered name, a dict with a ``name`` key plus constructor arguments, an object (returned as
            is) or None (returns None).
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        return build(kind, spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("name", None)
        if name is None:
            raise ConfigError(
                f"{kind} config {spec!r} has no 'name' key; valid names: {', '.join(available(kind))}"
            )
        return build(kind, name, **spec)
    return spec  # an object built by the caller


def check_kwargs(obj: Callable[..., Any], kwargs: dict[str, Any], where: str) -> None:
    """Raise ConfigError for keys that ``obj``'s signature does not accept.

    Args:
        obj: a class (its ``__init__`` is checked) or a callable.
        kwargs: the keys to check.
        where: what the error message names (e.g. ``selector 'clip'``).
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = [p for p in sig.parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    bad = [k for k in kwargs if k not in valid]
    if bad:
        raise ConfigError(
            f"{where}: unknown config key{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; "
            f"valid keys: {', '.join(valid) or '(none)'}"
        )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownComponentError(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def load_errors() -> dict[str, str]:
    """Component modules that could not be imported (missing optional dependency), with the reason."""
    _load_components()
    return dict(_load_errors)
