"""A specialised mask decoder is one config line away: `decoder_checkpoint:` on the prompted segmenters."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from lvlm import Pipeline
from lvlm.registry import build


def test_decoder_checkpoint_loads_through_a_config(tmp_path):
    seg = build("segmenter", "sam", model_type="vit_tiny", checkpoint=None, device="cpu")
    with torch.no_grad():
        for p in seg.model.mask_decoder.parameters():
            p.add_(0.01 * torch.randn_like(p))  # a "specialised" decoder differs from the base one
    sd = {f"mask_decoder.{k}": v.contiguous() for k, v in seg.model.mask_decoder.state_dict().items()}
    path = tmp_path / "decoder.safetensors"
    save_file(sd, str(path))
    pipe = Pipeline.from_config(
        {
            "segmenter": {
                "name": "sam",
                "model_type": "vit_tiny",
                "checkpoint": None,
                "device": "cpu",
                "decoder_checkpoint": str(path),
            }
        }
    )
    for k, v in pipe.segmenter.model.mask_decoder.state_dict().items():
        torch.testing.assert_close(v, seg.model.mask_decoder.state_dict()[k])
    img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    a = pipe(img, box=[5, 5, 30, 30]).mask
    b = seg.segment(img, __import__("lvlm").Prompts(boxes=[[5, 5, 30, 30]])).masks[0]
    np.testing.assert_array_equal(a, b)
