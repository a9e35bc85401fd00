"""Open-vocabulary detectors from ``transformers``: text -> boxes with scores and the class each box matched.

Three families, each with its own preprocessing and post-processing, behind one call
(:meth:`Detector.detect`: a batch of images and each image's class list in, one :class:`Detections`
per image out, boxes in input pixels, xyxy):

- **GroundingDINO** (Liu et al., ECCV 2024; ``IDEA-Research/grounding-dino-tiny`` / ``-base``, Apache-2.0),
  and the checkpoints that share its head and post-processing: MM-GroundingDINO (Zhao et al., 2024;
  ``openmmlab-community/mm_grounding_dino_*``) and LLMDet (Fu et al., CVPR 2025;
  ``iSEE-Laboratory/llmdet_*``). The classes go into one prompt, lower case, period separated
  (``"a cat. a dog."``); a box's score is its highest token probability (every box above the box threshold is
  kept, as lang-sam keeps them), and its class is the phrase holding its most probable phrase token when that
  probability exceeds
  ``text_threshold`` (else the box matched no phrase: label -1, as transformers then decodes no phrase).
- **OWLv2** (Minderer et al., NeurIPS 2023; ``google/owlv2-base-patch16-ensemble``, Apache-2.0): one CLIP text
  embedding per class, cached per class string; the image is padded to a square, so boxes are scaled by
  the longer side (transformers' ``post_process_object_detection``).
- **OmDet-Turbo** (Zhao et al., 2024; ``omlab/omdet-turbo-swin-tiny-hf``, Apache-2.0): the model caches the
  class and task embeddings itself (an LRU cache inside ``OmDetTurboForObjectDetection``); per-class
  top-k and NMS are transformers' ``post_process_grounded_object_detection``.

Weights come through :func:`lvlm.weights.hf_pretrained` (a hub id or a local ``save_pretrained`` folder);
``tiny-random-<family>`` builds a tiny randomly initialised model of the real architecture classes with a
tokenizer made offline, for tests and smoke runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

GROUNDING_DINO = "grounding_dino"
OWLV2 = "owlv2"
OMDET_TURBO = "omdet_turbo"
FAMILIES = (GROUNDING_DINO, OWLV2, OMDET_TURBO)

# config.model_type -> family
MODEL_TYPES = {
    "grounding-dino": GROUNDING_DINO,
    "mm-grounding-dino": GROUNDING_DINO,
    "owlv2": OWLV2,
    "omdet-turbo": OMDET_TURBO,
}

PRESETS = {
    "grounding-dino-tiny": "IDEA-Research/grounding-dino-tiny",
    "grounding-dino-base": "IDEA-Research/grounding-dino-base",
    "mm-grounding-dino-tiny": "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
    "llmdet-tiny": "iSEE-Laboratory/llmdet_tiny",
    "owlv2-base": "google/owlv2-base-patch16-ensemble",
    "omdet-turbo": "omlab/omdet-turbo-swin-tiny-hf",
}
TINY = {
    "tiny-random-grounding-dino": GROUNDING_DINO,
    "tiny-random-owlv2": OWLV2,
    "tiny-random-omdet-turbo": OMDET_TURBO,
}

# The references' score thresholds: lang-sam's GroundingDINO box / text thresholds, transformers' OWLv2 and
# OmDet-Turbo post-processing defaults.
DEFAULT_THRESHOLD = {GROUNDING_DINO: 0.3, OWLV2: 0.1, OMDET_TURBO: 0.3}
DEFAULT_TEXT_THRESHOLD = 0.25
DEFAULT_NMS = {GROUNDING_DINO: None, OWLV2: None, OMDET_TURBO: 0.5}

SEPARATORS = ".;"


def split_classes(text: str | Sequence[str], separators: str = SEPARATORS) -> list[str]:
    """The class phrases of a prompt: ``"cat. dog"`` -> ``["cat", "dog"]`` (a list is taken as is).

    Args:
        text: one prompt, several classes separated by any character of ``separators``, or a list of classes.
        separators: the characters that separate classes.

    Returns:
        The non-empty, stripped phrases in order, duplicates removed.
    """
    if isinstance(text, str):
        parts = [text]
        for sep in separators:
            parts = [q for p in parts for q in p.split(sep)]
    else:
        parts = [str(t) for t in text]
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def grounding_dino_prompt(classes: Sequence[str], lowercase: bool = True) -> str:
    """GroundingDINO's text input: lower case, period separated, ending with a period (``"a cat. a dog."``).

    Args:
        classes: the class phrases.
        lowercase: lower-case them (GroundingDINO was trained on lower-case captions).
    """
    phrases = [c.strip().lower() if lowercase else c.strip() for c in classes]
    return ". ".join(p.rstrip(".") for p in phrases) + "."


@dataclass
class Detections:
    """The boxes one image gave: ``boxes`` N x 4 xyxy input pixels, ``scores`` N, ``labels`` N indices into
    ``classes`` (the class each box matched)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def text_labels(self) -> list[str]:
        return [self.classes[i] if 0 <= i < len(self.classes) else "" for i in self.labels]

    def subset(self, index) -> Detections:
        """The detections at ``index``.

        Args:
            index: indices or a boolean mask.
        """
        index = np.asarray(index)
        return Detections(self.boxes[index], self.scores[index], self.labels[index], list(self.classes))

    @classmethod
    def empty(cls, classes: Sequence[str] = ()) -> Detections:
        """No detections.

        Args:
            classes: the class phrases of the query.
        """
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), list(classes))


