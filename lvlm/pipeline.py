"""``Pipeline``: composes registered stages from a config and runs image + prompt -> mask.

A config is a dict (or a YAML file) whose top-level keys name the stages and whose values are
``{"name": <registered name>, **constructor arguments}``::

    generator: {name: sam, model_type: vit_h}      # everything mode -> candidates
    selector:  {name: clip, model: OA-RN50}        # text -> the matching candidate

    prompter:  {name: saliency, clip: OA-RN50}     # text -> box prompts
    segmenter: {name: medsam}                      # boxes -> masks (union)

    segmenter: {name: litemedsam}                  # user boxes / points -> masks

    combine: instances                             # how the candidates become the result (lvlm list combine)
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .combiners import default_combine
from .errors import ConfigError, LvlmError, PromptError
from .io import ImageLike, load_image
from .registry import build_spec
from .types import Candidates, Prompts, Result

STAGES = ("generator", "prompter", "segmenter", "selector")
TOP_LEVEL_KEYS = STAGES + ("combine", "description")

CONFIG_DIR = Path(__file__).parent / "configs"


class EmptyMaskWarning(UserWarning):
    """A prompt matched nothing: the result mask is empty."""


def find_config(name: str | os.PathLike) -> Path:
    """A config path: an existing file, or a name under the packaged ``configs/`` (``.yaml`` optional).

    Args:
        name: a YAML file path, or a packaged config name such as ``sam/litemedsam_box`` (``.yaml`` optional).
    """
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if cand.is_file():
            return cand
    shipped = sorted(str(c.relative_to(CONFIG_DIR).with_suffix("")) for c in CONFIG_DIR.rglob("*.yaml"))
    raise ConfigError(
        f"config {str(name)!r} not found (as a file or a packaged config); "
        f"packaged configs: {', '.join(shipped)}"
    )


def load_config(config: str | os.PathLike | dict) -> dict:
    """A config dict from a dict, a YAML path or a packaged config name (``yaml.safe_load`` only).

    Args:
        config: a config dict (copied), a YAML path or a packaged config name.
    """
    if isinstance(config, dict):
        return dict(config)
    import yaml

    path = find_config(config)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config must be a mapping of stage -> settings, got {type(data).__name__}"
        )
    return data


class Pipeline:
    """image + prompt -> generator | (prompter ->) segmenter -> candidates -> (selector ->) combiner ->
    Result.

    Args:
        generator: an everything-mode mask generator (image -> candidate masks).
        prompter: turns the text into box / point prompts for ``segmenter``.
        segmenter: a prompted segmenter (boxes / points, or text for CLIPSeg -> masks).
        selector: rates every candidate for the text (and picks one).
        combine: the combiner (a registered name, ``{name: ..., **kwargs}`` or an object): ``best``,
            ``union``, ``merge``, ``instances``, ``clipseg_refine`` (``lvlm list combine``). Default: ``best``
            (the selector's choice) with a selector, else ``union``.
        description: free text.
    """

    def __init__(
        self,
        generator=None,
        prompter=None,
        segmenter=None,
        selector=None,
        combine: Any = None,
        description: str = "",
    ) -> None:
        if generator is None and segmenter is None:
            raise ConfigError("a pipeline needs a 'generator' (everything mode) or a 'segmenter' (prompted)")
        if generator is not None and segmenter is not None:
            raise ConfigError("give either a 'generator' or a 'segmenter', not both")
        if prompter is not None and segmenter is None:
            raise ConfigError("a 'prompter' needs a 'segmenter' to turn its prompts into masks")
        combiner = build_spec(
            "combine", default_combine(selector is not None) if combine is None else combine
        )
        if not hasattr(combiner, "combine"):
            raise ConfigError(f"combine: {type(combiner).__name__} is not a combiner (no 'combine' method)")
        if generator is not None and selector is None and not getattr(combiner, "standalone", False):
            raise ConfigError(
                "an everything-mode 'generator' needs a 'selector' to pick the mask for the text "
                "(or 'combine: instances' to keep every mask)"
            )
        self.generator = generator
        self.prompter = prompter
        self.segmenter = segmenter
        self.selector = selector
        self.combiner = combiner
        self.description = description
        self.config: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: str | os.PathLike | dict, **overrides: Any) -> Pipeline:
        """Build from a YAML path, a packaged config name (e.g. ``"embedded"``) or a dict.

        Args:
            config: the config (see ``docs/configs.md``).
            overrides: replace top-level keys (e.g. ``segmenter={"name": "litemedsam", "device": "cpu"}``).
        """
        cfg = load_config(config)
        cfg.update(overrides)
        bad = [k for k in cfg if k not in TOP_LEVEL_KEYS]
        if bad:
            raise ConfigError(
                f"unknown top-level config key(s) {', '.join(map(repr, bad))}; "
                f"valid keys: {', '.join(TOP_LEVEL_KEYS)}"
            )
        stages = {k: build_spec(k, cfg.get(k)) for k in STAGES}
        pipe = cls(**stages, combine=cfg.get("combine"), description=cfg.get("description", ""))
        pipe.config = cfg
        return pipe

    @property
    def needs_text(self) -> bool:
        """Whether every call needs a text prompt (a selector, a prompter, CLIPSeg or a text-reading
        combiner)."""
        return (
            self.selector is not None
            or self.prompter is not None
            or bool(getattr(self.segmenter, "text_conditioned", False))
            or bool(getattr(self.combiner, "needs_text", False))
        )

    @property
    def takes_no_prompt(self) -> bool:
        """An everything-mode pipeline that runs without any prompt (``combine: instances``, no selector)."""
        return self.generator is not None and not self.needs_text

    def __call__(
        self,
        image: ImageLike,
        prompt: str | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        point: Sequence[float] | np.ndarray | None = None,
        point_label: Sequence[int] | None = None,
    ) -> Result:
        """Segment ``image`` for the text ``prompt`` (and/or user ``box`` / ``point`` prompts).

        Args:
            image: a path, a PIL image or an H x W (x 3) array.
            prompt: the text prompt; None with box / point prompts, or for an everything-mode pipeline with
                ``combine: instances`` and no selector (every object).
            box: xyxy, or K x 4 for K masks.
            point: (x, y), or P x 2 points of one prompt.
            point_label: one label per point (1 foreground, 0 background).
        """
        timings: dict[str, float] = {}
        img, user = self._start(image, prompt, box, point, point_label, timings)
        return self._finish(img, prompt, *self._candidates(img, prompt, user, timings), timings)

    # -- the stages, in order ---------------------------------------------------------------
    def _start(self, image, prompt, box, point, point_label, timings) -> tuple[np.ndarray, Prompts | None]:
        """The loaded image and the user's box / point prompts, after the prompt checks."""
        check_text(prompt)
        with _timed(timings, "load"):
            img = load_image(image)
        user = None
        if box is not None or point is not None:
            user = Prompts(boxes=box, points=point, point_labels=point_label, text=prompt)
        if prompt is None and user is None and not self.takes_no_prompt:
            raise LvlmError(
                "give a text prompt" + (" or a box / point prompt" if self.segmenter is not None else "")
            )
        if prompt is None and self.needs_text and user is None:
            raise LvlmError("this pipeline is text-prompted: give a text prompt")
        return img, user

    def _prompts(
        self, img: np.ndarray, prompt: str | None, user: Prompts | None, timings: dict[str, float]
    ) -> tuple[Prompts, dict[str, Any]]:
        """The prompts for the segmenter: the user's, the prompter's, or the text (text-conditioned)."""
        if user is not None:
            return user, {}
        if self.prompter is not None:
            with _timed(timings, "prompter"):
                prompts, extra = self.prompter.prompts(img, prompt)
            if prompts.text is None:
                prompts.text = prompt
            return prompts, dict(extra)
        if getattr(self.segmenter, "text_conditioned", False):
            return Prompts(text=prompt), {}
        raise LvlmError(
            f"{type(self.segmenter).__name__} is a prompted segmenter: give a box or point prompt "
            "(or configure a 'prompter' that turns text into boxes)"
        )

    def _can_segment(self, prompts: Prompts) -> bool:
        return prompts.has_geometry or bool(
            prompts.text and getattr(self.segmenter, "text_conditioned", False)
        )

    def _candidates(
        self,
        img: np.ndarray,
        prompt: str | None,
        user: Prompts | None,
        timings: dict[str, float],
        given: tuple[Prompts, dict[str, Any]] | None = None,
    ) -> tuple[Candidates, Prompts | None, dict[str, Any]]:
        """Candidates of the image (everything mode, or the prompts through the segmenter)."""
        h, w = img.shape[:2]
        if self.generator is not None:
            with _timed(timings, "generator"):
                return self.generator.generate(img), None, {}
        prompts, extra = given if given is not None else self._prompts(img, prompt, user, timings)
        with _timed(timings, "segmenter"):
            if not self._can_segment(prompts):
                # the prompter found nothing for this text (no salient region): an empty mask and a warning
                return Candidates.empty(h, w, source="prompter"), prompts, extra
            return _labelled(self.segmenter.segment(img, prompts), prompts), prompts, extra

    def _finish(
        self,
        img: np.ndarray,
        prompt: str | None,
        candidates: Candidates,
        prompts: Prompts | None,
        extra: dict[str, Any],
        timings: dict[str, float],
    ) -> Result:
        """Selector (when there is one and a text) and combiner -> the Result."""
        h, w = img.shape[:2]
        selection = None
        if self.selector is not None and prompt is not None and len(candidates):
            with _timed(timings, "selector"):
                selection = self.selector.select(img, prompt, candidates)
        with _timed(timings, "combine"):
            out = self.combiner.combine(img, prompt, candidates, selection)
        extra = {**extra, **out.extra}
        mask = np.asarray(out.mask, bool)
        if mask.shape != (h, w):
            raise LvlmError(f"internal error: mask shape {mask.shape} != image shape {(h, w)}")
        if not mask.any():
            what = f"prompt {prompt!r}" if prompt is not None else "everything mode"
            warnings.warn(f"{what} matched nothing: the mask is empty", EmptyMaskWarning, stacklevel=3)
        timings["total"] = sum(timings.values())
        return Result(
            mask=mask,
            score=float(out.score),
            prompt=prompt,
            candidates=candidates,
            scores=None if selection is None else selection.scores,
            index=out.index,
            prompts=prompts,
            timings=timings,
            extra=extra,
            instances=out.instances,
        )

    def run_many(
        self,
        images: Iterable[ImageLike],
        prompts: str | Sequence[str | None] | None = None,
        progress: bool = True,
        on_error: str = "raise",
        batch_size: int = 8,
        **kwargs: Any,
    ) -> list[Result | Exception]:
        """Run over many images; ``prompts`` is one prompt for all or one per image.

        A prompter with ``prompts_many(images, texts)`` (a detector that batches images) and a segmenter with
        ``segment_many(images, prompts_list)`` are called once per chunk of ``batch_size`` images; other
        stages run image by image.

        Args:
            images: paths, PIL images or arrays.
            prompts: one text prompt for all images, or one per image (None for box / point prompts given in
                ``kwargs``, or for a pipeline that takes no prompt).
            progress: show a progress bar.
            on_error: ``"raise"``, or ``"keep"`` to return the exception in place of a failed image's result.
            batch_size: images per batched stage call.
            kwargs: ``box``, ``point``, ``point_label`` given to every image.
        """
        from tqdm.auto import tqdm

        if on_error not in ("raise", "keep"):
            raise ConfigError(f"on_error={on_error!r}; valid values: raise, keep")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        images = list(images)
        if prompts is None or isinstance(prompts, str):
            prompts = [prompts] * len(images)
        prompts = list(prompts)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        out: list[Result | Exception] = []
        with tqdm(total=len(images), desc="segmenting", unit="img", disable=not progress) as bar:
            for s in range(0, len(images), int(batch_size)):
                chunk = list(zip(images[s : s + int(batch_size)], prompts[s : s + int(batch_size)]))
                out.extend(self._run_chunk(chunk, on_error, kwargs))
                bar.update(len(chunk))
        return out

    def _run_chunk(self, chunk: list, on_error: str, kwargs: dict[str, Any]) -> list[Result | Exception]:
        """One chunk of run_many: batched prompter / segmenter calls where the stages offer them."""
        batch_prompter = self.prompter is not None and hasattr(self.prompter, "prompts_many")
        batch_segmenter = self.segmenter is not None and hasattr(self.segmenter, "segment_many")
        if not (batch_prompter or batch_segmenter):
            return [self._guard(on_error, lambda i=i, p=p: self(i, p, **kwargs)) for i, p in chunk]
        states: list[Any] = []  # per image: [img, prompt, user, timings] or the exception
        for image, p in chunk:
            timings: dict[str, float] = {}
            states.append(
                self._guard(
                    on_error,
                    lambda image=image, p=p, t=timings: [
                        *self._start(
                            image, p, kwargs.get("box"), kwargs.get("point"), kwargs.get("point_label"), t
                        ),
                        p,
                        t,
                    ],
                )
            )
        live = [i for i, st in enumerate(states) if not isinstance(st, Exception)]
        given: dict[int, tuple[Prompts, dict[str, Any]]] = {}
        if batch_prompter:
            todo = [i for i in live if states[i][1] is None]  # no user box / point prompts
            if todo:
                t0 = time.perf_counter()
                got = self._guard(
                    on_error,
                    lambda: self.prompter.prompts_many(
                        [states[i][0] for i in todo], [states[i][2] for i in todo]
                    ),
                )
                if not isinstance(got, Exception):
                    if len(got) != len(todo):
                        raise LvlmError(
                            f"{type(self.prompter).__name__}.prompts_many returned {len(got)} "
                            f"answers for {len(todo)} images"
                        )
                    share = (time.perf_counter() - t0) / len(todo)
                    for i, (pr, ex) in zip(todo, got):
                        if pr.text is None:
                            pr.text = states[i][2]
                        given[i] = (pr, dict(ex))
                        states[i][3]["prompter"] = share
        for i in live:  # the prompts of the images the batch did not cover
            if i not in given:
                img, user, p, t = states[i]
                res = self._guard(
                    on_error, lambda img=img, user=user, p=p, t=t: self._prompts(img, p, user, t)
                )
                given[i] = res
        results: dict[int, Any] = {}
        cands: dict[int, Candidates] = {}
        ready = [i for i in live if not isinstance(given[i], Exception)]
        for i in live:
            if isinstance(given[i], Exception):
                results[i] = given[i]
        if batch_segmenter:
            todo = [i for i in ready if self._can_segment(given[i][0])]
            if todo:
                t0 = time.perf_counter()
                got = self._guard(
                    on_error,
                    lambda: self.segmenter.segment_many(
                        [states[i][0] for i in todo], [given[i][0] for i in todo]
                    ),
                )
                if not isinstance(got, Exception):
                    if len(got) != len(todo):
                        raise LvlmError(
                            f"{type(self.segmenter).__name__}.segment_many returned {len(got)} "
                            f"answers for {len(todo)} images"
                        )
                    share = (time.perf_counter() - t0) / len(todo)
                    for i, c in zip(todo, got):
                        cands[i] = _labelled(c, given[i][0])
                        states[i][3]["segmenter"] = share
        for i in ready:
            img, user, p, t = states[i]

            def finish(i=i, img=img, user=user, p=p, t=t):
                if i in cands:
                    c, pr, ex = cands[i], given[i][0], given[i][1]
                else:
                    c, pr, ex = self._candidates(img, p, user, t, given=given[i])
                return self._finish(img, p, c, pr, ex, t)

            results[i] = self._guard(on_error, finish)
        return [states[i] if isinstance(states[i], Exception) else results[i] for i in range(len(chunk))]

    @staticmethod
    def _guard(on_error: str, fn):
        try:
            return fn()
        except LvlmError as exc:
            if on_error == "raise":
                raise
            return exc

    def __repr__(self) -> str:
        parts = [f"{k}={type(getattr(self, k)).__name__}" for k in STAGES if getattr(self, k) is not None]
        parts.append(f"combine={self.combiner!r}")
        return f"Pipeline({', '.join(parts)})"


def _labelled(candidates: Candidates, prompts: Prompts) -> Candidates:
    """The prompts' labels (a detector's classes) on the masks they produced, one per prompt."""
    if candidates.labels is None and prompts.labels is not None and len(prompts.labels) == len(candidates):
        candidates.labels = list(prompts.labels)
    return candidates


def check_text(prompt: Any) -> None:
    """Refuse an empty or blank text prompt (None is no text prompt).

    Args:
        prompt: the text prompt, or None.
    """
    if prompt is None:
        return
    if not isinstance(prompt, str):
        raise PromptError(f"the text prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError(f"the text prompt {prompt!r} is empty: give a word or phrase, e.g. 'a red star'")


@contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
