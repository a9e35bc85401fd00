"""The CLIP layer: open_clip presets, preprocessing, weight resolution, checkpoints, CAM hooks."""

from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from lvlm.errors import ConfigError, MissingDependencyError, WeightsError, WeightsNotFoundError
from lvlm.models.clip import PRESETS, TINY_CONFIGS, load_open_clip
from lvlm.registry import available, build

TABLE_III = [
    "OA-RN50",
    "OA-RN101",
    "OA-ViT-B",
    "OA-ViT-L",
    "CC-RN50",
    "LA-ViT-B",
    "BC-ViT-B",
    "MC-RN50",
    "MC-SwinT",
]


@pytest.fixture(scope="module")
def tiny_rn():
    return build("clip", "tiny-rn", device="cpu")


@pytest.fixture(scope="module")
def tiny_vit():
    return build("clip", "tiny-vit", device="cpu")


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 7.0 + c) * np.cos(yy / 9.0 - c) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(50, 70), (300, 200), (64, 64), (37, 100), (225, 224)])
def test_preprocess_matches_open_clip_pil_transform(tiny_rn, shape):
    """Batched on-device preprocessing = open_clip's own PIL transform (resize shortest side bicubic,
    centre crop, normalise), to one 8-bit level (PIL's fixed-point rounding)."""
    from PIL import Image

    img = _smooth_image(*shape, seed=shape[0])
    ref = open_clip.image_transform(tiny_rn.image_size, is_train=False, mean=tiny_rn.mean, std=tiny_rn.std)(
        Image.fromarray(img)
    )[None]
    ours = tiny_rn.preprocess([img])
    assert ours.shape == ref.shape == (1, 3, tiny_rn.image_size, tiny_rn.image_size)
    level = 1.0 / 255 / min(tiny_rn.std)  # one 8-bit level in normalised units
    diff = (ours - ref).abs()
    assert diff.max().item() <= 1.01 * level
    assert diff.mean().item() < 0.02 * level
    # a list of equal-size images, a B x H x W x 3 array and a tensor give the same batch
    batch = np.stack([img, img[::-1].copy()])
    a = tiny_rn.preprocess(list(batch))
    assert torch.equal(a, tiny_rn.preprocess(batch))
    assert torch.equal(a, tiny_rn.preprocess(torch.from_numpy(batch)))


@pytest.mark.parametrize("which", ["tiny-rn", "tiny-vit"])
def test_selector_scores_equal_direct_open_clip(which, request):
    """ClipSelector's scores = cosine of open_clip's normalised image / text embeddings (direct calls)."""
    clip = request.getfixturevalue(which.replace("-", "_"))
    from lvlm.selectors.clip import ClipSelector
    from lvlm.types import Candidates

    img = _smooth_image(90, 120, seed=3)
    rng = np.random.default_rng(1)
    masks = np.zeros((6, 90, 120), bool)
    for i in range(6):
        y, x = rng.integers(0, 60), rng.integers(0, 90)
        masks[i, y : y + rng.integers(8, 30), x : x + rng.integers(8, 30)] = True
    templates = ["a photo of a {}.", "a picture of the {}."]
    sel = ClipSelector(model=clip, crop="mask_black", templates=templates, batch_size=4)
    res = sel.select(img, "cat", Candidates(masks))

    model = clip.model
    tok = open_clip.SimpleTokenizer(context_length=TINY_CONFIGS[which]["text_cfg"]["context_length"])
    with torch.no_grad():
        pixels = torch.cat([clip.preprocess([img * m[..., None]]) for m in masks])  # one image at a time
        img_f = F.normalize(model.encode_image(pixels), dim=-1)
        txt = F.normalize(model.encode_text(tok(["a photo of a cat.", "a picture of the cat."])), dim=-1)
        txt = F.normalize(txt.mean(0), dim=-1)
    expected = (img_f @ txt).numpy()
    np.testing.assert_allclose(res.scores, expected, atol=1e-5)
    np.testing.assert_allclose(res.extra["similarity"], expected, atol=1e-5)
    assert res.index == int(np.argmax(expected))
    assert np.array_equal(res.mask, masks[res.index])


