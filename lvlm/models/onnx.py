"""Run a torch module's forward pass with ONNX Runtime on the CPU (optional extra ``lvlm[onnx]``).

The model is exported once with ``torch.onnx.export`` and the file is cached under
``$LVLM_HOME/onnx/`` by a digest of the module's weights, the input shape and the torch / opset
versions, so later processes skip the export (a few seconds for LiteMedSAM's encoder). The wrapper is a
``torch.nn.Module`` that takes and returns CPU tensors, so it drops in where the torch module was
(``model.image_encoder = onnx_module(model.image_encoder, ...)``).

A one-input module (an image encoder) is exported with a dynamic batch axis, so a batch of B images is one
``session.run`` (ONNX Runtime's kernels then work on B images at once, as torch's do). The legacy (TorchScript
tracing) exporter records every size a module reads with ``x.shape`` as a graph value, but Python's ``len(x)``
turns the traced batch size into a constant: TinyViT's ``PatchMerging`` reads its batch size that way, so a
plain export reshapes every batch to the example's. During the export ``len`` of a tensor is therefore traced
as ``x.shape[0]`` in the modules that define the exported classes (:func:`_traced_len`), the example is traced
at batch 2 and the new export is checked on a batch of 1 against torch's output as traced: a batch size
still baked into the graph is then 2, which a batch of 1 does not fit (a wrong shape, an error or other
values). An export that fails the check is replaced by a fixed batch-1 one (run one image at a time, with a
warning). Exports without a batch axis (files cached by earlier versions, modules of several inputs) run one
example per run as before.

Why: on CPUs ONNX Runtime's convolution kernels (fused convolution + activation, blocked memory layouts)
run LiteMedSAM's TinyViT encoder faster than eager torch, with the same embedding to 1.3e-6 (figures in
docs/performance.md, ``benchmarks/encoder_speed.py --model litemedsam``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, LvlmError
from ..fsutil import atomic_write
from ..optional import has, require
from ..weights import cache_dir

OPSET = 20  # 20: ONNX Gelu (exact erf form) as one op, faster than opset 17's erf graph (docs/performance.md)
BACKENDS = ("auto", "torch", "onnxruntime")


def available() -> bool:
    """True when onnxruntime and onnx (needed by the exporter) both import."""
    return has("onnxruntime") and has("onnx")


def check_backend(backend: Any) -> str:
    """``backend`` when it is one of ``BACKENDS``, else ConfigError.

    Args:
        backend: the encoder backend setting.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"encoder_backend={backend!r}; valid: {', '.join(BACKENDS)}")
    return backend


def resolve_backend(backend: str, device: str, option: str = "encoder_backend") -> str:
    """``auto`` -> ``onnxruntime`` on the CPU when it is installed, else ``torch``.

    ``onnxruntime`` on a GPU device is refused (this wrapper runs ONNX Runtime's CPU provider only).

    Args:
        backend: ``auto``, ``torch`` or ``onnxruntime``.
        device: the device the model runs on.
        option: the setting's name, for error messages.
    """
    check_backend(backend)
    on_cpu = str(device).startswith("cpu")
    if backend == "auto":
        return "onnxruntime" if on_cpu and available() else "torch"
    if backend == "onnxruntime":
        if not on_cpu:
            raise ConfigError(
                f"{option}='onnxruntime' runs on the CPU only (device={device!r}); "
                f"use {option}: torch on a GPU"
            )
        require("onnxruntime", f"{option}: onnxruntime")
        require("onnx", "exporting to ONNX")
    return backend


def _package_versions(module) -> str:
    """Versions of the distributions that define the classes of ``module`` and its submodules (their code is
    part of the exported graph)."""
    from importlib import metadata

    out = []
    for top in sorted({type(m).__module__.split(".")[0] for m in module.modules()}):
        version = "?"
        for dist in (top, top.replace("_", "-")):
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        out.append(f"{top}=={version}")
    return ",".join(out)


def _examples(example) -> tuple:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


#: the dynamic axes of a one-input module exported with a batch axis (the outputs' names are the exporter's,
#: so their batch axes follow from the input's)
BATCH_AXES = {"input0": {0: "batch"}}
#: the batch sizes of the check of a batch-axis export (traced at batch 2) against torch's output as traced:
#: 1 catches a batch size baked into the graph for one ONNX Runtime run (tests/test_onnx.py compares batches
#: of 3 with torch)
CHECK_BATCHES = (1,)


