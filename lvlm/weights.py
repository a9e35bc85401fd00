"""Weight resolution in one place: explicit path > ``$LVLM_HOME`` > official URL / hub id when online.

When the file is not on disk and cannot be fetched, :func:`resolve` raises
:class:`~lvlm.errors.WeightsNotFoundError` within seconds, naming the file, the directory it was
looked for in and the URL to get it from. It never hangs: the network is probed with a short
timeout first (``LVLM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` skip the probe).
"""
from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import WeightsNotFoundError

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class WeightSpec:
    """Where a weight file comes from: its file name, an official URL and/or a Hugging Face id."""

    filename: str
    url: str | None = None  # direct download
    hf_repo: str | None = None  # Hugging Face repo id
    hf_file: str | None = None  # file inside the repo
    page: str | None = None  # where a human gets it when there is no direct URL (Google Drive, ...)
    license: str = ""

    @property
    def where(self) -> str:
        if self.url:
            return self.url
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}" + (f" (file {self.hf_file})" if self.hf_file else "")
        return self.page or "(no public URL known)"


def cache_dir() -> Path:
    """``$LVLM_HOME`` (default ``~/.cache/lvlm``): where weights are looked for and downloaded to."""
    return Path(os.environ.get("LVLM_HOME", Path.home() / ".cache" / "lvlm")).expanduser()


def offline() -> bool:
    return os.environ.get("LVLM_OFFLINE", "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def online(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds."""
    if offline():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(spec: WeightSpec, path: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The local path of a weight file: ``path`` if given, else the cache, else a download.

    Raises WeightsNotFoundError (fast) when none of these works.
    """
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if p.is_dir() and (p / spec.filename).is_file():
            return p / spec.filename
        raise WeightsNotFoundError(
            f"weights file {str(p)!r} not found; expected {spec.filename} (get it from {spec.where})"
        )
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return cached
    reason = "downloads are disabled"
    if download and (spec.url or spec.hf_repo):
        host = urllib.parse.urlparse(spec.url).hostname if spec.url else "huggingface.co"
        if online(host or ""):
            try:
                return _download(spec, cached)
            except Exception as exc:  # noqa: BLE001 - report any failure the same way
                reason = f"download failed: {exc}"
        else:
            reason = f"{host} is unreachable (offline)"
    elif download:
        reason = "there is no direct download for it"
    raise WeightsNotFoundError(
        f"weights {spec.filename} not found in {cached.parent} and {reason}. "
        f"Get it from {spec.where} and put it at {cached} (or set LVLM_HOME, or pass checkpoint=PATH)."
    )


def _download(spec: WeightSpec, dest: Path) -> Path:
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    if spec.url:
        url = spec.url
    else:
        url = f"https://huggingface.co/{spec.hf_repo}/resolve/main/{spec.hf_file or spec.filename}"
    with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as f:
        total = int(resp.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {spec.filename}") as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    tmp.replace(dest)
    return dest


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a torch file (``weights_only=True``).

    Checkpoints that wrap the weights (``{"model": ...}`` / ``{"state_dict": ...}``) are unwrapped.
    """
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    sd = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{p}: expected a state dict, got {type(sd).__name__}")
    return sd


def is_random(checkpoint: Any) -> bool:
    """The config convention for random initialisation: ``checkpoint: null`` or ``checkpoint: random``."""
    return checkpoint is None or (isinstance(checkpoint, str) and checkpoint.lower() in ("random", "none"))
