"""SAM 2.1 image models (Hiera tiny / small / base+ / large) built with the ``sam2`` package.

``build_sam2_model(variant, checkpoint="default", device="cpu")`` returns a ``sam2`` ``SAM2Base`` in
eval mode. The architecture comes from the package's own hydra configs
(``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``) and ``sam2.build_sam.build_sam2``; weights are the
official checkpoints, resolved by :func:`lvlm.weights.resolve` (explicit path > ``$LVLM_HOME`` >
download from ``dl.fbaipublicfiles.com`` when online), so a missing file fails within seconds naming
the file, the directory and the URL. ``checkpoint=None`` / ``"random"`` gives a random initialisation.

``"tiny_random"`` is a small randomly initialised SAM 2.1 (the hiera_t config shrunk by hydra
overrides: 5 Hiera blocks of width 8-64, 32-d neck / decoder, 256 px input) for tests and examples:
it runs the automatic mask generator on one CPU core in well under a second.

``sam2`` is an optional dependency (``pip install "lvlm[sam2]"``); it is imported on first use.
"""

from __future__ import annotations

import warnings
from typing import Any

from ..device import resolve_device
from ..errors import ConfigError
from ..weights import WeightSpec, is_random, load_into, load_state_dict, resolve

URL_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
LICENSE = "Apache-2.0"
PAGE = "https://github.com/facebookresearch/sam2"

# variant -> (sam2 hydra config, official checkpoint file)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
    "tiny_random": ("configs/sam2.1/sam2.1_hiera_t.yaml", None),  # no official weights: random init
}

TINY_IMAGE_SIZE = 256
# hydra overrides turning the hiera_t config into a small model (same classes, fewer/narrower layers)
TINY_OVERRIDES = [
    "model.image_encoder.trunk.embed_dim=8",
    "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]",  # a block inside a stage (not a pooling block)
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.image_encoder.neck.d_model=32",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "model.memory_attention.d_model=32",
    "model.memory_attention.num_layers=1",
    "model.memory_attention.layer.d_model=32",
    "model.memory_attention.layer.dim_feedforward=64",
    "model.memory_attention.layer.self_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.embedding_dim=32",
    "model.memory_attention.layer.cross_attention.kv_in_dim=16",
    (
        "model.memory_attention.layer.self_attention.feat_sizes="
        f"[{TINY_IMAGE_SIZE // 16},{TINY_IMAGE_SIZE // 16}]"
    ),
    (
        "model.memory_attention.layer.cross_attention.feat_sizes="
        f"[{TINY_IMAGE_SIZE // 16},{TINY_IMAGE_SIZE // 16}]"
    ),
    "model.memory_encoder.out_dim=16",
    "model.memory_encoder.position_encoding.num_pos_feats=16",
    "model.memory_encoder.fuser.layer.dim=32",
    "model.memory_encoder.fuser.num_layers=1",
    f"model.image_size={TINY_IMAGE_SIZE}",
]
# the sine position encodings pre-fill a cache on CUDA whenever a GPU is visible; off for CPU builds
_NO_CUDA_WARMUP = [
    "++model.image_encoder.neck.position_encoding.warmup_cache=false",
    "++model.memory_encoder.position_encoding.warmup_cache=false",
]


def weight_spec(variant: str) -> WeightSpec:
    """Where the official checkpoint of a SAM 2.1 variant comes from.

    Args:
        variant: the SAM 2.1 variant.
    """
    _, filename = _variant(variant)
    if filename is None:
        return WeightSpec(f"sam2.1_{variant}.pt", page="(random initialisation; no official weights)")
    return WeightSpec(filename, url=f"{URL_BASE}/{filename}", page=PAGE, license=LICENSE)


def build_sam2_model(variant: str = "large", checkpoint: Any = "default", device: str = "cpu", seed: int = 0):
    """A SAM 2.1 ``SAM2Base`` (eval mode) of ``variant`` on ``device``.

    ``checkpoint``: ``"default"`` = the official weights (``tiny_random``: random init), a file path,
    or None / ``"random"`` for a random initialisation (seeded with ``seed``, global RNG untouched).
    Building never needs a GPU (``device="cpu"``) and never downloads unless ``resolve`` may.

    Args:
        variant: ``tiny``, ``small``, ``base_plus``, ``large`` or ``tiny_random``.
        checkpoint: ``default``, a file path, or None / ``random``.
        device: the device to load on.
        seed: the seed of a random initialisation.
    """
    config, filename = _variant(variant)
    random_init = is_random(checkpoint) or (checkpoint == "default" and filename is None)
    path = None
    if not random_init:  # resolve first: a missing file fails in seconds, before the model is built
        path = resolve(
            weight_spec(variant),
            None if checkpoint == "default" else checkpoint,
            what=f"SAM 2 {variant} checkpoint",
        )

    import torch

    _require_sam2()
    from sam2.build_sam import build_sam2

    device = resolve_device(device)
    overrides = list(TINY_OVERRIDES) if variant == "tiny_random" else []
    if torch.device(device).type != "cuda":
        overrides += _NO_CUDA_WARMUP
    _ensure_hydra()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # ckpt_path=None: the weights are loaded below with lvlm's loader (weights_only, strict)
        model = build_sam2(config, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=overrides)
    if path is not None:
        _load_weights(model, path, variant)
    model = model.to(device).eval()
    for module in model.modules():  # RoPE tables are plain attributes put on CUDA whenever one is visible
        if isinstance(getattr(module, "freqs_cis", None), torch.Tensor):
            module.freqs_cis = module.freqs_cis.to(device)
    return model


