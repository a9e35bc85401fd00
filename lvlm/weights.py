"""The one weight path: every weight file and Hugging Face model the library uses is found and read here.

- Where: :func:`resolve` (explicit path > ``$LVLM_HOME`` > official URL / hub file when online),
  :func:`hf_snapshot` / :func:`hf_file` / :func:`hf_pretrained` (Hugging Face repositories through
  ``huggingface_hub``: its cache and ``HF_HOME``, ``HF_TOKEN``, a pinnable ``revision``, gated repositories).
- What: :func:`load_state_dict` (``.safetensors`` or ``torch.load(weights_only=True)``) and
  :func:`load_into` (keys and shapes checked).

Every failure is one :class:`~lvlm.errors.WeightsError` line naming the file (or hub id), the model it
was meant for and what is wrong; a file that is not on disk and cannot be fetched is a
:class:`~lvlm.errors.WeightsNotFoundError` raised within seconds, naming where it was looked for and
where to get it. Nothing hangs: the network is probed with a short timeout first (``LVLM_OFFLINE=1`` or
``HF_HUB_OFFLINE=1`` skip the probe) and hub requests have timeouts.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LvlmError, WeightsError, WeightsNotFoundError

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class WeightSpec:
    """Where a weight file comes from: its file name, an official URL and/or a Hugging Face id.

    Args:
        filename: the file name in ``$LVLM_HOME`` (and the default file inside ``hf_repo``).
        url: a direct download URL.
        hf_repo: a Hugging Face repo id holding the file (fetched through ``huggingface_hub``).
        hf_file: the file inside ``hf_repo`` when it is not ``filename``.
        page: where a person gets the file when there is no direct URL (Google Drive, ...).
        license: the weights' licence, for the docs.
    """

    filename: str
    url: str | None = None  # direct download
    hf_repo: str | None = None  # Hugging Face repo id
    hf_file: str | None = None  # file inside the repo
    page: str | None = None  # where a human gets it when there is no direct URL (Google Drive, ...)
    license: str = ""

    @property
    def where(self) -> str:
        """Where to get the file, for messages: the URL, the hub page or ``page``."""
        if self.url:
            return self.url
        if self.hf_repo:
            return f"https://huggingface.co/{self.hf_repo}" + (
                f" (file {self.hf_file})" if self.hf_file else ""
            )
        return self.page or "(no public URL known)"


def cache_dir() -> Path:
    """``$LVLM_HOME`` (default ``~/.cache/lvlm``): where weights are looked for and downloaded to."""
    return Path(os.environ.get("LVLM_HOME", Path.home() / ".cache" / "lvlm")).expanduser()


def offline() -> bool:
    """True when ``LVLM_OFFLINE`` or ``HF_HUB_OFFLINE`` is set (to anything but ``0``): no download is
    tried."""
    return os.environ.get("LVLM_OFFLINE", "") not in ("", "0") or os.environ.get(
        "HF_HUB_OFFLINE", ""
    ) not in ("", "0")


def online(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds (False when :func:`offline`).

    Args:
        host: the host name (``"huggingface.co"``).
        port: the TCP port.
        timeout: seconds to wait for the connection.
    """
    if offline():
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve(
    spec: WeightSpec, path: str | os.PathLike | None = None, download: bool = True, what: str | None = None
) -> Path:
    """The local path of a weight file: ``path`` if given, else ``$LVLM_HOME``, else a download.

    Files on the Hugging Face hub (``spec.hf_repo`` without a direct ``url``) come through
    ``huggingface_hub`` (:func:`hf_file`: its cache, ``HF_TOKEN``, gated repositories); direct URLs are
    downloaded into ``$LVLM_HOME`` (atomically: a unique temporary name, then a rename). Raises
    :class:`~lvlm.errors.WeightsNotFoundError` within seconds when none of these works, naming the
    file, where it was looked for and where to get it.

    Args:
        spec: the file name and where it comes from.
        path: an explicit file (or a folder holding ``spec.filename``), e.g. a config's ``checkpoint``.
        download: allow a download when the file is not on disk.
        what: the model the file is meant for (``"SAM vit_b checkpoint"``); it starts the error message.

    Returns:
        The local path.
    """
    label = what or "weights"
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        if p.is_dir() and (p / spec.filename).is_file():
            return p / spec.filename
        raise WeightsNotFoundError(
            f"{label} file {str(p)!r} not found; expected {spec.filename} (get it from {spec.where})"
        )
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return cached
    if download and spec.hf_repo and not spec.url:
        return hf_file(spec.hf_repo, spec.hf_file or spec.filename, what=label, looked_in=[cached.parent])
    reason = "downloads are disabled"
    if download and spec.url:
        host = urllib.parse.urlparse(spec.url).hostname or ""
        if online(host):
            try:
                return _download(spec, cached)
            except Exception as exc:  # noqa: BLE001 - report any failure the same way
                reason = f"download failed: {exc}"
        else:
            reason = f"{host} is unreachable (offline)"
    elif download:
        reason = "there is no direct download for it"
    raise WeightsNotFoundError(
        f"{label} {spec.filename} not found in {cached.parent} and {reason}. "
        f"Get it from {spec.where} and put it at {cached} (or set LVLM_HOME, or pass checkpoint=PATH)."
    )


