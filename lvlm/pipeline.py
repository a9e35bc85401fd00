"""``Pipeline``: composes registered stages from a config and runs image + prompt -> mask.

A config is a dict (or a YAML file) whose top-level keys name the stages and whose values are
``{"name": <registered name>, **constructor arguments}``::

    generator: {name: sam, model_type: vit_h}      # everything mode -> candidates
    selector:  {name: clip, model: OA-RN50}        # text -> the matching candidate

    prompter:  {name: saliency, clip: OA-RN50}     # text -> box prompts
    segmenter: {name: medsam}                      # boxes -> masks (union)

    segmenter: {name: litemedsam}                  # user boxes / points -> masks
"""
from __future__ import annotations

import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ConfigError, LvlmError
from .io import ImageLike, load_image
from .registry import build_spec
from .types import Candidates, Prompts, Result

STAGES = ("generator", "prompter", "segmenter", "selector")
TOP_LEVEL_KEYS = STAGES + ("combine", "description")
COMBINE = ("union", "best")

CONFIG_DIR = Path(__file__).parent / "configs"


class EmptyMaskWarning(UserWarning):
    """A prompt matched nothing: the result mask is empty."""


def find_config(name: str | os.PathLike) -> Path:
    """A config path: an existing file, or a name under the packaged ``configs/`` (``.yaml`` optional)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    shipped = sorted(str(c.relative_to(CONFIG_DIR).with_suffix("")) for c in CONFIG_DIR.rglob("*.yaml"))
    raise ConfigError(f"config {str(name)!r} not found (as a file or a packaged config); packaged configs: {', '.join(shipped)}")


def load_config(config: str | os.PathLike | dict) -> dict:
    """A config dict from a dict, a YAML path or a packaged config name (``yaml.safe_load`` only)."""
    if isinstance(config, dict):
        return dict(config)
    import yaml

    path = find_config(config)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of stage -> settings, got {type(data).__name__}")
    return data


class Pipeline:
    """image + prompt -> generator | (prompter ->) segmenter -> candidates -> selector -> mask."""

    def __init__(self, generator=None, prompter=None, segmenter=None, selector=None,
                 combine: str = "union", description: str = "") -> None:
        if generator is None and segmenter is None:
            raise ConfigError("a pipeline needs a 'generator' (everything mode) or a 'segmenter' (prompted)")
        if generator is not None and segmenter is not None:
            raise ConfigError("give either a 'generator' or a 'segmenter', not both")
        if prompter is not None and segmenter is None:
            raise ConfigError("a 'prompter' needs a 'segmenter' to turn its prompts into masks")
        if generator is not None and selector is None:
            raise ConfigError("an everything-mode 'generator' needs a 'selector' to pick the mask for the text")
        if combine not in COMBINE:
            raise ConfigError(f"combine={combine!r}; valid values: {', '.join(COMBINE)}")
        self.generator = generator
        self.prompter = prompter
        self.segmenter = segmenter
        self.selector = selector
        self.combine = combine
        self.description = description
        self.config: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: str | os.PathLike | dict, **overrides: Any) -> "Pipeline":
        """Build from a YAML path, a packaged config name (e.g. ``"embedded"``) or a dict.

        ``overrides`` replace top-level keys (e.g. ``segmenter={"name": "litemedsam", "device": "cpu"}``).
        """
        cfg = load_config(config)
        cfg.update(overrides)
        bad = [k for k in cfg if k not in TOP_LEVEL_KEYS]
        if bad:
            raise ConfigError(f"unknown top-level config key(s) {', '.join(map(repr, bad))}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
        stages = {k: build_spec(k, cfg.get(k)) for k in STAGES}
        pipe = cls(**stages, combine=cfg.get("combine", "union"), description=cfg.get("description", ""))
        pipe.config = cfg
        return pipe

    @property
    def needs_text(self) -> bool:
        return self.selector is not None or self.prompter is not None or bool(
            getattr(self.segmenter, "text_conditioned", False))

    def __call__(self, image: ImageLike, prompt: str | None = None, box: Sequence[float] | np.ndarray | None = None,
                 point: Sequence[float] | np.ndarray | None = None, point_label: Sequence[int] | None = None) -> Result:
        """Segment ``image`` for the text ``prompt`` (and/or user ``box`` / ``point`` prompts).

        ``box``: xyxy, or K x 4 for K masks; ``point``: (x, y), or P x 2 points of one prompt.
        """
        timings: dict[str, float] = {}
        with _timed(timings, "load"):
            img = load_image(image)
        h, w = img.shape[:2]
        user = None
        if box is not None or point is not None:
            user = Prompts(boxes=box, points=point, point_labels=point_label, text=prompt)
        if prompt is None and user is None:
            raise LvlmError("give a text prompt" + (" or a box / point prompt" if self.segmenter is not None else ""))
        if prompt is None and self.needs_text and user is None:
            raise LvlmError("this pipeline is text-prompted: give a text prompt")
        extra: dict[str, Any] = {}
        prompts = None
        if self.generator is not None:
            with _timed(timings, "generator"):
                candidates = self.generator.generate(img)
        else:
            if user is not None:
                prompts = user
            elif self.prompter is not None:
                with _timed(timings, "prompter"):
                    prompts, extra = self.prompter.prompts(img, prompt)
                if prompts.text is None:
                    prompts.text = prompt
            elif getattr(self.segmenter, "text_conditioned", False):
                prompts = Prompts(text=prompt)
            else:
                raise LvlmError(f"{type(self.segmenter).__name__} is a prompted segmenter: give a box or point prompt "
                                "(or configure a 'prompter' that turns text into boxes)")
            with _timed(timings, "segmenter"):
                if not prompts.has_geometry and not (prompts.text and getattr(self.segmenter, "text_conditioned", False)):
                    # the prompter found nothing for this text (no salient region): an empty mask and a warning
                    candidates = Candidates.empty(h, w, source="prompter")
                else:
                    candidates = self.segmenter.segment(img, prompts)
        scores = index = None
        if self.selector is not None and prompt is not None:
            with _timed(timings, "selector"):
                sel = self.selector.select(img, prompt, candidates) if len(candidates) else None
            if sel is None:
                mask, score = np.zeros((h, w), bool), float("nan")
            else:
                mask, score, scores, index = sel.mask, sel.score, sel.scores, sel.index
                extra.update(sel.extra)
        elif self.combine == "best" and len(candidates):
            index = int(np.argmax(candidates.scores))
            mask, score = candidates.masks[index], float(candidates.scores[index])
        else:
            mask = candidates.union()
            score = float(candidates.scores.mean()) if len(candidates) else float("nan")
            index = list(range(len(candidates)))
        mask = np.asarray(mask, bool)
        if mask.shape != (h, w):
            raise LvlmError(f"internal error: mask shape {mask.shape} != image shape {(h, w)}")
        if not mask.any():
            warnings.warn(f"prompt {prompt!r} matched nothing: the mask is empty", EmptyMaskWarning, stacklevel=2)
        timings["total"] = sum(timings.values())
        return Result(mask=mask, score=score, prompt=prompt, candidates=candidates, scores=scores, index=index,
                      prompts=prompts, timings=timings, extra=extra)

    def run_many(self, images: Iterable[ImageLike], prompts: str | Sequence[str | None] | None = None,
                 progress: bool = True, on_error: str = "raise", **kwargs: Any) -> list[Result | Exception]:
        """Run over many images; ``prompts`` is one prompt for all or one per image.

        ``on_error="keep"`` returns the exception in place of a failed image's result and goes on.
        """
        from tqdm.auto import tqdm

        images = list(images)
        if prompts is None or isinstance(prompts, str):
            prompts = [prompts] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out: list[Result | Exception] = []
        for img, p in tqdm(list(zip(images, prompts)), desc="segmenting", unit="img", disable=not progress):
            try:
                out.append(self(img, p, **kwargs))
            except LvlmError as exc:
                if on_error == "raise":
                    raise
                out.append(exc)
        return out

    def __repr__(self) -> str:
        parts = [f"{k}={type(getattr(self, k)).__name__}" for k in STAGES if getattr(self, k) is not None]
        return f"Pipeline({', '.join(parts)})"


@contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