def test_encode_text_is_cached(tiny_rn):
    a = tiny_rn.encode_text(["a dog", "a cat"])
    calls = []
    orig = tiny_rn.model.encode_text
    tiny_rn.model.encode_text = lambda *args, **kw: calls.append(1) or orig(*args, **kw)
    try:
        b = tiny_rn.encode_text(["a cat", "a dog"])
    finally:
        tiny_rn.model.encode_text = orig
    assert not calls
    assert torch.allclose(a[[1, 0]], b)
    assert torch.allclose(b.norm(dim=-1), torch.ones(2))


def test_cam_target_layers_and_reshape(tiny_rn, tiny_vit):
    """ResNet: the last conv stage (B x C x h x w); ViT: the last block's tokens -> B x C x h x w, class token
    dropped."""
    img = _smooth_image(64, 64)
    for clip, grid in ((tiny_rn, 2), (tiny_vit, 4)):
        layer = clip.cam_target_layer()
        out: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda mod, inp, o, out=out: out.append(o))
        clip.encode_image(clip.preprocess([img, img[::-1].copy()]))
        handle.remove()
        grid_map = clip.reshape_transform(out[0])
        assert grid_map.shape[0] == 2 and grid_map.shape[-2:] == (grid, grid)
    assert tiny_rn.cam_target_layer() is tiny_rn.model.visual.layer4 and not tiny_rn.is_vit
    assert tiny_vit.cam_target_layer() is tiny_vit.model.visual.transformer.resblocks[-1] and tiny_vit.is_vit
    tokens = out[0]  # tiny-vit: B x (1 + 16) x C, batch first (open_clip 3.x)
    assert tokens.shape[:2] == (2, 17)
    assert torch.equal(grid_map[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2, :])


def test_list_clip_shows_every_preset_with_source(capsys):
    from lvlm.cli import main

    assert main(["list", "clip"]) == 0
    out = capsys.readouterr().out
    for name in TABLE_III + ["BiomedCLIP", "open_clip", "tiny-rn", "tiny-vit"]:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"{name} missing from `lvlm list clip`"
        assert "[" in line and "licence" in line or name in ("open_clip", "tiny-rn", "tiny-vit")
    for src in (
        "RN50 / openai",
        "RN101 / openai",
        "ViT-B-16 / openai",
        "ViT-L-14 / openai",
        "RN50 / cc12m",
        "ViT-B-16 / laion400m_e32",
        "hf-hub:imageomics/bioclip",
        "MedCLIP package",
    ):
        assert src in out
    assert set(TABLE_III) <= set(available("clip"))


@pytest.mark.parametrize(
    "preset,file,url",
    [
        ("OA-RN50", "RN50.pt", "huggingface.co/timm/resnet50_clip.openai"),
        ("LA-ViT-B", "vit_b_16-laion400m_e32-55e67d44.pt", "github.com/mlfoundations/open_clip/releases"),
        ("BC-ViT-B", "open_clip_config.json", "huggingface.co/imageomics/bioclip"),
    ],
)
def test_real_preset_offline_fails_fast_naming_file_and_url(preset, file, url, tmp_path, monkeypatch):
    from lvlm.weights import cache_dir

    available("clip")  # the component imports are not what is timed
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        build("clip", preset, device="cpu")
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert file in msg and url in msg and str(cache_dir()) in msg and "offline" in msg


def test_selector_with_real_preset_offline_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match="RN101.pt"):
        build("selector", "clip", model="OA-RN101", device="cpu")
    assert time.perf_counter() - t0 < 5.0


def test_medclip_presets_need_the_extra():
    pytest.importorskip("lvlm.models.medclip")
    from lvlm.optional import has

    if has("medclip"):
        pytest.skip("medclip is installed")
    with pytest.raises(MissingDependencyError, match=r"lvlm\[medclip\]"):
        build("clip", "MC-RN50", device="cpu")


def test_bad_tag_and_unknown_model_are_config_errors():
    with pytest.raises(ConfigError, match="valid tags"):
        load_open_clip("RN50", "not-a-tag", device="cpu")
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        load_open_clip("RN-nope", None, checkpoint=None, device="cpu")


