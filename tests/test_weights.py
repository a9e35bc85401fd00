"""One weight path: every kind of bad weight file, given to every loader, is one `lvlm: error:` line.

Each bad file is built in tmp_path; each loader is driven through the CLI with a YAML config, as a user
would: the message names the file and what is wrong, there is no traceback and the exit code is non-zero.
Also: Hugging Face models fail within seconds offline naming the repo id, and gated repositories are
reported as gated with where to ask for access.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lvlm.cli import main
from lvlm.errors import WeightsError, WeightsNotFoundError
from lvlm.weights import hf_pretrained, hf_snapshot, load_into, load_state_dict

REPO = Path(__file__).resolve().parents[1]


class _Evil:
    """Pickled as a call to os.system: torch.load(weights_only=True) must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# kind -> (what the message must say, regex-free fragments)
KINDS = {
    "missing": ("not found",),
    "empty": ("empty (0 bytes)",),
    "truncated": ("truncated",),
    "garbage_safetensors": ("not a valid .safetensors file",),
    "refused_global": ("refused by torch.load(weights_only=True)", "system", "nothing in it was executed"),
    "wrong_keys": ("do not fit", "unexpected key"),
    "wrong_shapes": ("wrong shape",),
}


def make_bad_file(kind: str, tmp_path: Path, shape_key: str) -> Path:
    """A weight file of the given kind of badness; ``shape_key`` is a key of the target with another shape."""
    d = tmp_path / "weights"
    d.mkdir(exist_ok=True)
    if kind == "missing":
        return d / "no_such_file.pth"
    if kind == "empty":
        p = d / "empty.pth"
        p.write_bytes(b"")
        return p
    if kind == "truncated":
        p = d / "truncated.pth"
        full = d / "full.pth"
        torch.save({"a.weight": torch.randn(64, 64), "b.weight": torch.randn(64)}, full)
        data = full.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p
    if kind == "garbage_safetensors":
        p = d / "garbage.safetensors"
        p.write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00{this is not a safetensors header}" + b"\x00" * 64)
        return p
    if kind == "refused_global":
        p = d / "evil.pth"
        torch.save({"weight": _Evil(tmp_path / "EXECUTED")}, p)
        return p
    if kind == "wrong_keys":
        p = d / "wrong_keys.pth"
        torch.save({"not_a_layer.weight": torch.zeros(3), "other.bias": torch.zeros(2)}, p)
        return p
    if kind == "wrong_shapes":
        p = d / "wrong_shapes.pth"
        torch.save({shape_key: torch.zeros(1, 3)}, p)
        return p
    raise AssertionError(kind)


# loader -> (YAML config with BAD for the file, CLI prompt args, a key of the target module, error label)
LOADERS = {
    "litemedsam_checkpoint": (
        "segmenter: {name: litemedsam, checkpoint: BAD, device: cpu, encoder_backend: torch}",
        ["--box", "5,5,40,40"],
        "mask_decoder.iou_token.weight",
        "LiteMedSAM checkpoint",
    ),
    "sam_checkpoint": (
        "segmenter: {name: sam, model_type: vit_tiny, checkpoint: BAD, device: cpu, encoder_backend: torch}",
        ["--box", "5,5,40,40"],
        "mask_decoder.iou_token.weight",
        "SAM vit_tiny checkpoint",
    ),
    "litemedsam_decoder_checkpoint": (
        "segmenter: {name: litemedsam, decoder_checkpoint: BAD, device: cpu, encoder_backend: torch}",
        ["--box", "5,5,40,40"],
        "iou_token.weight",
        "LiteMedSAM decoder_checkpoint",
    ),
    "sam_decoder_checkpoint": (
        (
            "segmenter: {name: sam, model_type: vit_tiny, decoder_checkpoint: BAD, device: cpu, "
            "encoder_backend: torch}"
        ),
        ["--box", "5,5,40,40"],
        "iou_token.weight",
        "SAM vit_tiny decoder_checkpoint",
    ),
    "clip_checkpoint": (
        (
            "prompter: {name: saliency, clip: {name: tiny-rn, checkpoint: BAD}, method: gscorecam, "
            "device: cpu}\n"
            "segmenter: {name: litemedsam, device: cpu, encoder_backend: torch}"
        ),
        ["--prompt", "a red square"],
        "visual.conv1.weight",
        "CLIP tiny-rn",
    ),
    "clipseg_decoder_checkpoint": (
        "segmenter: {name: clipseg, model: tiny-random, decoder_checkpoint: BAD, device: cpu}",
        ["--prompt", "a red square"],
        "film_mul.weight",
        "CLIPSeg decoder_checkpoint",
    ),
}
# one subprocess run per loader (the rest in-process with cli.main), each kind run as a subprocess somewhere
SUBPROCESS = {
    "litemedsam_checkpoint": "truncated",
    "sam_checkpoint": "refused_global",
    "litemedsam_decoder_checkpoint": "garbage_safetensors",
    "sam_decoder_checkpoint": "wrong_shapes",
    "clip_checkpoint": "empty",
    "clipseg_decoder_checkpoint": "wrong_keys",
}


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    img = np.zeros((64, 64, 3), np.uint8)
    img[10:40, 12:44] = (220, 30, 30)
    p = tmp_path / "img.png"
    Image.fromarray(img).save(p)
    return p


