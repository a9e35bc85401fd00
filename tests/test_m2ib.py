"""M2IB saliency (MedCLIP-SAMv2) on the tiny random open_clip ViT, pinned against a transcription of
MedCLIP-SAMv2's own recipe (the block replaced by block + bottleneck module, loss.backward, Adam)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from lvlm.errors import ConfigError
from lvlm.registry import build


@pytest.fixture(scope="module")
def clip():
    from lvlm.models.clip import load_clip

    return load_clip("tiny-vit", device="cpu")


def _inputs(clip):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    img[16:40, 20:44] = (230, 40, 40)
    pixels = clip.preprocess([img])
    with torch.no_grad():
        t = clip.encode_text(["a red square"], normalize=True).float()
    return pixels.float(), t


class _Bottleneck(torch.nn.Module):
    """MedCLIP-SAMv2's InformationBottleneck (scripts/iba.py) as written there: mean / std unused."""

    def __init__(self, shape):
        super().__init__()
        self.alpha = torch.nn.Parameter(torch.full((1, *shape), 5.0))
        self.buffer_capacity = None

    def forward(self, x):
        lamb = torch.sigmoid(self.alpha).expand(x.shape[0], x.shape[1], -1)
        masked_mu = x * lamb
        masked_var = (1 - lamb) ** 2
        self.buffer_capacity = -0.5 * (1 + torch.log(masked_var) - masked_mu**2 - masked_var)
        eps = masked_mu.data.new(masked_mu.size()).normal_()
        return masked_mu + masked_var.sqrt() * eps


class _Seq(torch.nn.Module):
    def __init__(self, block, ib):
        super().__init__()
        self.block, self.ib = block, ib

    def forward(self, *args, **kwargs):
        return self.ib(self.block(*args, **kwargs))


def reference_m2ib(clip, pixels, text, layer, beta=0.1, steps=10, lr=1.0, batch=10, seed=0):
    visual = clip.model.visual
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        feats = {}
        h = blocks[layer].register_forward_hook(lambda m, i, o: feats.setdefault("x", o))
        clip.encode_image(pixels)
        h.remove()
    ib = _Bottleneck(feats["x"].shape[1:])
    original = blocks[layer]
    blocks[layer] = _Seq(original, ib)
    try:
        torch.manual_seed(seed)
        opt = torch.optim.Adam(lr=lr, params=ib.parameters())
        images = pixels.expand(batch, -1, -1, -1)
        for _ in range(steps):
            opt.zero_grad()
            img = clip.encode_image(images, normalize=True).float()
            fit = torch.nn.CosineSimilarity(eps=1e-6)(text.expand(batch, -1), img).mean()
            loss = beta * ib.buffer_capacity.mean() - fit
            loss.backward()
            opt.step()
    finally:
        blocks[layer] = original
        clip.model.zero_grad(set_to_none=True)
    sal = torch.nansum(ib.buffer_capacity.mean(axis=0), -1)[1:]
    g = int(sal.numel() ** 0.5)
    sal = F.interpolate(sal.reshape(1, 1, g, g), size=tuple(pixels.shape[-2:]), mode="bilinear")
    sal = sal.squeeze().detach()
    return (sal - sal.min()) / (sal.max() - sal.min())


@pytest.mark.parametrize("layer", [0, 1])
def test_m2ib_equals_medclip_samv2_recipe(clip, layer):
    pixels, text = _inputs(clip)
    ours = build("saliency", "m2ib", layer=layer)(clip, pixels, text)
    ref = reference_m2ib(clip, pixels, text, layer)
    assert ours.shape == pixels.shape[-2:]
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-4)
    # the CLIP weights are untouched and get no gradients
    assert all(p.grad is None for p in clip.model.parameters())


def test_defaults_are_medclip_samv2s():
    m = build("saliency", "m2ib")
    assert (m.layer, m.beta, m.var, m.steps, m.lr, m.samples) == (7, 0.1, 1.0, 10, 1.0, 10)


def test_bad_layer_and_non_vit(clip):
    pixels, text = _inputs(clip)
    with pytest.raises(ConfigError, match="blocks"):
        build("saliency", "m2ib", layer=7)(clip, pixels, text)
    from lvlm.models.clip import load_clip

    rn = load_clip("tiny-rn", device="cpu")
    with pytest.raises(ConfigError, match="ViT"):
        build("saliency", "m2ib", layer=0)(rn, pixels, text)


def test_saliency_prompter_with_m2ib_then_crf(rgb_image):
    prompter = build(
        "prompter",
        "saliency",
        clip="tiny-vit",
        method={"name": "m2ib", "layer": 1, "steps": 3},
        crf={"name": "torch", "iterations": 2},
        device="cpu",
    )
    prompts, extra = prompter.prompts(rgb_image, "a red square")
    assert extra["saliency"].shape == rgb_image.shape[:2]
    assert prompts.boxes is not None and len(prompts.boxes) >= 1