def _embeddings(clip):
    img = _smooth_image(64, 64, seed=5)
    with torch.no_grad():
        return clip.encode_image(clip.preprocess([img])), clip.encode_text(["a red square"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_file_with_config_json_round_trip(tiny_vit, tmp_path, suffix):
    """Trained (FS-/FP-) models load as `open_clip` + checkpoint file + model-config JSON beside it."""
    other = build("clip", "tiny-vit", device="cpu", seed=7)  # different weights than tiny_vit
    path = other.save(tmp_path / f"fs-vit{suffix}")
    assert path.with_suffix(".json").is_file()
    loaded = build("clip", "open_clip", checkpoint=str(path), device="cpu")
    a, b = _embeddings(other), _embeddings(loaded)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    assert not torch.allclose(_embeddings(tiny_vit)[0], b[0], atol=1e-3)
    assert loaded.name == "fs-vit" and loaded.is_vit


def test_checkpoint_folder_like_open_clip_local_dir(tmp_path):
    """A folder with open_clip_config.json + open_clip_model.safetensors (what `lvlm train clip` writes)."""
    from safetensors.torch import save_file

    src = build("clip", "tiny-rn", device="cpu", seed=3)
    d = tmp_path / "fp-rn50"
    d.mkdir()
    (d / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CONFIGS["tiny-rn"], "preprocess_cfg": {"size": 64}})
    )
    save_file(
        {k: v.contiguous() for k, v in src.model.state_dict().items()}, str(d / "open_clip_model.safetensors")
    )
    for spec in ({"checkpoint": str(d)}, {"model_name": f"local-dir:{d}"}):
        loaded = build("clip", "open_clip", device="cpu", **spec)
        assert torch.allclose(_embeddings(src)[0], _embeddings(loaded)[0], atol=1e-6)


def test_checkpoint_without_architecture_is_a_clear_error(tiny_rn, tmp_path):
    p = tmp_path / "lonely.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny_rn.model.state_dict().items()}, str(p))
    with pytest.raises(ConfigError, match="model-config JSON"):
        build("clip", "open_clip", checkpoint=str(p), device="cpu")
    p.with_suffix(".json").write_text(
        json.dumps({"model_cfg": TINY_CONFIGS["tiny-vit"]})
    )  # the wrong architecture
    with pytest.raises(WeightsError, match=r"lonely\.safetensors.*wrong shape.*expects \[32, 3, 16, 16\]"):
        build("clip", "open_clip", checkpoint=str(p), device="cpu")


def test_hf_hub_preset_found_in_lvlm_home(tmp_path, monkeypatch):
    """BC-ViT-B (hf-hub:imageomics/bioclip) loads from $LVLM_HOME/imageomics--bioclip/ without the network."""
    from safetensors.torch import save_file

    monkeypatch.setenv("LVLM_HOME", str(tmp_path))
    src = build("clip", "tiny-vit", device="cpu", seed=11)
    d = tmp_path / "imageomics--bioclip"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIGS["tiny-vit"]}))
    save_file(
        {k: v.contiguous() for k, v in src.model.state_dict().items()}, str(d / "open_clip_model.safetensors")
    )
    clip = build("clip", "BC-ViT-B", device="cpu")
    assert clip.name == "BC-ViT-B" and clip.is_vit
    assert torch.allclose(_embeddings(src)[0], _embeddings(clip)[0], atol=1e-6)


def test_pretrained_tag_found_in_lvlm_home_including_torchscript(tmp_path, monkeypatch):
    """A tag's weights in $LVLM_HOME under the URL's file name load without the network, also as an
    OpenAI-style TorchScript archive; missing, the error names that file and the URL."""
    monkeypatch.setenv("LVLM_HOME", str(tmp_path / "home"))
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "lvlm-test-tiny-rn.json").write_text(json.dumps(TINY_CONFIGS["tiny-rn"]))
    open_clip.add_model_config(cfg_dir)
    url = "https://example.org/weights/lvlm-test-tiny-rn-abc123.pt"
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(
        open_clip,
        "get_pretrained_cfg",
        lambda m, t: (
            {
                "url": url,
                "hf_hub": "",
                "mean": (0.5, 0.5, 0.5),
                "std": (0.25, 0.25, 0.25),
                "quick_gelu": False,
            }
            if (m, t) == ("lvlm-test-tiny-rn", "testtag")
            else real(m, t)
        ),
    )
    with pytest.raises(WeightsNotFoundError) as err:
        load_open_clip("lvlm-test-tiny-rn", "testtag", device="cpu", name="T")
    assert "lvlm-test-tiny-rn-abc123.pt" in str(err.value) and url in str(err.value)

    src = build("clip", "tiny-rn", device="cpu", seed=5)
    (tmp_path / "home").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(src.model).save(str(tmp_path / "home" / "lvlm-test-tiny-rn-abc123.pt"))
    clip = load_open_clip("lvlm-test-tiny-rn", "testtag", device="cpu", name="T")
    assert clip.mean == (0.5, 0.5, 0.5) and clip.std == (0.25, 0.25, 0.25)  # the tag's preprocessing
    img = _smooth_image(64, 64)
    with torch.no_grad():
        assert torch.allclose(
            clip.encode_image(clip.preprocess([img])), src.encode_image(clip.preprocess([img])), atol=1e-6
        )