def _check_one_line(rc: int, err: str, path: Path, kind: str, label: str, loader: str) -> None:
    assert rc != 0, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("lvlm: error:")]
    assert len(lines) == 1, err
    line = lines[0]
    assert str(path) in line, line
    for fragment in KINDS[kind]:
        assert fragment in line, (fragment, line)
    assert label in line, line


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("loader", list(LOADERS))
def test_bad_weight_file_is_one_cli_line(loader, kind, tmp_path, capsys):
    cfg_text, prompt, shape_key, label = LOADERS[loader]
    bad = make_bad_file(kind, tmp_path, shape_key)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(cfg_text.replace("BAD", f"'{bad}'") + "\n")
    args = [
        "segment",
        str(_image(tmp_path)),
        "--config",
        str(cfg),
        *prompt,
        "--out",
        str(tmp_path / "out"),
        "-q",
    ]
    if SUBPROCESS[loader] == kind:
        r = subprocess.run(
            [sys.executable, "-m", "lvlm.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            check=False,
        )
        rc, err = r.returncode, r.stderr
    else:
        rc, err = main(args), capsys.readouterr().err
    _check_one_line(rc, err, bad, kind, label, loader)
    assert not (tmp_path / "EXECUTED").exists()  # the refused pickle ran nothing
    assert not (tmp_path / "out" / "img_mask.png").exists()


def test_bad_clipseg_model_folder_is_one_cli_line(tmp_path, capsys):
    """A save_pretrained folder whose weights file is garbage: one line naming the folder."""
    from lvlm.models.clipseg import save_tiny_clipseg

    d = save_tiny_clipseg(tmp_path / "tiny")
    for f in d.glob("*.safetensors"):
        f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json" + b"\x00" * 16)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"segmenter: {{name: clipseg, model: '{d}', device: cpu}}\n")
    rc = main(
        [
            "segment",
            str(_image(tmp_path)),
            "--config",
            str(cfg),
            "--prompt",
            "x",
            "--out",
            str(tmp_path),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("lvlm: error:"))
    assert "CLIPSeg model" in line and str(d) in line and "cannot load" in line


# --- the functions themselves ---------------------------------------------------------------------


def test_load_state_dict_unwraps_and_reads_both_formats(tmp_path):
    from safetensors.torch import save_file

    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    save_file(sd, str(tmp_path / "plain.safetensors"))
    for name in ("wrapped.pth", "plain.safetensors"):
        got = load_state_dict(tmp_path / name, what="test model")
        assert set(got) == {"w", "b"} and torch.equal(got["w"], sd["w"])
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(
        WeightsError, match=r"test model '.*list\.pth': not a state dict \(the file holds a list\)"
    ):
        load_state_dict(tmp_path / "list.pth", what="test model")
    with pytest.raises(WeightsError, match="is a directory"):
        load_state_dict(tmp_path, what="test model")
    with pytest.raises(WeightsNotFoundError, match="file not found"):
        load_state_dict(tmp_path / "nope.pth", what="test model")


def test_load_into_names_keys_counts_and_shapes():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = {k: v.clone() for k, v in net.state_dict().items()}
    load_into(net, {f"module.{k}": v for k, v in good.items()}, what="toy")  # DataParallel prefix stripped
    with pytest.raises(WeightsError) as err:
        load_into(
            net, {**good, "0.weight": torch.zeros(4, 5)}, what="toy", path="x.pth", hint="vit_b for vit_h?"
        )
    msg = str(err.value)
    assert (
        "toy 'x.pth'" in msg
        and "'0.weight' expects [4, 3], file has [4, 5]" in msg
        and "vit_b for vit_h?" in msg
    )
    with pytest.raises(WeightsError) as err:
        load_into(net, {"0.weight": good["0.weight"], "extra.w": torch.zeros(1)}, what="toy")
    msg = str(err.value)
    assert (
        "3 key(s) missing" in msg and "1 unexpected key(s): 'extra.w'" in msg and "1 of 4 keys match" in msg
    )
    missing, unexpected = load_into(net, {"0.weight": good["0.weight"]}, what="toy", strict=False)
    assert len(missing) == 3 and not unexpected


@pytest.fixture
def online_hub(monkeypatch, tmp_path):
    """No offline switches, an empty Hugging Face cache, and a host that 'answers'."""
    from lvlm import weights

    monkeypatch.delenv("LVLM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(weights, "online", lambda host, **kw: True)
    return weights


def test_hf_offline_fails_within_seconds_naming_the_repo(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LVLM_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        hf_snapshot("CIDAS/clipseg-rd64-refined", what="CLIPSeg model")
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    assert "CIDAS/clipseg-rd64-refined" in msg and str(tmp_path / "hf" / "hub") in msg
    assert "https://huggingface.co/CIDAS/clipseg-rd64-refined" in msg and "offline" in msg
    # the same through the segmenter and the CLI: one line
    cfg = tmp_path / "c.yaml"
    cfg.write_text("segmenter: {name: clipseg, model: CIDAS/clipseg-rd64-refined, device: cpu}\n")
    t0 = time.perf_counter()
    rc = main(
        [
            "segment",
            str(_image(tmp_path)),
            "--config",
            str(cfg),
            "--prompt",
            "x",
            "--out",
            str(tmp_path),
            "-q",
        ]
    )
    err_text = capsys.readouterr().err
    assert rc == 1 and time.perf_counter() - t0 < 10.0 and "Traceback" not in err_text
    line = next(ln for ln in err_text.splitlines() if ln.startswith("lvlm: error:"))
    assert "CIDAS/clipseg-rd64-refined" in line and "offline" in line


def test_hf_gated_repo_is_reported_as_gated(online_hub, monkeypatch, tmp_path, capsys):
    import httpx
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    def snapshot_download(**kw):
        if kw.get("local_files_only"):
            raise hub_errors.LocalEntryNotFoundError("not cached")
        raise hub_errors.GatedRepoError(
            "403 gated",
            response=httpx.Response(
                403, request=httpx.Request("GET", "https://huggingface.co/api/models/facebook/sam3")
            ),
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: ["model.safetensors"])
    with pytest.raises(WeightsError) as err:
        hf_pretrained(lambda folder: folder, "facebook/sam3", what="SAM 3")
    assert not isinstance(err.value, WeightsNotFoundError)
    msg = str(err.value)
    assert "gated" in msg and "https://huggingface.co/facebook/sam3" in msg and "HF_TOKEN" in msg
    cfg = tmp_path / "c.yaml"
    cfg.write_text("segmenter: {name: clipseg, model: facebook/sam3, device: cpu}\n")
    rc = main(
        [
            "segment",
            str(_image(tmp_path)),
            "--config",
            str(cfg),
            "--prompt",
            "x",
            "--out",
            str(tmp_path),
            "-q",
        ]
    )
    err_text = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err_text
    line = next(ln for ln in err_text.splitlines() if ln.startswith("lvlm: error:"))
    assert "gated" in line and "facebook/sam3" in line and "request access" in line


def test_hf_revision_and_cache_are_passed_to_huggingface_hub(online_hub, monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    calls = []

    def snapshot_download(**kw):
        calls.append(kw)
        if kw.get("local_files_only"):
            raise hub_errors.LocalEntryNotFoundError("not cached")
        d = tmp_path / "snap"
        d.mkdir(exist_ok=True)
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(
        huggingface_hub, "list_repo_files", lambda *a, **k: ["model.safetensors", "pytorch_model.bin"]
    )
    got = hf_pretrained(lambda folder, **kw: (folder, kw), "org/model", what="M", revision="abc123", x=1)
    assert got == (str(tmp_path / "snap"), {"x": 1})
    assert [c["local_files_only"] for c in calls] == [True, False]
    assert all(c["revision"] == "abc123" and c["cache_dir"] == str(tmp_path / "hf" / "hub") for c in calls)
    assert "*.bin" not in calls[1]["allow_patterns"]  # safetensors present: the pickle copy is not fetched
    assert hf_snapshot(tmp_path / "snap") == tmp_path / "snap"  # a local folder is taken as is