@contextlib.contextmanager
def _traced_len(module):
    """While the block runs, ``len(x)`` of a tensor in the code of ``module``'s classes is ``x.shape[0]``.

    Under the tracing exporter ``x.shape[0]`` is a traced value, whereas Python's ``len`` converts it to an
    int, i.e. a constant in the graph (TinyViT's ``PatchMerging``: ``B = len(x); x.view(B, H, W, -1)``). Each
    module (Python file) that defines a class of ``module``'s submodules and has no ``len`` of its own gets a
    module-level ``len`` for the block only; torch's own modules are left alone. Outside tracing the
    replacement returns what ``len`` returns.

    Args:
        module: the torch module about to be exported.
    """
    import builtins
    import sys

    def traced_len(obj):
        if isinstance(obj, torch.Tensor) and obj.dim() > 0:
            return obj.shape[0]
        return builtins.len(obj)

    patched = []
    for name in sorted({type(m).__module__ for m in module.modules()}):
        mod = sys.modules.get(name)
        if mod is None or name.split(".")[0] == "torch" or "len" in vars(mod):
            continue
        mod.len = traced_len
        patched.append(mod)
    try:
        yield
    finally:
        for mod in patched:
            if vars(mod).get("len") is traced_len:
                del mod.len


def _digest(module, example, opset: int, dynamic_axes: dict | None = None) -> str:
    """Key of an export: class, the versions of the packages of all its submodules' classes, lvlm's, torch's,
    opset, input shapes, dynamic axes, ``module.onnx_key`` (settings that change the graph but are no
    weights) and every weight."""
    from .. import __version__

    h = hashlib.sha256()
    shapes = [(tuple(x.shape), str(x.dtype)) for x in _examples(example)]
    h.update(
        f"{type(module).__module__}.{type(module).__qualname__}|{_package_versions(module)}|"
        f"lvlm=={__version__}|{torch.__version__}|{opset}|{shapes}|{sorted((dynamic_axes or {}).items())}|"
        f"{getattr(module, 'onnx_key', '')}".encode()
    )
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export_bytes(module, example, opset: int = OPSET, dynamic_axes: dict | None = None) -> bytes:
    """The ONNX model of ``module`` traced on ``example`` (a tensor or a tuple of tensors), as bytes.

    Inputs are named ``input0``, ``input1``, ... (outputs are read in order); shapes are fixed to the
    example's except the ``dynamic_axes`` given, as ``{"input2": {0: "n"}}`` (``len(x)`` of a tensor is
    traced as ``x.shape[0]``: :func:`_traced_len`). Whether a dynamic axis really is dynamic in the graph is
    not checked here (:func:`onnx_module` checks the batch axis it asks for).

    Args:
        module: the torch module (eval mode, CPU).
        example: an example input tensor, or a tuple of them.
        opset: the ONNX opset version.
        dynamic_axes: ``{input name: {axis: name}}`` for inputs whose sizes may vary, or None.
    """
    import inspect

    require("onnx", "exporting to ONNX")
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    examples = _examples(example)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the exporter's deprecation and tracer notes are not the user's concern
        with torch.no_grad(), _traced_len(module):
            torch.onnx.export(
                module,
                examples,
                buf,
                opset_version=opset,
                input_names=[f"input{i}" for i in range(len(examples))],
                dynamic_axes=dynamic_axes,
                **kwargs,
            )
    return buf.getvalue()