def test_random_init_of_a_real_architecture_is_seeded():
    """checkpoint=null builds the real architecture, randomly initialised (useful offline), seeded."""
    a = build("clip", "OA-RN50", checkpoint=None, device="cpu", seed=1)
    assert a.image_size == 224 and not a.is_vit and a.cam_target_layer() is a.model.visual.layer4
    assert a.model.visual.layer4[-1].conv3.weight.shape == (2048, 512, 1, 1)  # ResNet-50's last stage
    weights = [
        build("clip", "tiny-rn", checkpoint="random", device="cpu", seed=s).model.visual.conv1.weight
        for s in (1, 1, 2)
    ]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_presets_table_matches_seed_table_iii():
    assert {k: (v["model_name"], v["pretrained"]) for k, v in PRESETS.items() if k in TABLE_III} == {
        "OA-RN50": ("RN50", "openai"),
        "OA-RN101": ("RN101", "openai"),
        "OA-ViT-B": ("ViT-B-16", "openai"),
        "OA-ViT-L": ("ViT-L-14", "openai"),
        "CC-RN50": ("RN50", "cc12m"),
        "LA-ViT-B": ("ViT-B-16", "laion400m_e32"),
        "BC-ViT-B": ("hf-hub:imageomics/bioclip", ""),
    }
    for name, p in PRESETS.items():
        if p["pretrained"]:
            assert open_clip.get_pretrained_cfg(p["model_name"], p["pretrained"]), name


def test_docs_presets_table_is_the_code_table():
    """docs/clip.md shows the presets table printed from lvlm/models/clip/presets.py, so they cannot drift."""
    from pathlib import Path

    from lvlm.models.clip import presets_markdown

    docs = (Path(__file__).resolve().parents[1] / "docs" / "clip.md").read_text()
    assert presets_markdown() in docs


def test_pretrained_tag_from_the_hugging_face_hub_through_lvlm_weights(tmp_path, monkeypatch):
    """A tag whose weights are on the hub comes through huggingface_hub (cache, then download) with the
    revision given, and loads into the architecture."""
    import huggingface_hub
    from huggingface_hub import errors as hub_errors
    from safetensors.torch import save_file

    import lvlm.weights

    monkeypatch.delenv("LVLM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(lvlm.weights, "online", lambda host, **kw: True)
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    (cfg_dir / "lvlm-test-hub-rn.json").write_text(json.dumps(TINY_CONFIGS["tiny-rn"]))
    open_clip.add_model_config(cfg_dir)
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(
        open_clip,
        "get_pretrained_cfg",
        lambda m, t: (
            {"hf_hub": "org/lvlm-test-hub-rn/", "url": "", "quick_gelu": False}
            if (m, t) == ("lvlm-test-hub-rn", "hubtag")
            else real(m, t)
        ),
    )
    src = build("clip", "tiny-rn", device="cpu", seed=9)
    weights = tmp_path / "downloaded" / "open_clip_model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(weights))
    calls = []

    def hf_hub_download(**kw):
        calls.append(kw)
        if kw["local_files_only"]:
            raise hub_errors.LocalEntryNotFoundError("not cached")
        return str(weights)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    clip = load_open_clip("lvlm-test-hub-rn", "hubtag", device="cpu", name="T", revision="v1")
    # the cache is asked for both of open_clip's file names, then the hub for the preferred one
    assert [(c["local_files_only"], c["filename"]) for c in calls] == [
        (True, "open_clip_model.safetensors"),
        (True, "open_clip_pytorch_model.bin"),
        (False, "open_clip_model.safetensors"),
    ]
    assert all(c["repo_id"] == "org/lvlm-test-hub-rn" and c["revision"] == "v1" for c in calls)
    assert clip.source == str(weights)
    assert torch.allclose(_embeddings(src)[0], _embeddings(clip)[0], atol=1e-6)
