"""The `clip` selector on scenes where the right candidate is known, the merge combiner, and the base pipeline
end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from lvlm.components import MaskGenerator
from lvlm.errors import ConfigError
from lvlm.models.clip_base import ClipModel
from lvlm.pipeline import CONFIG_DIR, Pipeline
from lvlm.registry import available, build, check_kwargs, get
from lvlm.selectors.clip import CROPS, ClipSelector, fill_template, template_list
from lvlm.types import Candidates

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230)}


class MeanColourClip(ClipModel):
    """A stand-in CLIP whose image embedding is the mean colour weighted by saturation and whose text
    embedding is the colour named.

    Black and grey pixels add nothing, so a candidate shown on black or grey embeds as its own colour."""

    name = "mean-colour"
    image_size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self):
        self.model = torch.nn.Identity()
        self.image_calls: list[int] = []
        self.text_calls = 0

    def preprocess(self, images):
        x = torch.as_tensor(np.stack(images) if isinstance(images, list) else images)
        x = x.permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        return (x / 255.0 - 0.5) / 0.5

    def encode_image(self, pixels, normalize=True):
        self.image_calls.append(len(pixels))
        rgb = pixels * 0.5 + 0.5
        saturation = rgb.amax(1, keepdim=True) - rgb.amin(1, keepdim=True)
        feats = (saturation * rgb).mean(dim=(2, 3))
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, texts, normalize=True):
        self.text_calls += 1
        out = torch.zeros(len(texts), 3)
        for i, t in enumerate(texts):
            for word, rgb in COLOURS.items():
                if word in t:
                    out[i] = torch.tensor(rgb, dtype=torch.float32)
        return F.normalize(out, dim=-1) if normalize else out


def scene(seed: int, h: int = 96, w: int = 128):
    """A dark noisy background with three coloured objects; candidates = the true masks + distractors."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 25, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    objects = {}
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    rng.shuffle(cells)
    for (cy, cx), (name, rgb) in zip(cells, COLOURS.items()):
        y0 = cy * h // 2 + rng.integers(4, 12)
        x0 = cx * w // 2 + rng.integers(4, 14)
        ry, rx = rng.integers(10, 18), rng.integers(12, 22)
        m = ((yy - y0 - ry) / ry) ** 2 + ((xx - x0 - rx) / rx) ** 2 <= 1
        img[m] = rgb
        objects[name] = m
    background = ~np.any(list(objects.values()), axis=0)
    blob = ((yy - h // 2) ** 2 + (xx - w // 2) ** 2) <= (min(h, w) // 3) ** 2
    distractors = [background, objects["red"] | objects["green"], blob, objects["green"] | objects["blue"]]
    names = list(objects) + ["background", "red+green", "blob", "green+blue"]
    return img, np.stack(list(objects.values()) + distractors), names


@pytest.fixture
def stub():
    return MeanColourClip()


@pytest.mark.parametrize(
    "crop", [c for c in CROPS if c != "blur_background"] + [["mask_black", "mask_crop", "bbox_crop"]]
)
def test_selector_picks_the_object_named(stub, crop):
    """(blur_background keeps the other objects' colour, blurred: a mean-colour stub cannot tell; see
    below.)"""
    sel = ClipSelector(model=stub, crop=crop, margin=0.05, templates="a photo of a {}")
    for seed in range(4):
        img, masks, names = scene(seed)
        for colour in COLOURS:
            res = sel.select(img, f"{colour} ellipse", Candidates(masks))
            assert names[res.index] == colour, (seed, crop, colour, res.scores)
            assert np.array_equal(res.mask, masks[res.index])
            assert res.scores.shape == (len(masks),) and res.score == pytest.approx(res.scores.max())


def test_all_crops_go_through_clip_in_chunked_batches_and_text_is_cached(stub):
    img, masks, _ = scene(0)
    sel = ClipSelector(model=stub, crop=["mask_black", "bbox_crop"], batch_size=3)
    sel.select(img, "red", Candidates(masks))
    assert stub.image_calls == [
        3,
        3,
        1,
        3,
        3,
        1,
    ]  # 7 candidates, 2 crops, chunks of 3: no per-candidate forward
    sel.select(img, "red", Candidates(masks))
    sel.select(img, "green", Candidates(masks))
    assert stub.text_calls == 2  # once per (prompt, templates)


def test_merge_returns_both_halves_of_a_split_object(stub):
    """Villarreal et al. Fig. 7: SAM returns the two lungs separately; `merge` unites near-best,
    non-overlapping masks."""
    img, masks, names = scene(1)
    red = masks[names.index("red")]
    cols = np.where(red.any(0))[0]
    mid = (cols[0] + cols[-1]) // 2
    left, right = red.copy(), red.copy()
    left[:, mid:] = False
    right[:, :mid] = False
    left_grown = left | np.roll(left, 2, axis=1)  # a near-duplicate of the left half
    keep = [i for i, n in enumerate(names) if n != "red"]
    cands = Candidates(np.concatenate([masks[keep], np.stack([left, right, left_grown])]))
    i_left, i_right = len(keep), len(keep) + 1

    selector = ClipSelector(model=stub, rule="argmax")
    argmax = selector.select(img, "red", cands)
    assert argmax.index in (i_left, i_right, i_left + 2)
    # uniting is the `merge` combiner's job, on the selector's scores
    merged = build("combine", "merge", margin=0.02, max_overlap=0.2).combine(img, "red", cands, argmax)
    assert sorted(merged.index)[:2] == [i_left, i_right] or set(merged.index) == {i_right, i_left + 2}
    assert len(merged.index) == 2  # the near-duplicate is not added, nor the red+green union or anything else
    assert merged.mask.sum() >= 0.95 * red.sum() and not (merged.mask & ~red & ~left_grown).any()
    assert len(merged.instances) == 2 and set(merged.instances.labels) == {"red"}
    tight = build("combine", "merge", margin=0.0, max_masks=1).combine(img, "red", cands, argmax)
    assert len(tight.index) == 1
    with pytest.raises(ConfigError, match="name: merge"):
        ClipSelector(model=stub, rule="merge")


def test_area_prior_and_min_area(stub):
    """Equal CLIP scores (a part of the object and the whole): the area prior prefers the whole; tiny ones are
    dropped."""
    img, masks, names = scene(2)
    red = masks[names.index("red")]
    part = red.copy()
    part[: np.where(red.any(1))[0].mean().astype(int)] = False
    speck = np.zeros_like(red)
    speck[tuple(np.argwhere(red)[0])] = True
    cands = Candidates(np.stack([speck, part, red, masks[names.index("green")]]))
    res = ClipSelector(model=stub, area_weight=0.01).select(img, "red", cands)
    assert res.index == 2
    res = ClipSelector(model=stub, min_area_frac=0.001).select(img, "red", cands)
    assert res.index in (1, 2) and res.scores[0] == -np.inf and np.isfinite(res.extra["similarity"][0])
    stab = Candidates(cands.masks, stability=np.array([0.1, 0.2, 0.99, 0.5]))
    assert ClipSelector(model=stub, stability_weight=0.05).select(img, "red", stab).index == 2


def test_crop_geometry_on_a_real_clip_preprocessing():
    """mask_crop shows the mask's box (plus margin) filling the model input; bbox_crop keeps the box's
    pixels."""
    clip = build("clip", "tiny-rn", device="cpu")
    img = np.full((100, 120, 3), 90, np.uint8)
    img[30:50, 40:60] = 255
    mask = np.zeros((100, 120), bool)
    mask[30:50, 40:60] = True
    sel = ClipSelector(model=clip, margin=0.1)
    std = torch.tensor(clip.std).view(3, 1, 1)
    mean = torch.tensor(clip.mean).view(3, 1, 1)

    def pixels(crop):
        return ((sel.crop_images(img, mask[None], crop)[0] * std + mean) * 255).round()

    s = clip.image_size
    mc = pixels("mask_crop")
    assert (mc.mean(0) / 255).mean().item() == pytest.approx(
        (20 / 24) ** 2, abs=0.02
    )  # 20 px object, 24 px crop
    assert (mc[:, s // 2, s // 2] == 255).all() and mc[:, 1, 1].max() < 5
    bc = pixels("bbox_crop")
    assert (bc[:, 1:-1, 1:-1] > 80).all()  # the margin ring shows the grey image, not black
    mb = pixels("mask_black")
    assert (mb > 250).all(0).float().mean().item() == pytest.approx(400 / 100**2, abs=0.02)
    gb = pixels("grey_background")
    assert abs(gb[:, 2, 2] - torch.tensor(clip.mean) * 255).max() <= 1
    inside = (25, 26)  # the object's centre (40, 50) after resizing 100 -> 64 and cropping 6 px on the left
    assert (mb[:, inside[0], inside[1]] == 255).all()
    assert torch.equal(pixels("blur_background")[:, inside[0], inside[1]], mb[:, inside[0], inside[1]])
    assert (
        pixels("blur_background")[:, 2, 2] - 90
    ).abs().max() <= 1  # a flat grey background blurs to itself


def test_blur_background_composite_matches_scipy():
    """blur_background: the mask's pixels as they are, the rest Gaussian-blurred (sigma = blur_sigma x longer
    side)."""
    from scipy.ndimage import gaussian_filter

    from lvlm.selectors.clip import _gaussian_blur

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 50, 3)).astype(np.float32)
    ours = _gaussian_blur(torch.from_numpy(img).permute(2, 0, 1)[None], 2.0)[0].permute(1, 2, 0).numpy()
    ref = np.stack([gaussian_filter(img[..., c], 2.0, mode="mirror", truncate=3.0) for c in range(3)], -1)
    np.testing.assert_allclose(ours, ref, atol=0.05)
    sel = ClipSelector(model=MeanColourClip(), blur_sigma=0.04)
    m = torch.zeros(1, 1, 40, 50, dtype=torch.bool)
    m[..., 10:20, 10:30] = True
    t = torch.from_numpy(img.astype(np.uint8)).permute(2, 0, 1)[None]
    bg = sel._background(t, "blur_background")
    comp = torch.where(m, t, bg)[0].permute(1, 2, 0).numpy().astype(float)
    assert np.array_equal(comp[10:20, 10:30], img.astype(np.uint8)[10:20, 10:30])
    ref2 = np.stack(
        [
            gaussian_filter(img.astype(np.uint8)[..., c].astype(float), 2.0, mode="mirror", truncate=3.0)
            for c in range(3)
        ],
        -1,
    )
    assert np.abs(comp[30:, :] - ref2[30:, :]).max() <= 1.0


def test_templates_and_articles():
    assert template_list("a photo of a {}") == ["a photo of a {}"]
    assert len(template_list("imagenet")) == 80 and all("{}" in t for t in template_list("imagenet"))
    assert len(template_list("medical")) > 3
    assert fill_template("a photo of a {}", "cat") == "a photo of a cat"
    assert fill_template("a photo of a {}", "a red triangle") == "a photo of a red triangle"
    assert fill_template("a photo of the {}.", "the lungs") == "a photo of the lungs."

    for bad in ({"templates": "no placeholder"}, {"crop": "mask_blak"}, {"rule": "max"}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            ClipSelector(model=MeanColourClip(), **bad)


def test_no_candidates_gives_an_empty_mask(stub):
    res = ClipSelector(model=stub).select(np.zeros((10, 12, 3), np.uint8), "red", Candidates.empty(10, 12))
    assert res.index is None and not res.mask.any() and res.mask.shape == (10, 12)


class SceneGenerator(MaskGenerator):
    """Candidates = the scene's masks (a stand-in for SAM's everything mode)."""

    def __init__(self, masks):
        self.masks = masks

    def generate(self, image):
        return Candidates(self.masks, source="scene")


def test_pipeline_with_stub_generator_selects_the_named_object(stub):
    img, masks, names = scene(3)
    pipe = Pipeline.from_config(
        {"generator": SceneGenerator(masks), "selector": {"name": "clip", "model": stub}}
    )
    res = pipe(img, "the blue one")
    assert np.array_equal(res.mask, masks[names.index("blue")]) and res.index == names.index("blue")
    assert len(res.scores) == len(masks)


def test_base_configs_are_valid():
    """Every configs/base/*.yaml names registered components with valid keys and a registered CLIP preset."""
    files = sorted((CONFIG_DIR / "base").glob("*.yaml"))
    presets = available("clip")
    assert len(files) >= 21
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        assert set(cfg) <= {"generator", "selector", "description"}, f
        for stage in ("generator", "selector"):
            spec = dict(cfg[stage])
            entry = get(stage, spec.pop("name"))
            check_kwargs(entry.obj, spec, where=str(f))
        assert cfg["selector"]["model"] in presets, f
    for clip in (
        "OA-RN50",
        "OA-RN101",
        "OA-ViT-B",
        "OA-ViT-L",
        "CC-RN50",
        "LA-ViT-B",
        "BC-ViT-B",
        "MC-RN50",
        "MC-SwinT",
    ):
        for sam in ("sam-vit-h", "sam2-large"):
            assert (CONFIG_DIR / "base" / f"{clip.lower()}_{sam}.yaml").is_file()


@pytest.mark.skipif(not Path(CONFIG_DIR / "base" / "tiny.yaml").is_file(), reason="no tiny config")
def test_tiny_config_end_to_end_and_cli(tmp_path, capsys):
    """configs/base/tiny.yaml (tiny random SAM + tiny-rn) runs in Python and through `lvlm segment`."""
    if "sam" not in available("generator"):
        pytest.skip("the sam generator is not available")
    from PIL import Image

    from lvlm.cli import main

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    pipe = Pipeline.from_config(
        "configs/base/tiny.yaml" if Path("configs/base/tiny.yaml").is_file() else "base/tiny"
    )
    res = pipe(img, "cat")
    assert res.mask.shape == (64, 80) and res.timings["selector"] >= 0
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            *paths,
            "--prompt",
            "cat",
            "--config",
            str(CONFIG_DIR / "base" / "tiny.yaml"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0_cat.png", "img1_cat.png"]
    assert np.asarray(Image.open(out / "img0_cat.png")).shape == (48, 64)