def nms_and_top(
    det: Detections, nms: float | None = None, max_boxes: int | None = None, class_agnostic: bool = False
) -> Detections:
    """Non-maximum suppression (torchvision) at IoU ``nms``, then the ``max_boxes`` best, by score.

    Args:
        det: the detections of one image.
        nms: IoU above which the lower-scored box goes; None keeps every box.
        max_boxes: keep at most this many boxes (highest scores); None keeps all.
        class_agnostic: suppress across classes (else only boxes of the same class suppress each other).
    """
    import torch
    from torchvision.ops import batched_nms

    order = np.argsort(-det.scores, kind="stable")
    if nms is not None and len(det):
        groups = torch.zeros(len(det), dtype=torch.int64) if class_agnostic else torch.as_tensor(det.labels)
        keep = batched_nms(
            torch.as_tensor(det.boxes, dtype=torch.float32),
            torch.as_tensor(det.scores, dtype=torch.float32),
            groups,
            float(nms),
        ).numpy()
        order = keep  # batched_nms returns indices sorted by decreasing score
    if max_boxes is not None:
        order = order[: int(max_boxes)]
    return det.subset(order)


# --- loading -----------------------------------------------------------------------------------


def load_detector(
    model: str | os.PathLike = "grounding-dino-tiny",
    revision: str | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> Detector:
    """A :class:`Detector` from a preset name, a hub id, a local ``save_pretrained`` folder or
    ``tiny-random-*``.

    Args:
        model: a key of :data:`PRESETS`, a Hugging Face id, a folder, or a key of :data:`TINY`.
        revision: hub revision to pin.
        device: where the model runs.
        seed: seed of the ``tiny-random-*`` models.

    Raises:
        WeightsError: (within seconds) the weights are not on disk and cannot be downloaded, naming the hub
            id.
    """
    from ..optional import require

    require("transformers", "the detector prompter")
    name = str(model)
    if name in TINY:
        net, proc = tiny_detector(TINY[name], seed=seed)
    else:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        from ..weights import hf_pretrained

        repo = PRESETS.get(name, name)
        net = hf_pretrained(
            AutoModelForZeroShotObjectDetection.from_pretrained,
            repo,
            "open-vocabulary detector",
            revision=revision,
        )
        proc = hf_pretrained(
            AutoProcessor.from_pretrained, repo, "open-vocabulary detector processor", revision=revision
        )
    family = MODEL_TYPES.get(getattr(net.config, "model_type", ""))
    if family is None:
        raise ConfigError(
            f"detector {name!r}: model type {net.config.model_type!r} is not a supported detector; "
            f"supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    return Detector(net, proc, family, device=device, name=name)


class Detector:
    """One open-vocabulary detector with its processor: :meth:`detect` runs a batch in one forward.

    Args:
        model: a transformers ``*ForObjectDetection`` model.
        processor: its processor (tokenizer + image processor).
        family: one of :data:`FAMILIES`.
        device: where the model runs.
        name: how the user named it (for messages).
    """

    def __init__(self, model: Any, processor: Any, family: str, device: str = "cpu", name: str = "") -> None:
        if family not in FAMILIES:
            raise ConfigError(f"detector family {family!r}; valid families: {', '.join(FAMILIES)}")
        self.model = model.to(device).eval()
        self.processor = processor
        self.family = family
        self.device = device
        self.name = name
        self._text_cache: dict[str, Any] = {}

    # -- one forward for a batch ----------------------------------------------------------------
    def outputs(self, images: Sequence[np.ndarray], classes: Sequence[Sequence[str]], lowercase: bool = True):
        """``(model outputs, processor inputs)`` of one batched forward (no post-processing).

        Args:
            images: H x W x 3 uint8 RGB arrays.
            classes: each image's class phrases.
            lowercase: GroundingDINO prompt in lower case.
        """
        import torch

        images = [np.ascontiguousarray(im) for im in images]
        with torch.inference_mode():
            if self.family == GROUNDING_DINO:
                texts = [grounding_dino_prompt(c, lowercase) for c in classes]
                inputs = self.processor(
                    images=images, text=texts, padding=True, truncation=True, return_tensors="pt"
                ).to(self.device)
                return self.model(**inputs), inputs
            if self.family == OWLV2:
                inputs = self.processor.image_processor(images=images, return_tensors="pt").to(self.device)
                return self._owlv2_forward(inputs["pixel_values"], classes), inputs
            inputs = self.processor(images=images, text=[list(c) for c in classes], return_tensors="pt").to(
                self.device
            )
            return self.model(**inputs), inputs

    def _owlv2_text(self, classes: Sequence[str]):
        """Q x D normalised OWLv2 text embeddings, cached per class string."""
        import torch

        missing = [c for c in dict.fromkeys(classes) if c not in self._text_cache]
        if missing:
            tok = self.processor.tokenizer(
                missing,
                padding="max_length",
                truncation=True,
                max_length=int(self.model.config.text_config.max_position_embeddings),
                return_tensors="pt",
            ).to(self.device)
            out = self.model.owlv2.text_model(
                input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
            )
            emb = self.model.owlv2.text_projection(out.pooler_output)
            emb = emb / torch.linalg.norm(emb, ord=2, dim=-1, keepdim=True)
            if len(self._text_cache) > 1024:
                self._text_cache.clear()
            for c, e in zip(missing, emb):
                self._text_cache[c] = e
        return torch.stack([self._text_cache[c] for c in classes])

    def _owlv2_forward(self, pixel_values, classes: Sequence[Sequence[str]]):
        """OWLv2's forward with the text embeddings from the cache: the model's own image embedder, class
        and box heads, as ``Owlv2ForObjectDetection.forward`` composes them."""
        import torch
        from transformers.models.owlv2.modeling_owlv2 import Owlv2ObjectDetectionOutput

        m = self.model
        feature_map, _ = m.image_embedder(pixel_values=pixel_values)
        b, ph, pw, d = feature_map.shape
        image_feats = feature_map.reshape(b, ph * pw, d)
        q = max(1, max(len(c) for c in classes))
        dim = m.owlv2.text_projection.out_features
        query = torch.zeros(b, q, dim, device=pixel_values.device)
        query_mask = torch.zeros(b, q, dtype=torch.bool, device=pixel_values.device)
        for i, c in enumerate(classes):
            if len(c):
                query[i, : len(c)] = self._owlv2_text(list(c))
                query_mask[i, : len(c)] = True
        logits, _ = m.class_predictor(image_feats, query, query_mask)
        boxes = m.box_predictor(image_feats, feature_map)
        return Owlv2ObjectDetectionOutput(logits=logits, pred_boxes=boxes)

    # -- post-processing -----------------------------------------------------------------------
    def postprocess(
        self,
        outputs: Any,
        inputs: Any,
        sizes: Sequence[tuple[int, int]],
        classes: Sequence[Sequence[str]],
        threshold: float,
        text_threshold: float = DEFAULT_TEXT_THRESHOLD,
        nms: float | None = None,
    ) -> list[Detections]:
        """Per-image :class:`Detections` in input pixels from one batched forward.

        Args:
            outputs: the model outputs of :meth:`outputs`.
            inputs: the processor inputs of :meth:`outputs`.
            sizes: each image's (height, width).
            classes: each image's class phrases.
            threshold: box score threshold.
            text_threshold: GroundingDINO: a box whose best phrase token is not above it matches no class
                (-1).
            nms: OmDet-Turbo: the IoU of its per-class NMS (its post-processing always runs one; 1.0 = none).
        """
        if self.family == GROUNDING_DINO:
            return grounding_dino_postprocess(
                outputs, inputs["input_ids"], sizes, classes, threshold, text_threshold, self._special_ids()
            )
        if self.family == OWLV2:
            res = self.processor.image_processor.post_process_object_detection(
                outputs, threshold=threshold, target_sizes=[tuple(s) for s in sizes]
            )
            return [
                Detections(
                    r["boxes"].float().cpu().numpy(),
                    r["scores"].float().cpu().numpy(),
                    r["labels"].cpu().numpy(),
                    list(c),
                )
                for r, c in zip(res, classes)
            ]
        res = self.processor.post_process_grounded_object_detection(
            outputs,
            threshold=threshold,
            nms_threshold=1.0 if nms is None else float(nms),
            target_sizes=[tuple(s) for s in sizes],
        )
        return [
            Detections(
                r["boxes"].float().cpu().numpy(),
                r["scores"].float().cpu().numpy(),
                r["labels"].cpu().numpy(),
                list(c),
            )
            for r, c in zip(res, classes)
        ]

    def _special_ids(self) -> tuple[set[int], set[int]]:
        tok = self.processor.tokenizer
        seps = {i for i in tok.convert_tokens_to_ids([".", "?"]) if i is not None and i != tok.unk_token_id}
        return set(tok.all_special_ids), seps

    def detect(
        self,
        images: Sequence[np.ndarray],
        classes: Sequence[Sequence[str]],
        threshold: float | None = None,
        text_threshold: float = DEFAULT_TEXT_THRESHOLD,
        nms: float | None = None,
        lowercase: bool = True,
    ) -> list[Detections]:
        """One batched forward and post-processing: a :class:`Detections` per image.

        Args:
            images: H x W x 3 uint8 RGB arrays.
            classes: each image's class phrases (an image with none gets no boxes).
            threshold: box score threshold (None: the family's default, :data:`DEFAULT_THRESHOLD`).
            text_threshold: GroundingDINO's phrase threshold.
            nms: OmDet-Turbo's per-class NMS IoU inside its post-processing.
            lowercase: GroundingDINO prompt in lower case.
        """
        threshold = DEFAULT_THRESHOLD[self.family] if threshold is None else float(threshold)
        out: list[Detections | None] = [None] * len(images)
        todo = [i for i, c in enumerate(classes) if len(c)]
        for i, c in enumerate(classes):
            if not len(c):
                out[i] = Detections.empty()
        groups = [todo]
        if self.family == OMDET_TURBO:
            # OmDet-Turbo pads the class embeddings of a batch to its longest class list and the padding takes
            # part in the decoder's attention: one forward per class count keeps every image's answer its own
            counts = sorted({len(classes[i]) for i in todo})
            groups = [[i for i in todo if len(classes[i]) == n] for n in counts]
        for group in groups:
            if not group:
                continue
            imgs = [images[i] for i in group]
            cls = [list(classes[i]) for i in group]
            outputs, inputs = self.outputs(imgs, cls, lowercase)
            dets = self.postprocess(
                outputs, inputs, [im.shape[:2] for im in imgs], cls, threshold, text_threshold, nms
            )
            for i, d in zip(group, dets):
                out[i] = d
        return out  # type: ignore[return-value]


def grounding_dino_postprocess(
    outputs: Any,
    input_ids: Any,
    sizes: Sequence[tuple[int, int]],
    classes: Sequence[Sequence[str]],
    threshold: float = 0.3,
    text_threshold: float = DEFAULT_TEXT_THRESHOLD,
    special: tuple[set[int], set[int]] = (set(), set()),
) -> list[Detections]:
    """GroundingDINO post-processing with the class index of each box.

    Scores and boxes are those of transformers' ``post_process_grounded_object_detection`` (sigmoid of the
    token logits, the max over tokens, ``> threshold``; centre boxes to corners scaled to each image); the
    class of a box is the phrase (tokens between separators, special tokens excluded) holding its most
    probable phrase token when that probability exceeds ``text_threshold``, else -1 (no phrase matched).

    Args:
        outputs: ``GroundingDinoObjectDetectionOutput`` (``logits`` B x Q x T, ``pred_boxes`` B x Q x 4
            cxcywh).
        input_ids: B x T token ids of the prompts.
        sizes: each image's (height, width).
        classes: each image's class phrases, in prompt order.
        threshold: box threshold.
        text_threshold: phrase threshold.
        special: (special token ids, separator token ids such as ``.``).
    """
    import torch

    special_ids, sep_ids = special
    probs = torch.sigmoid(outputs.logits.float())  # B x Q x T
    scores = probs.max(dim=-1).values
    cx, cy, w, h = outputs.pred_boxes.float().unbind(-1)
    boxes = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    results = []
    for b, (hh, ww) in enumerate(sizes):
        ids = input_ids[b].tolist()
        phrase = torch.full((probs.shape[-1],), -1, dtype=torch.long)
        k = 0
        started = False
        for t, tid in enumerate(ids[: probs.shape[-1]]):
            if tid in sep_ids:
                if started:
                    k += 1
                started = False
            elif tid not in special_ids:
                phrase[t] = k
                started = True
        n_phr = int(phrase.max()) + 1 if (phrase >= 0).any() else 0
        keep = scores[b] > threshold
        p = probs[b][keep].cpu()  # N x T
        scale = torch.tensor([ww, hh, ww, hh], dtype=torch.float32)
        bx = boxes[b][keep].cpu() * scale
        if len(p) == 0:
            results.append(Detections.empty(classes[b]))
            continue
        if n_phr == 0:
            results.append(
                Detections(bx.numpy(), scores[b][keep].cpu().numpy(), -np.ones(len(p)), list(classes[b]))
            )
            continue
        per_phrase = torch.full((len(p), n_phr), -1.0)
        for j in range(n_phr):
            sel = phrase == j
            per_phrase[:, j] = p[:, sel].max(dim=-1).values
        best, label = per_phrase.max(dim=-1)
        label[best <= text_threshold] = -1
        results.append(Detections(bx.numpy(), scores[b][keep].cpu().numpy(), label.numpy(), list(classes[b])))
    return results


# --- tiny random models (real architecture classes, offline tokenizers) ---------------------------

TINY_WORDS = (
    "a",
    "an",
    "the",
    "of",
    "and",
    "in",
    "on",
    "with",
    "photo",
    "picture",
    "image",
    "object",
    "thing",
    ".",
    ",",
    "cat",
    "dog",
    "car",
    "person",
    "bird",
    "red",
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "round",
    "square",
    "circle",
    "shape",
    "crack",
    "hole",
    "scratch",
    "nucleus",
    "nuclei",
    "cell",
    "lung",
    "heart",
    "bone",
    "left",
    "right",
    "tumor",
    "lesion",
    "background",
    "foreground",
    "small",
    "large",
    "triangle",
    "star",
    "zebra",
    "giraffe",
    "train",
    "bus",
    "truck",
    "chair",
    "table",
    "bottle",
    "cup",
)


def _wordpiece_vocab() -> dict[str, int]:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(TINY_WORDS))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = letters + ["##" + c for c in letters]
    vocab = list(dict.fromkeys(words + pieces))
    return {w: i for i, w in enumerate(vocab)}


def _clip_bpe_vocab() -> tuple[dict[str, int], str, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    return vocab, bos, eos


def tiny_detector(family: str, seed: int = 0, image_size: int = 64) -> tuple[Any, Any]:
    """``(model, processor)``: a tiny randomly initialised detector of ``family`` (real classes, offline
    tokenizer).

    GroundingDINO gets a BERT WordPiece tokenizer over a small word list (plus letters as word pieces),
    OWLv2 and OmDet-Turbo a CLIP byte-level BPE tokenizer with no merges (text split into characters).
    Sizes follow transformers' own model tests.

    Args:
        family: one of :data:`FAMILIES`.
        seed: torch seed of the initialisation.
        image_size: model input side.
    """
    import torch

    if family not in FAMILIES:
        raise ConfigError(f"detector family {family!r}; valid families: {', '.join(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == GROUNDING_DINO:
            return _tiny_grounding_dino(image_size)
        if family == OWLV2:
            return _tiny_owlv2(image_size)
        return _tiny_omdet_turbo(image_size)


def _tiny_grounding_dino(image_size: int):
    # its coarsest feature level is 1/64 of the input and GroupNorm needs more than one value there
    image_size = max(int(image_size), 96)
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    vocab = _wordpiece_vocab()
    tok = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=32)
    swin = SwinConfig(
        window_size=7,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        image_size=image_size,
        out_indices=[2, 3, 4],
    )
    cfg = GroundingDinoConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=16,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        use_timm_backbone=False,
        backbone_config=swin,
        max_text_len=32,
        text_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 16,
            "max_position_embeddings": 64,
            "model_type": "bert",
            "vocab_size": len(vocab),
        },
    )
    net = GroundingDinoForObjectDetection(cfg).eval()
    ip = GroundingDinoImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": int(image_size * 4 / 3)}
    )
    return net, GroundingDinoProcessor(image_processor=ip, tokenizer=tok)


