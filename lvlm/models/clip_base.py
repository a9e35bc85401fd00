"""The small interface every CLIP model offers to selectors and saliency methods.

Concrete models (open_clip presets, MedCLIP, our own trained CLIPs) subclass :class:`ClipModel`
and register a builder under kind ``"clip"``; callers only use what is declared here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class ClipModel:
    """An image tower + text tower in a shared embedding space, with its own preprocessing.

    Attributes set by subclasses:
      - ``name``: preset name (e.g. ``"OA-RN50"``)
      - ``model``: the underlying ``torch.nn.Module`` (eval mode, on ``device``)
      - ``image_size``: square input side in pixels; ``mean`` / ``std``: normalisation (0-1 scale)
      - ``device``: torch device string; ``is_vit``: True for transformer image towers
    """

    name: str = ""
    model: torch.nn.Module
    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    device: str = "cpu"
    is_vit: bool = False

    # --- preprocessing ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """H x W x 3 uint8 images (a list, or a B x H x W x 3 array / tensor) -> B x 3 x S x S normalised
        float tensor on ``device``, the same transform as the model's own (open_clip: resize the shortest
        side to S with bicubic interpolation, centre crop, normalise).

        Args:
            images: H x W x 3 uint8 images: a list, or a B x H x W x 3 array / tensor.
        """
        raise NotImplementedError

    def preprocess_chw(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W uint8 (or 0-255 float) tensor on device -> B x 3 x S x S normalised pixels.

        Args:
            x: B x 3 x H x W uint8 (or 0-255 float) tensor on the model's device.
        """
        arr = x.permute(0, 2, 3, 1).to("cpu", torch.uint8).numpy()
        return self.preprocess(list(arr))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S pixels on the 0-255 scale -> the model's normalised input.

        Args:
            x: B x 3 x S x S pixels on the 0-255 scale.
        """
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255
        return (x - mean) / std

    # --- encoders -----------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """B x 3 x S x S preprocessed pixels -> B x D embeddings (L2-normalised when ``normalize``).

        Args:
            pixels: B x 3 x S x S preprocessed pixels.
            normalize: L2-normalise the embeddings.
        """
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """T texts -> T x D embeddings (L2-normalised when ``normalize``); cached per text.

        Args:
            texts: the texts.
            normalize: L2-normalise the embeddings.
        """
        raise NotImplementedError

    def similarity(self, pixels: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """B x T cosine similarities of preprocessed images to normalised text embeddings (differentiable).

        Args:
            pixels: B x 3 x S x S preprocessed pixels.
            text_features: T x D normalised text embeddings.
        """
        img = self.encode_image(pixels, normalize=True)
        return img @ text_features.T

    # --- what CAM methods need ----------------------------------------------------------------
    def cam_target_layer(self) -> torch.nn.Module:
        """The layer whose activations CAM methods weight (ResNet: last conv stage; ViT: last block)."""
        raise NotImplementedError

    def reshape_transform(self, activations: torch.Tensor) -> torch.Tensor:
        """Target-layer output -> B x C x h x w (identity for CNNs; tokens to a grid for ViTs).

        Args:
            activations: the CAM target layer's output.
        """
        return activations


def byte_level_clip_tokenizer(model_max_length: int = 32, **kwargs):
    """A transformers ``CLIPTokenizer`` that needs no download, for tiny random models (tests, smoke runs).

    A CLIP byte-level BPE tokenizer with no merges: its vocabulary is the 256 byte symbols (plus their
    end-of-word forms) and the two special tokens, so text is split into characters.

    Args:
        model_max_length: the longest token sequence.
        **kwargs: passed to ``CLIPTokenizer`` (e.g. ``pad_token``).

    Returns:
        ``(tokenizer, vocab)``: the tokenizer and its ``{token: id}`` vocabulary.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab[bos], vocab[eos] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, **kwargs), vocab
