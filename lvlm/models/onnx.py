"""Run a torch module's forward pass with ONNX Runtime on the CPU (optional extra ``lvlm[onnx]``).

The model is exported once with ``torch.onnx.export`` and the file is cached under
``$LVLM_HOME/onnx/`` by a digest of the module's weights, the input shape and the torch / opset
versions, so later processes skip the export (a few seconds for LiteMedSAM's encoder). The wrapper is a
``torch.nn.Module`` that takes and returns CPU tensors, so it drops in where the torch module was
(``model.image_encoder = onnx_module(model.image_encoder, ...)``).

Why: on CPUs ONNX Runtime's convolution kernels (fused convolution + activation, blocked memory layouts)
run LiteMedSAM's TinyViT encoder about 1.7x faster than eager torch, with the same embedding to 1e-5
(docs/performance.md, ``benchmarks/encoder_speed.py --model litemedsam``).
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import LvlmError
from ..optional import has, require
from ..weights import cache_dir

OPSET = 20  # 20: ONNX Gelu (exact erf form) as one op, about 5 % faster than the erf graph of opset 17
BACKENDS = ("auto", "torch", "onnxruntime")


def available() -> bool:
    """True when onnxruntime and onnx (needed by the exporter) both import."""
    return has("onnxruntime") and has("onnx")


def check_backend(backend: Any) -> str:
    from ..errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"encoder_backend={backend!r}; valid: {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> ``onnxruntime`` on the CPU when it is installed, else ``torch``.

    ``onnxruntime`` on a GPU device is refused (this wrapper runs ONNX Runtime's CPU provider only).
    """
    check_backend(backend)
    on_cpu = str(device).startswith("cpu")
    if backend == "auto":
        return "onnxruntime" if on_cpu and available() else "torch"
    if backend == "onnxruntime":
        if not on_cpu:
            raise LvlmError(f"encoder_backend='onnxruntime' runs on the CPU only (device={device!r}); "
                            "use encoder_backend: torch (or auto) on a GPU")
        require("onnxruntime", "encoder_backend: onnxruntime")
        require("onnx", "exporting to ONNX")
    return backend


def _digest(module, example, opset: int) -> str:
    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}|{torch.__version__}|{opset}|"
             f"{tuple(example.shape)}|{example.dtype}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export_bytes(module, example, opset: int = OPSET) -> bytes:
    """The ONNX model of ``module`` traced on ``example``, as bytes.

    The input shape is fixed to ``example``'s (TinyViT's reshapes trace the batch size as a constant);
    :class:`OnnxModule` runs larger batches one example at a time."""
    require("onnx", "exporting to ONNX")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        with torch.no_grad():
            torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"])
    return buf.getvalue()


def _cached_export(module, example, name: str, opset: int) -> tuple[bytes, Path | None]:
    """(exported bytes, file) from ``$LVLM_HOME/onnx/{name}-{digest}.onnx``, exporting (and writing) on a miss.

    The write is atomic (temporary file + rename); an unwritable cache (file None) only costs the export
    next time."""
    path = cache_dir() / "onnx" / f"{name}-{_digest(module, example, opset)}.onnx"
    if path.is_file():
        return path.read_bytes(), path
    data = export_bytes(module, example, opset)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not cache the ONNX export at {path} ({exc}); it will be exported again next time",
                      stacklevel=3)
        return data, None
    return data, path


class OnnxModule(torch.nn.Module):
    """A ``torch.nn.Module`` whose forward runs an ONNX Runtime session (CPU, float32 in, float32 out; the
    model's input shape is the export example's, a batch of several runs one example at a time).

    ``torch_module`` keeps the original module (for reference and to fall back to); ``path`` is the cached
    ONNX file or None. ``threads``: ONNX Runtime's intra-op threads (default: ``torch.get_num_threads()`` at
    creation time). Threads do not spin between calls, so the torch stages that run in between keep the
    cores.
    """

    def __init__(self, torch_module, model_bytes: bytes, threads: int | None = None, path: Path | None = None):
        super().__init__()
        ort = require("onnxruntime", "encoder_backend: onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
        self.threads = so.intra_op_num_threads
        self.path = path
        object.__setattr__(self, "torch_module", torch_module)  # not a submodule: no duplicate weights in state_dict

    def __getattr__(self, name: str):
        # attributes the callers read from the original module (e.g. TinyViT's ``img_size``)
        try:
            return super().__getattr__(name)
        except AttributeError:
            tm = self.__dict__.get("torch_module")
            if tm is None:
                raise
            return getattr(tm, name)

    def forward(self, x):
        if x.device.type != "cpu":
            raise LvlmError(f"this ONNX Runtime module runs on the CPU; got a tensor on {x.device}")
        x = x.detach().to(torch.float32).contiguous().numpy()
        if x.shape[0] == 1:
            return torch.from_numpy(self.session.run(None, {"input": x})[0])
        return torch.from_numpy(np.concatenate([self.session.run(None, {"input": x[i:i + 1]})[0]
                                                for i in range(x.shape[0])]))

    def extra_repr(self) -> str:
        return f"onnxruntime, threads={self.threads}, file={self.path}"


def onnx_module(module, example, name: str, threads: int | None = None, opset: int = OPSET,
                _retry: bool = True) -> OnnxModule:
    """``module`` (eval mode, CPU) as an :class:`OnnxModule`, exported on ``example`` (cached on disk)."""
    module = module.eval()
    try:
        data, path = _cached_export(module, example, name, opset)
    except LvlmError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; say which module failed
        raise LvlmError(f"exporting {name} to ONNX failed ({type(exc).__name__}: {exc}); "
                        "use encoder_backend: torch") from exc
    try:
        return OnnxModule(module, data, threads, path)
    except Exception as exc:  # noqa: BLE001 - a damaged cached file (interrupted copy, full disk): export again
        if path is None or not _retry:
            raise LvlmError(f"ONNX Runtime could not load the export of {name} ({exc})") from exc
        warnings.warn(f"ONNX Runtime could not load the cached {path} ({type(exc).__name__}); exporting it again",
                      stacklevel=2)
        path.unlink(missing_ok=True)
        return onnx_module(module, example, name, threads, opset, _retry=False)