def _load_weights(model, path, variant: str) -> None:
    """Load a SAM 2.1 checkpoint strictly; a bad file or one of another variant gives one WeightsError
    line."""
    what = f"SAM 2.1 {variant} checkpoint"
    load_into(
        model,
        load_state_dict(path, what=what),
        what=what,
        path=path,
        hint=f"check the variant (valid: {', '.join(VARIANTS)})",
    )


def image_predictor(model, **kwargs):
    """A ``SAM2ImagePredictor`` for ``model`` whose feature-map sizes follow the model's input size.

    The predictor assumes a 1024 px model (feature maps 256/128/64); this sets them from
    ``model.image_size`` so smaller models (``tiny_random``) work; a no-op at 1024.

    Args:
        model: a ``SAM2Base``.
        **kwargs: ``SAM2ImagePredictor`` arguments.
    """
    _require_sam2()
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # torch.jit.script deprecation inside SAM2Transforms
        warnings.simplefilter("ignore", FutureWarning)
        predictor = SAM2ImagePredictor(model, **kwargs)
    fit_feature_sizes(predictor)
    return predictor


class Sam2Adapter:
    """SAM 2.1's image recipe on one model, through sam2's own ``SAM2ImagePredictor`` (its transforms, prompt
    normalisation and postprocessing): :meth:`embed` one image once, :meth:`predict` any number of box / point
    prompts on it in one batched decoder call.

    Args:
        model: a ``SAM2Base`` (:func:`build_sam2_model`).
        mask_threshold: the logit threshold of a mask.
    """

    def __init__(self, model: Any, mask_threshold: float = 0.0) -> None:
        self.model = model
        self.mask_threshold = float(mask_threshold)
        self.predictor = image_predictor(model, mask_threshold=self.mask_threshold)

    def embed(self, image) -> dict[str, Any]:
        """SAM 2's multi-scale features of one H x W x 3 uint8 RGB image, with its size.

        Args:
            image: an H x W x 3 uint8 RGB image.
        """
        import numpy as np

        self.predictor.set_image(np.ascontiguousarray(image))
        emb = {"features": self.predictor._features, "orig_hw": tuple(self.predictor._orig_hw[0])}
        self.predictor.reset_predictor()
        return emb

    def embed_many(self, images) -> list[dict[str, Any]]:
        """:meth:`embed` of several images in one image-encoder forward
        (``SAM2ImagePredictor.set_image_batch``; every image is resized to the model's square input, so sizes
        may differ).

        Args:
            images: H x W x 3 uint8 RGB images.
        """
        import numpy as np

        if len(images) == 0:
            return []
        pred = self.predictor
        pred.set_image_batch([np.ascontiguousarray(im) for im in images])
        feats, hws = pred._features, pred._orig_hw
        out = [
            {
                "features": {
                    "image_embed": feats["image_embed"][i : i + 1],
                    "high_res_feats": [f[i : i + 1] for f in feats["high_res_feats"]],
                },
                "orig_hw": tuple(hws[i]),
            }
            for i in range(len(images))
        ]
        pred.reset_predictor()
        return out

    def predict(self, embedding: dict[str, Any], prompts, multimask: bool = True):
        """Logits (K x H x W at the input resolution) and predicted IoU (K) of K prompts, the best of the
        decoder's masks by predicted IoU (``multimask``: of 3, else of 1), and the index of the one kept.

        Args:
            embedding: from :meth:`embed`.
            prompts: a :class:`~lvlm.types.Prompts` in input-image pixels.
            multimask: SAM 2's ``multimask_output``.
        """
        import torch

        pred = self.predictor
        pred._features, pred._orig_hw = embedding["features"], [embedding["orig_hw"]]
        pred._is_image_set, pred._is_batch = True, False
        try:
            with torch.inference_mode():
                _, coords, labels, boxes = pred._prep_prompts(
                    prompts.points, prompts.point_labels, prompts.boxes, None, normalize_coords=True
                )
                logits, ious, _ = pred._predict(
                    coords, labels, boxes, None, multimask_output=multimask, return_logits=True
                )
                # logits: K x M x H x W at the input resolution, ious: K x M (M = 3 or 1)
                best = ious.argmax(dim=1)
                k = torch.arange(len(best), device=best.device)
                return logits[k, best], ious[k, best], best
        finally:
            pred.reset_predictor()


def fit_feature_sizes(predictor) -> None:
    """Set a SAM2 predictor's backbone feature sizes (strides 4, 8, 16) from its model's input size.

    Args:
        predictor: a ``SAM2ImagePredictor``.
    """
    s = int(predictor.model.image_size)
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]


def has_postprocessing_extension() -> bool:
    """True when sam2's compiled ``_C`` extension (connected components, used for hole filling) imports."""
    try:
        import sam2._C  # noqa: F401
    except ImportError:
        return False
    return True


def _variant(variant: str) -> tuple[str, str | None]:
    try:
        return VARIANTS[variant]
    except KeyError:
        raise ConfigError(
            f"unknown SAM 2 variant {variant!r}; valid variants: {', '.join(VARIANTS)}"
        ) from None


def _require_sam2():
    from ..optional import require

    return require("sam2", "SAM 2")


def _ensure_hydra() -> None:
    """sam2 registers its config module with hydra on import; redo it if something cleared hydra."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        initialize_config_module("sam2", version_base="1.2")