def _download(spec: WeightSpec, dest: Path) -> Path:
    from tqdm.auto import tqdm

    from .fsutil import atomic_open

    with urllib.request.urlopen(spec.url, timeout=30) as resp, atomic_open(dest, "wb") as f:
        total = int(resp.headers.get("Content-Length", 0)) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {spec.filename}") as bar:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    return dest


def _what(what: str | None) -> str:
    return what or "weights"


def _fail(path: Path, what: str | None, problem: str) -> WeightsError:
    return WeightsError(f"{_what(what)} {str(path)!r}: {problem}")


def _refused_global(exc: BaseException) -> str:
    msg = str(exc)
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return f"global {m.group(1)}"
    m = re.search(r"Unsupported operand \d+", msg)
    if m:
        return f"pickle instruction ({m.group(0).lower()})"
    return "pickle content"


def _looks_safetensors(p: Path) -> bool:
    if p.suffix == ".safetensors":
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def load_state_dict(path: str | os.PathLike, what: str | None = None) -> dict[str, Any]:
    """A state dict from a ``.safetensors`` file or a torch file (``torch.load(weights_only=True)``).

    Checkpoints that wrap the weights (``{"model": ...}`` / ``{"state_dict": ...}``) are unwrapped.
    Any failure raises one :class:`~lvlm.errors.WeightsError` line naming the file, the model it was
    meant for and what is wrong: missing (:class:`~lvlm.errors.WeightsNotFoundError`), a directory,
    empty, truncated / not a checkpoint, refused by ``weights_only`` (nothing in the file is executed),
    or not a state dict.

    Args:
        path: a ``.safetensors``, ``.pth`` / ``.pt`` / ``.bin`` file.
        what: the model the file is meant for, as the user knows it (e.g. ``"LiteMedSAM checkpoint"``,
            ``"SAM vit_b decoder_checkpoint"``, ``"CLIP OA-RN50"``); it starts the error message.

    Returns:
        A ``{name: tensor}`` dict on the CPU.
    """
    import torch

    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsNotFoundError(f"{_what(what)} {str(p)!r}: file not found")
    if p.is_dir():
        raise _fail(p, what, "is a directory, expected a weight file")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise _fail(p, what, f"cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise _fail(p, what, "file is empty (0 bytes); re-download or re-save it")
    if _looks_safetensors(p):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _fail(p, what, f"not a valid .safetensors file, truncated or corrupt ({detail})") from None
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise _fail(
                p,
                what,
                f"refused by torch.load(weights_only=True): the file holds a "
                f"{_refused_global(exc)} that is not plain tensor data; nothing in it was "
                "executed (use a checkpoint that holds only a state dict)",
            ) from None
        raise _fail(
            p, what, f"not a torch checkpoint (truncated or corrupt: {str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "zip archive" in text or "central directory" in text or isinstance(exc, EOFError):
            problem = f"truncated or corrupt torch checkpoint ({text.split('. ')[0]})"
        else:
            problem = f"not a torch checkpoint, truncated or corrupt ({type(exc).__name__}: {text[:160]})"
        raise _fail(p, what, problem) from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise _fail(p, what, f"not a state dict (the file holds a {type(sd).__name__})")
    if not any(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = ", ".join(repr(k) for k in list(sd)[:4]) or "nothing"
        raise _fail(p, what, f"not a state dict (a dict with no tensors; keys {keys})")
    return sd


def read_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a library raises on a file it cannot read as weights (for ``except`` clauses)."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        EOFError,
        pickle.UnpicklingError,
    )
    try:
        from safetensors import SafetensorError

        errors += (SafetensorError,)
    except ImportError:
        pass
    return errors


def _keys(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_into(
    module: Any,
    state_dict: dict[str, Any],
    what: str,
    path: str | os.PathLike | None = None,
    strict: bool = True,
    prefix_hint: str | None = None,
    hint: str | None = None,
) -> Any:
    """``module.load_state_dict(state_dict)`` with key and shape problems as one WeightsError line.

    Shapes are checked first (every mismatch is an error, strict or not); with ``strict`` missing and
    unexpected keys are errors too. The message names the model, the file, the count and a few keys
    (for shapes the expected and the given shape).

    Args:
        module: the ``torch.nn.Module`` to fill.
        state_dict: the weights, e.g. from :func:`load_state_dict`.
        what: the model the weights are meant for (e.g. ``"SAM vit_b decoder_checkpoint"``).
        path: the file the weights came from, named in the message.
        strict: missing / unexpected keys are errors (as ``torch.nn.Module.load_state_dict``).
        prefix_hint: a key prefix the checkpoint may carry (e.g. ``"mask_decoder."`` for a decoder taken
            out of a full checkpoint, ``"module."`` for a DataParallel save); it is stripped when no key
            of the module starts with it and stripping makes the keys fit. ``"module."`` is always tried.
        hint: a sentence appended to a shape or key error (e.g. ``"a vit_b checkpoint given for vit_h?"``).

    Returns:
        What ``load_state_dict`` returns (the missing and unexpected keys, empty with ``strict``).
    """
    own = module.state_dict()
    sd = dict(state_dict)
    for prefix in [x for x in (prefix_hint, "module.") if x]:
        if any(k.startswith(prefix) for k in own):
            continue
        stripped = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if stripped and len(set(stripped) & set(own)) > len(set(sd) & set(own)):
            sd = stripped
    where = f" {str(path)!r}" if path is not None else ""
    tail = f"; {hint}" if hint else ""
    bad = [
        (k, tuple(own[k].shape), tuple(v.shape))
        for k, v in sd.items()
        if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        shown = "; ".join(f"{k!r} expects {list(e)}, file has {list(g)}" for k, e, g in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise WeightsError(
            f"{what}{where}: {len(bad)} tensor(s) have the wrong shape: {shown}{more}"
            f" - weights of another model variant?{tail}"
        )
    if strict:
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} key(s) missing: {_keys(missing)}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected key(s): {_keys(unexpected)}")
            overlap = len(set(sd) & set(own))
            raise WeightsError(
                f"{what}{where}: the weights do not fit this model ({'; '.join(parts)}; "
                f"{overlap} of {len(own)} keys match){tail}"
            )
    try:
        return module.load_state_dict(sd, strict=strict)
    except RuntimeError as exc:  # anything the checks above did not foresee
        raise WeightsError(
            f"{what}{where}: cannot load the weights ({str(exc).splitlines()[0]}){tail}"
        ) from None


# ----------------------------------------------------------------------------- Hugging Face Hub

HF_HOST = "huggingface.co"
HF_MODEL_FILES = ("*.json", "*.txt", "*.model", "*.safetensors", "*.bin", "*.tiktoken")
HF_SKIP_FILES = ("*.msgpack", "*.h5", "*.onnx", "*.ot", "tf_model*", "flax_model*", "rust_model*", "*.ckpt")
HF_ETAG_TIMEOUT_S = 10.0


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _hf_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "")
    return (urllib.parse.urlparse(endpoint).hostname if endpoint else None) or HF_HOST


def hf_page(repo_id: str) -> str:
    """The web page of a Hugging Face repository (``$HF_ENDPOINT`` honoured).

    Args:
        repo_id: the repository id (``owner/name``).
    """
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or f"https://{HF_HOST}"
    return f"{endpoint}/{repo_id}"


def is_hf_repo_id(name: str) -> bool:
    """``owner/name`` (or ``name``) as the hub spells repository ids; paths and files are not.

    Args:
        name: the string to test.
    """
    return (
        bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name))
        and not name.startswith(".")
        and Path(name).suffix not in (".pt", ".pth", ".bin", ".safetensors")
    )


def _hub():
    try:
        import huggingface_hub as hub
        from huggingface_hub import errors as hub_errors
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError(
            "Hugging Face models need huggingface_hub (pip install huggingface_hub)"
        ) from None
    return hub, hub_errors


def _hf_fetch(
    fetch: Callable[[bool], str],
    repo: str,
    what: str | None,
    revision: str | None,
    item: str,
    looked_in: list[Path],
) -> Path:
    """``fetch(local_files_only)`` from the cache, else (online) from the hub, every failure as one line."""
    _, hub_errors = _hub()
    label = _what(what)
    rev = f" at revision {revision!r}" if revision else ""
    try:
        return Path(fetch(True))
    except (
        hub_errors.LocalEntryNotFoundError,
        hub_errors.EntryNotFoundError,
        FileNotFoundError,
        OSError,
        ValueError,
    ):
        pass
    host = _hf_host()
    reason = ""
    if offline():
        reason = "downloads are off (offline: HF_HUB_OFFLINE / LVLM_OFFLINE is set)"
    elif not online(host):
        reason = f"{host} is unreachable (offline)"
    places = ", ".join(f"{p}/" for p in looked_in)
    where = (
        f"{places} or the Hugging Face cache {hf_cache_dir()}"
        if places
        else f"the Hugging Face cache {hf_cache_dir()}"
    )
    if reason:
        raise WeightsNotFoundError(
            f"{label} {item}{rev} not found in {where} and {reason}. Get it from {hf_page(repo)} "
            f"(`hf download {repo}` on a connected machine, then copy the cache or set HF_HOME), "
            "or pass a local folder."
        )
    token = (
        "HF_TOKEN is set, but that account has no access yet"
        if os.environ.get("HF_TOKEN")
        else "then set HF_TOKEN (or run `hf auth login`)"
    )
    try:
        return Path(fetch(False))
    except hub_errors.GatedRepoError:
        raise WeightsError(
            f"{label} {repo!r} is a gated Hugging Face repository: request access at {hf_page(repo)} "
            f"with your account, {token}."
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise WeightsNotFoundError(
            f"{label} {repo!r}: revision {revision!r} not found (see {hf_page(repo)})"
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise WeightsNotFoundError(
            f"{label} {repo!r}: no such Hugging Face repository, or a private one "
            f"({token}); see {hf_page(repo)}"
        ) from None
    except hub_errors.EntryNotFoundError:
        raise WeightsNotFoundError(f"{label} {item}{rev}: no such file in {hf_page(repo)}") from None
    except (hub_errors.HfHubHTTPError, OSError, ValueError) as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise WeightsNotFoundError(
            f"{label} {item}{rev}: download into {hf_cache_dir()} failed ({text}). "
            f"Get it from {hf_page(repo)}."
        ) from None


def hf_snapshot(
    repo_id: str | os.PathLike,
    what: str | None = None,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    ignore_patterns: list[str] | None = None,
    looked_in: list[Path] | None = None,
) -> Path:
    """A local folder holding a Hugging Face model repository, through ``huggingface_hub``'s cache.

    A local folder is returned as is. Otherwise the hub cache (``HF_HOME`` / ``HF_HUB_CACHE``) is used
    when it holds the revision; else, when online, ``snapshot_download`` fetches it (``HF_TOKEN`` for
    private or gated repositories). Offline (``HF_HUB_OFFLINE=1``, ``LVLM_OFFLINE=1`` or the host
    unreachable within a short probe) it raises :class:`~lvlm.errors.WeightsNotFoundError` within
    seconds, naming the repo id, the cache folder and the page to get it from. A gated repository
    raises :class:`~lvlm.errors.WeightsError` with the URL where access is requested.

    Args:
        repo_id: ``"owner/name"`` on the hub, or a local folder.
        what: the model, as the user knows it (starts the error message).
        revision: a branch, tag or commit hash to pin (default: the repository's main branch).
        allow_patterns: only files matching these globs (``snapshot_download``'s argument).
        ignore_patterns: files to skip.
        looked_in: other folders the caller already searched (named in the not-found message).

    Returns:
        The folder (a snapshot in the hub cache, or ``repo_id`` itself when it is a folder).
    """
    local = Path(repo_id).expanduser()
    if local.is_dir():
        return local
    repo = str(repo_id)
    if not is_hf_repo_id(repo):
        raise WeightsNotFoundError(f"{_what(what)} {repo!r}: no such folder (and not a Hugging Face repo id)")
    hub, _ = _hub()

    def fetch(local_only: bool) -> str:
        patterns = allow_patterns
        if not local_only and patterns and "*.bin" in patterns and "*.safetensors" in patterns:
            files = hub.list_repo_files(repo, revision=revision)
            if any(f.endswith(".safetensors") for f in files):  # the same weights twice: take the safe format
                patterns = [x for x in patterns if x != "*.bin"]
        return hub.snapshot_download(
            repo_id=repo,
            revision=revision,
            cache_dir=str(hf_cache_dir()),
            allow_patterns=patterns,
            ignore_patterns=ignore_patterns,
            local_files_only=local_only,
            etag_timeout=HF_ETAG_TIMEOUT_S,
        )

    return _hf_fetch(fetch, repo, what, revision, repr(repo), list(looked_in or []))


def hf_file(
    repo_id: str,
    filename: str | Sequence[str],
    what: str | None = None,
    revision: str | None = None,
    looked_in: list[Path] | None = None,
) -> Path:
    """One file of a Hugging Face repository, through ``huggingface_hub``'s cache (``hf_hub_download``).

    Cache, offline, gated and token handling as :func:`hf_snapshot`.

    Args:
        repo_id: ``"owner/name"``.
        filename: the file inside the repository (``"open_clip_model.safetensors"``), or several names
            in order of preference (the first one in the cache, else the first one the hub has).
        what: the model, as the user knows it (starts the error message).
        revision: a branch, tag or commit hash to pin.
        looked_in: other folders the caller already searched (named in the not-found message).

    Returns:
        The local path of the file.
    """
    hub, hub_errors = _hub()
    names = [filename] if isinstance(filename, str) else list(filename)

    def fetch(local_only: bool) -> str:
        for i, name in enumerate(names):
            try:
                return hub.hf_hub_download(
                    repo_id=repo_id,
                    filename=name,
                    revision=revision,
                    cache_dir=str(hf_cache_dir()),
                    local_files_only=local_only,
                    etag_timeout=HF_ETAG_TIMEOUT_S,
                )
            except (hub_errors.LocalEntryNotFoundError, hub_errors.EntryNotFoundError):
                if i == len(names) - 1:
                    raise
        raise AssertionError("no file name given")

    item = " or ".join(names) + f" of {repo_id!r}"
    return _hf_fetch(fetch, repo_id, what, revision, item, list(looked_in or []))


def hf_pretrained(
    factory: Callable[..., Any],
    repo_id: str | os.PathLike,
    what: str,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    looked_in: list[Path] | None = None,
    **kwargs: Any,
) -> Any:
    """``factory(folder, **kwargs)`` on the folder :func:`hf_snapshot` gives for ``repo_id``.

    ``factory`` is typically a transformers ``from_pretrained`` (e.g.
    ``CLIPSegForImageSegmentation.from_pretrained``); it is given a local folder, so it never goes to the
    network itself. A folder it cannot read raises one WeightsError line.

    Args:
        factory: called as ``factory(str(folder), **kwargs)``.
        repo_id: a Hugging Face ``"owner/name"`` or a local folder.
        what: the model, as the user knows it (e.g. ``"CLIPSeg"``).
        revision: branch, tag or commit hash to pin.
        allow_patterns: files to fetch (default: configs, tokenizer files and the weights, safetensors
            only when the repository has them).
        looked_in: other folders the caller already searched (named in the not-found message).
        **kwargs: passed to ``factory``.

    Returns:
        What ``factory`` returns.
    """
    default = allow_patterns is None
    folder = hf_snapshot(
        repo_id,
        what,
        revision=revision,
        allow_patterns=list(HF_MODEL_FILES) if default else allow_patterns,
        ignore_patterns=list(HF_SKIP_FILES) if default else None,
        looked_in=looked_in,
    )
    try:
        return factory(str(folder), **kwargs)
    except LvlmError:  # the factory's own one-line errors
        raise
    except read_errors() as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        raise WeightsError(f"{what} {str(repo_id)!r}: cannot load the model from {folder} ({text})") from None


def is_random(checkpoint: Any) -> bool:
    """The config convention for random initialisation: ``checkpoint: null`` or ``checkpoint: random``.

    Args:
        checkpoint: a config's ``checkpoint`` value.
    """
    return checkpoint is None or (isinstance(checkpoint, str) and checkpoint.lower() in ("random", "none"))