def _tiny_owlv2(image_size: int):
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    vocab, bos, eos = _clip_bpe_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16, pad_token="!")
    cfg = Owlv2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "bos_token_id": vocab[bos],
            "eos_token_id": vocab[eos],
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    net = Owlv2ForObjectDetection(cfg).eval()
    ip = Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
    return net, Owlv2Processor(image_processor=ip, tokenizer=tok)


def _tiny_omdet_turbo(image_size: int):
    from transformers import (
        CLIPTokenizer,
        DetrImageProcessor,
        OmDetTurboConfig,
        OmDetTurboForObjectDetection,
        OmDetTurboProcessor,
    )

    vocab, bos, eos = _clip_bpe_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77, pad_token=eos)
    hidden = 8
    cfg = OmDetTurboConfig(
        text_config={
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 16,
            "max_position_embeddings": 77,
            "model_type": "clip_text_model",
            "vocab_size": len(vocab),
            "bos_token_id": vocab[bos],
            "eos_token_id": vocab[eos],
        },
        backbone_config={
            "embed_dim": hidden,
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 1, 1, 1),
            "window_size": 7,
            "image_size": image_size,
            "out_indices": (2, 3, 4),
            "model_type": "swin",
        },
        use_timm_backbone=False,
        backbone=None,
        apply_layernorm_after_vision_backbone=False,
        decoder_num_layers=2,
        image_size=image_size,
        encoder_in_channels=(16, 32, 64),
        num_queries=20,
        encoder_layers=2,
        encoder_projection_indices=[2],
        encoder_attention_heads=2,
        decoder_num_heads=2,
        decoder_num_points=4,
        num_feature_levels=3,
        encoder_dim_feedforward=32,
        task_encoder_hidden_dim=32,
        decoder_dim_feedforward=32,
        class_embed_dim=16,
        text_projection_in_dim=16,
        text_projection_out_dim=16,
        encoder_hidden_dim=hidden,
        decoder_hidden_dim=hidden,
        vision_features_channels=[hidden, hidden, hidden],
    )
    net = OmDetTurboForObjectDetection(cfg).eval()
    ip = DetrImageProcessor(size={"height": image_size, "width": image_size}, do_pad=False)
    return net, OmDetTurboProcessor(image_processor=ip, tokenizer=tok)