def _read_cached(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:  # unreadable (another user's file, permissions): export in memory instead
        return None


def _write_cached(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` with :func:`lvlm.fsutil.atomic_write` (False, with a warning, when it
    fails)."""
    try:
        atomic_write(path, data, fsync=False)
        return True
    except OSError as exc:
        warnings.warn(
            f"could not cache the ONNX export at {path} ({exc}); it will be exported again next time",
            stacklevel=4,
        )
        return False


class OnnxModule(torch.nn.Module):
    """A ``torch.nn.Module`` whose forward runs an ONNX Runtime session (CPU, float32 in, float32 out).

    With one input, any batch size: ``max_batch`` rows per ``session.run`` when the export has a dynamic batch
    axis (:attr:`batched`; ``max_batch`` 1 by default, None = the whole batch in one run), else one run per
    example; with several inputs, the caller gives the exported shapes.

    ``torch_module`` keeps the original module; ``state_dict`` gives its weights under its own keys (so
    content hashes of the encoder are the same as the torch module's: for TinyViT, the folded one); loading a
    state dict into this module raises, because it would not change what ONNX Runtime runs: build it again
    instead. ``path`` is the cached ONNX file or None. ``threads``: ONNX Runtime's intra-op threads (default:
    ``torch.get_num_threads()`` at creation time). Threads do not spin between calls, so the torch stages that
    run in between keep the cores. Always in eval mode (inference only); copies and pickles rebuild the
    session.

    Args:
        torch_module: the exported torch module (kept for its weights).
        model_bytes: the ONNX model.
        threads: ONNX Runtime's intra-op threads (None: ``torch.get_num_threads()``).
        path: the cached ONNX file, or None.
    """

    #: rows per ``session.run`` of a batched export (None: the whole batch); set on the class or on one
    #: module. One image per run is the default: on the 2-core CPU measured (docs/performance.md) it was
    #: faster than whole batches, as a batch of TinyViT inputs leaves the caches.
    max_batch: int | None = 1

    def __init__(
        self, torch_module, model_bytes: bytes, threads: int | None = None, path: Path | None = None
    ):
        super().__init__()
        self.threads = int(threads or torch.get_num_threads())
        self.path = path
        self.model_bytes = None if path is not None else model_bytes  # a cached file is read again by a copy
        self.session = self._session(model_bytes)
        object.__setattr__(
            self, "torch_module", torch_module
        )  # kept, not a submodule: see _save_to_state_dict
        self.train(False)

    @property
    def batched(self) -> bool:
        """True when the export's first input has a dynamic batch axis (a batch is one ``session.run``)."""
        return not isinstance(self.session.get_inputs()[0].shape[0], int)

    def _session(self, model_bytes: bytes | None = None):
        ort = require("onnxruntime", "encoder_backend: onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        if model_bytes is None:
            model_bytes = self.model_bytes if self.model_bytes is not None else Path(self.path).read_bytes()
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])

    def __getstate__(self):
        state = self.__dict__.copy()
        state["session"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.session = self._session()

    def __getattr__(self, name: str):
        # attributes the callers read from the original module (e.g. TinyViT's ``img_size``)
        try:
            return super().__getattr__(name)
        except AttributeError:
            tm = None if name.startswith("_") else self.__dict__.get("torch_module")
            if tm is None:
                raise
            return getattr(tm, name)

    def train(self, mode: bool = True):
        """Stays in eval mode whatever ``mode`` is (the exported graph is the eval-mode one).

        Args:
            mode: ignored.
        """
        super().train(False)  # the exported graph is the eval-mode one
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # the torch module's weights under the same keys as the torch module itself, so state_dict and content
        # hashes (the decoder trainer's encoder fingerprint) are the same with either backend
        self.torch_module.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)

    def _load_from_state_dict(self, *args, **kwargs):
        raise LvlmError(
            "this encoder runs an ONNX export of fixed weights; loading new weights would not change "
            "it: build the model again with the new checkpoint (or use encoder_backend: torch)"
        )

    def forward(self, *xs):
        """Run the ONNX Runtime session on CPU tensors; returns float32 tensor(s).

        Args:
            *xs: the inputs, in the exported order.
        """
        for x in xs:
            if x.device.type != "cpu":
                raise LvlmError(f"this ONNX Runtime module runs on the CPU; got a tensor on {x.device}")
        arrays = [x.detach().to(torch.float32).contiguous().numpy() for x in xs]
        if len(arrays) > 1:  # shapes as exported
            outs = self.session.run(None, {f"input{i}": a for i, a in enumerate(arrays)})
            res = tuple(torch.from_numpy(o) for o in outs)
            return res[0] if len(res) == 1 else res
        x = arrays[0]
        if x.shape[0] == 0:  # an empty batch: the output shape of one example, zero rows
            meta = self.session.get_outputs()[0]
            return torch.zeros((0, *meta.shape[1:]), dtype=torch.float32)
        n = x.shape[0]
        step = (n if self.max_batch is None else max(1, int(self.max_batch))) if self.batched else 1
        outs = [self.session.run(None, {"input0": x[s : s + step]})[0] for s in range(0, n, step)]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))

    def extra_repr(self) -> str:
        return f"onnxruntime, threads={self.threads}, batched={self.batched}, file={self.path}"


def onnx_module(
    module,
    example,
    name: str,
    threads: int | None = None,
    opset: int = OPSET,
    dynamic_axes: dict | None = None,
    batch_axis: bool | None = None,
) -> OnnxModule:
    """``module`` (eval mode, CPU) as an :class:`OnnxModule`, exported on ``example`` (``dynamic_axes``: see
    :func:`export_bytes`).

    The export is cached in ``$LVLM_HOME/onnx/{name}-{digest}.onnx``; a cached file that ONNX Runtime cannot
    load (an interrupted copy) is exported again, with a warning. Errors are :class:`~lvlm.errors.LvlmError`.

    With ``batch_axis`` the one input and the outputs get a dynamic batch axis (``BATCH_AXES``), so a batch is
    one ``session.run``: the first row of ``example`` is traced at batch 2 and the new export is checked
    against torch's output as traced on batches of ``CHECK_BATCHES``; an export that fails the check is
    exported again at batch 1 (one run per example), with a warning, and cached as such.

    Args:
        module: the torch module (eval mode, CPU).
        example: an example input tensor, or a tuple of them.
        name: the cached file's name prefix.
        threads: ONNX Runtime's intra-op threads (None: ``torch.get_num_threads()``).
        opset: the ONNX opset version.
        dynamic_axes: see :func:`export_bytes`.
        batch_axis: export with a dynamic batch axis; None: for a one-input module given no ``dynamic_axes``.
    """
    if isinstance(module, OnnxModule):
        raise LvlmError(f"{name} already runs in ONNX Runtime; use it as it is")
    module = module.eval()
    n_in = len(_examples(example))
    if batch_axis is None:
        batch_axis = n_in == 1 and dynamic_axes is None
    if batch_axis:
        if n_in != 1 or dynamic_axes is not None:
            raise LvlmError(f"{name}: batch_axis is for a module of one input and no other dynamic axes")
        x = _examples(example)[0]
        example, dynamic_axes = torch.cat([x[:1], x[:1]]), BATCH_AXES
    path = cache_dir() / "onnx" / f"{name}-{_digest(module, example, opset, dynamic_axes)}.onnx"
    data = _read_cached(path)
    if data is not None:
        try:
            return _checked(OnnxModule(module, data, threads, path), n_in, name)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            warnings.warn(
                f"ONNX Runtime could not load the cached {path} ({type(exc).__name__}); exporting it again",
                stacklevel=2,
            )
    data, module_, traced = _export_and_load(module, example, opset, dynamic_axes, threads, n_in, name)
    if batch_axis:
        why = _batch_mismatch(module_, module, example, traced)
        if why is not None:
            warnings.warn(
                f"the ONNX export of {name} with a batch axis {why}; exported at batch 1 instead "
                "(one session run per image)",
                stacklevel=2,
            )
            data, module_, _ = _export_and_load(module, example[:1], opset, None, threads, n_in, name)
    if _write_cached(path, data):
        module_.path, module_.model_bytes = path, None  # the session has its copy; copies read the file
    return module_


def _export_and_load(module, example, opset, dynamic_axes, threads, n_in: int, name: str):
    """(bytes, :class:`OnnxModule`, torch's output on ``example`` as traced or None) of a new export; errors
    are :class:`~lvlm.errors.LvlmError`."""
    traced = []  # the tracer runs the forward on the example: its output is the check's reference
    hook = module.register_forward_hook(lambda mod, args, out: traced.append(out))
    try:
        data = export_bytes(module, example, opset, dynamic_axes)
    except LvlmError:
        raise
    except Exception as exc:  # the exporter raises many kinds; say which module failed
        raise LvlmError(
            f"exporting {name} to ONNX failed ({type(exc).__name__}: {exc}); use the torch backend"
        ) from exc
    finally:
        hook.remove()
    try:
        mod = _checked(OnnxModule(module, data, threads, None), n_in, name)
    except Exception as exc:
        raise LvlmError(
            f"ONNX Runtime could not load the export of {name} ({type(exc).__name__}: {exc}); "
            "use the torch backend"
        ) from exc
    return data, mod, (traced[-1] if traced else None)


def _batch_mismatch(mod: OnnxModule, module, example, traced=None) -> str | None:
    """None when ``mod``, a batch-axis export of ``module`` traced on ``example`` (batch 2), gives torch's
    outputs on the first rows of ``example`` for each batch size in ``CHECK_BATCHES`` (one ``session.run``
    each), else what is wrong.

    Args:
        mod: the new export.
        module: the torch module.
        example: the example it was traced on.
        traced: ``module``'s output on ``example`` recorded during the export (None: computed here).
    """
    if not mod.batched:
        return "has a fixed batch size"
    x = torch.cat([example] * -(-max(CHECK_BATCHES) // len(example)))  # enough rows of the traced example
    if traced is None or max(CHECK_BATCHES) > len(example):
        with torch.no_grad():
            traced = module(x)
    refs = tuple(traced) if isinstance(traced, (tuple, list)) else (traced,)
    for b in CHECK_BATCHES:
        try:
            outs = mod.session.run(None, {"input0": x[:b].to(torch.float32).numpy()})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            return f"fails on a batch of {b} ({type(exc).__name__})"
        if len(outs) != len(refs):
            return f"has {len(outs)} outputs, not {len(refs)}"
        for out, r in zip(outs, refs):
            r = r[:b].detach().to(torch.float32).numpy()
            if out.shape != r.shape or np.abs(out - r).max() > 1e-3 * max(1.0, float(np.abs(r).max())):
                return f"differs from torch on a batch of {b}"
    return None


def _checked(mod: OnnxModule, n_inputs: int, name: str) -> OnnxModule:
    """The export must take every example input (a graph whose inputs were traced away is a constant)."""
    got = len(mod.session.get_inputs())
    if got != n_inputs:
        raise LvlmError(
            f"the ONNX export of {name} takes {got} input(s), not {n_inputs}: its output does not "
            "depend on its input as traced"
        )
    return mod
