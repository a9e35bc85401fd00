"""The benchmark runner: exact generator-pass counts, kill-and-resume safety, sweeps, Ray = local, reports."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from lvlm.bench import results as results_mod
from lvlm.bench.config import expand
from lvlm.bench.results import ResultsLog, read_rows
from lvlm.bench.runner import run_benchmark
from lvlm.components import MaskGenerator, PromptedSegmenter, Prompter, Selector
from lvlm.errors import ConfigError
from lvlm.registry import register
from lvlm.types import Candidates, Prompts, Sample, Selection, masks_to_boxes


@register("generator", "test_bench_bands", description="test stub: horizontal bands, counts its passes")
class BandsGenerator(MaskGenerator):
    """``bands`` horizontal bands plus the bright pixels; counts forward passes per process."""

    calls = 0

    def __init__(self, bands: int = 2, device: str = "cpu"):
        self.bands = bands

    def generate(self, image):
        type(self).calls += 1
        h, w = image.shape[:2]
        masks = np.zeros((self.bands + 1, h, w), bool)
        edges = np.linspace(0, h, self.bands + 1).astype(int)
        for i in range(self.bands):
            masks[i, edges[i] : edges[i + 1]] = True
        masks[-1] = image.mean(2) > 127
        return Candidates(masks, scores=np.linspace(1, 0.5, self.bands + 1))


@register("selector", "test_bench_pick", description="test stub: picks the candidate by a fixed rule")
class PickSelector(Selector):
    """Scores a candidate by the mean brightness under it, shifted by ``offset`` candidates."""

    calls = 0

    def __init__(self, offset: int = 0):
        self.offset = offset

    def select(self, image, text, candidates):
        type(self).calls += 1
        scores = np.array([image[m].mean() if m.any() else 0.0 for m in candidates.masks])
        i = (int(np.argmax(scores)) + self.offset) % len(candidates)
        return Selection(candidates.masks[i], float(scores[i]), i, scores)


@register("prompter", "test_bench_bright", description="test stub: the box of the bright pixels")
class BrightPrompter(Prompter):
    calls = 0

    def __init__(self, level: int = 127):
        self.level = level

    def prompts(self, image, text):
        type(self).calls += 1
        return Prompts(boxes=masks_to_boxes((image.mean(2) > self.level)[None])), {"map": image.mean(2)}


@register("segmenter", "test_bench_fill", description="test stub: fills boxes; a point gives a 5 x 5 square")
class FillSegmenter(PromptedSegmenter):
    embeds = 0

    def __init__(self, grow: int = 0):
        self.grow = grow

    def _embed(self, image):
        type(self).embeds += 1
        return image.shape[:2]

    def _decode(self, shape, prompts, image):
        h, w = shape
        masks = []
        for k in range(len(prompts)):
            m = np.zeros((h, w), bool)
            if prompts.boxes is not None:
                x0, y0, x1, y1 = prompts.boxes[k].astype(int)
                m[max(0, y0 - self.grow) : y1 + self.grow, max(0, x0 - self.grow) : x1 + self.grow] = True
            else:
                x, y = prompts.points[k][0].astype(int)
                m[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = True
            masks.append(m)
        return Candidates(np.stack(masks))


@register("dataset", "test_bench_iterable", description="test stub: a plain iterable of samples")
class IterableOnly:
    def __init__(self, n: int = 3):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            img = np.zeros((16, 16, 3), np.uint8)
            img[2 + i : 8 + i, 3:9] = 255
            yield Sample(id=f"it{i}", image=img, prompt="square", mask=img[..., 0] > 0)


def write_folder(root: Path, n: int = 4, size=(24, 32)) -> Path:
    """A tiny images/ + masks/ dataset: a bright square on noise; the mask is the square."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 100, (*size, 3), dtype=np.uint8)
        m = np.zeros(size, bool)
        y, x = 2 + i, 3 + 2 * i
        m[y : y + 10, x : x + 12] = True
        img[m] = 230
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"im{i}.png")
    return root


def matrix_config(root: Path, clips: int = 3, gens: int = 2, **extra) -> dict:
    return {
        "datasets": {"toy": {"name": "folder", "root": str(root), "prompt": "bright square"}},
        "matrix": {
            "selector": {f"C{i}": {"name": "test_bench_pick", "offset": i} for i in range(clips)},
            "generator": {f"S{j}": {"name": "test_bench_bands", "bands": 2 + j} for j in range(gens)},
        },
        **extra,
    }


def _strip(rows):
    """Rows without the fields that legitimately differ between runs (timings)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "timings")} for r in rows]


@pytest.fixture
def toy(tmp_path):
    return write_folder(tmp_path / "toy")


def test_generator_runs_once_per_image_and_config(toy, tmp_path):
    BandsGenerator.calls = PickSelector.calls = 0
    out = run_benchmark(matrix_config(toy, clips=3, gens=2), tmp_path / "run", progress=False)
    n_images, C, S = 4, 3, 2
    assert BandsGenerator.calls == S * n_images  # not C x S
    assert out["generator_passes"] == S * n_images
    assert PickSelector.calls == C * S * n_images
    rows = read_rows(tmp_path / "run")
    assert len(rows) == C * S * n_images == out["total"] == out["written"]
    # a second run is a no-op: nothing recomputed, nothing duplicated
    out2 = run_benchmark(matrix_config(toy, clips=3, gens=2), tmp_path / "run", progress=False)
    assert out2["written"] == 0 and BandsGenerator.calls == S * n_images
    # extending the matrix with one more CLIP reuses the cached generator passes from disk
    out3 = run_benchmark(matrix_config(toy, clips=4, gens=2), tmp_path / "run", progress=False)
    assert out3["written"] == S * n_images and BandsGenerator.calls == S * n_images
    assert out3["cache_hits"] == S * n_images


def test_metrics_in_rows_are_right(toy, tmp_path):
    run_benchmark(matrix_config(toy, clips=1, gens=1), tmp_path / "run", progress=False)
    from lvlm import rle
    from lvlm.io import load_image, load_mask

    for r in read_rows(tmp_path / "run"):
        img = load_image(toy / "images" / f"{r['sample']}.png")
        gt = load_mask(toy / "masks" / f"{r['sample']}.png")
        pred = rle.decode(r["mask"])
        assert np.array_equal(pred, img.mean(2) > 127)  # offset 0 picks the bright-pixel candidate
        inter, union = (pred & gt).sum(), (pred | gt).sum()
        assert r["iou"] == pytest.approx(inter / union)
        assert r["labels"] == {"selector": "C0", "generator": "S0"}
        assert r["error"] is None
        # the selector picks one candidate: the best candidate bounds it, and efficiency is the ratio
        assert r["oracle_iou"] >= r["iou"] - 1e-9
        assert r["selection_efficiency"] == pytest.approx(r["iou"] / r["oracle_iou"])


def test_killed_five_times_and_resumed_gives_the_uninterrupted_rows(toy, tmp_path, monkeypatch):
    cfg = matrix_config(toy, clips=2, gens=1, sweep={"generator.bands": [2, 3]})
    full = _strip(read_rows(Path(run_benchmark(cfg, tmp_path / "ref", progress=False)["run_dir"])))
    assert len(full) == 2 * 1 * 2 * 4 == len({(r["combo"], r["sample"]) for r in full})
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(full)), 5))
    original = ResultsLog.append
    run = tmp_path / "killed"

    class Killed(Exception):
        pass

    for k, cut in enumerate(cuts):

        def append(self, row, _cut=cut, _k=k):
            if self.count >= _cut:
                if _k % 2 == 0:  # die in the middle of writing a row: half a line on disk
                    line = json.dumps(row).encode()
                    self._f.write(line[: len(line) // 2])
                    self._f.flush()
                raise Killed
            return original(self, row)

        monkeypatch.setattr(results_mod.ResultsLog, "append", append)
        with pytest.raises(Killed):
            run_benchmark(cfg, run, progress=False)
        assert len(read_rows(run)) == cut
    monkeypatch.setattr(results_mod.ResultsLog, "append", original)
    run_benchmark(cfg, run, progress=False)
    assert _strip(read_rows(run)) == full
    lines = (run / "results.jsonl").read_bytes().splitlines()
    assert len(lines) == len(full)  # no partial line and no duplicate left in the file


def test_results_log_drops_a_truncated_line_and_refuses_duplicates(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_bytes(b'{"combo":"a","sample":"1","iou":0.5}\n{"combo":"a","sample":"2","io')
    log = ResultsLog(p)
    assert log.done == {("a", "1")}
    assert not log.append({"combo": "a", "sample": "1", "iou": 0.9})
    assert log.append({"combo": "a", "sample": "2", "iou": float("nan")})
    log.close()
    rows = read_rows(p)
    assert [r["sample"] for r in rows] == ["1", "2"] and rows[1]["iou"] is None
    assert p.read_bytes().endswith(b"\n")


def test_sweep_labels_and_config_errors(toy):
    cfg = matrix_config(toy, clips=2, gens=1, sweep={"generator.bands": [2, 4], "selector.offset": [0, 1]})
    combos = expand(cfg)
    assert len(combos) == 2 * 1 * 2 * 2  # C labels x S labels x sweep points (the offset sweep overrides C's)
    assert {c.labels["generator.bands"] for c in combos} == {2, 4}
    assert len({c.id for c in combos}) == len(combos)
    with pytest.raises(ConfigError, match="stage"):
        expand({**cfg, "sweep": {"points_per_side": [1]}})
    with pytest.raises(ConfigError, match="datasets"):
        run_benchmark({"matrix": cfg["matrix"]}, toy / "x")
    with pytest.raises(ConfigError, match="unknown benchmark config key"):
        run_benchmark({**cfg, "metric": {}}, toy / "x")


def test_dataset_missing_gives_one_clear_error(tmp_path):
    from lvlm.data.base import DatasetNotFoundError

    cfg = {
        "datasets": {"CXR": {"name": "cxr", "root": str(tmp_path / "nope")}},
        "matrix": {"generator": {"S": "test_bench_bands"}, "selector": {"C": "test_bench_pick"}},
    }
    with pytest.raises(DatasetNotFoundError, match="kaggle.com"):
        run_benchmark(cfg, tmp_path / "run", progress=False)


def test_cli_bench_and_report(toy, tmp_path, capsys):
    import yaml

    from lvlm.cli import main

    cfg = matrix_config(toy, clips=2, gens=2)
    cfg["imports"] = []
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["bench", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["report", str(tmp_path / "run"), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| Model | SAM | All (↑) |" in out
    rep = tmp_path / "run" / "report"
    for name in ("summary.csv", "table_toy.md", "table_toy.tex", "table_toy.csv", "comparison_toy.md"):
        assert (rep / name).is_file(), name
    tex = (rep / "table_toy.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex


RAY_PLUGIN = """
import numpy as np
from lvlm.components import MaskGenerator, PromptedSegmenter, Prompter, Selector
from lvlm.registry import register
from lvlm.types import Candidates, Prompts, Sample, Selection, masks_to_boxes


@register("generator", "ray_test_bands")
class Bands(MaskGenerator):
    def __init__(self, bands=2):
        self.bands = bands

    def generate(self, image):
        h, w = image.shape[:2]
        m = np.zeros((self.bands + 1, h, w), bool)
        e = np.linspace(0, h, self.bands + 1).astype(int)
        for i in range(self.bands):
            m[i, e[i]:e[i + 1]] = True
        m[-1] = image.mean(2) > 127
        return Candidates(m)


@register("selector", "ray_test_pick")
class Pick(Selector):
    def __init__(self, offset=0):
        self.offset = offset

    def select(self, image, text, c):
        s = np.array([image[m].mean() for m in c.masks])
        i = (int(np.argmax(s)) + self.offset) % len(c)
        return Selection(c.masks[i], float(s[i]), i, s)
"""


def test_ray_backend_gives_the_local_results(toy, tmp_path):
    ray = pytest.importorskip("ray")
    plugin = tmp_path / "plugin.py"
    plugin.write_text(RAY_PLUGIN)
    cfg = {
        "imports": [str(plugin)],
        "datasets": {"toy": {"name": "folder", "root": str(toy), "prompt": "bright square"}},
        "matrix": {
            "selector": {"C0": {"name": "ray_test_pick"}, "C1": {"name": "ray_test_pick", "offset": 1}},
            "generator": {"S0": {"name": "ray_test_bands"}, "S1": {"name": "ray_test_bands", "bands": 3}},
        },
    }
    local = run_benchmark(cfg, tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        dist = run_benchmark(cfg, tmp_path / "ray", backend="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    assert dist["written"] == local["written"] == 16
    assert dist["generator_passes"] == local["generator_passes"] == 8
    assert _strip(read_rows(tmp_path / "ray")) == _strip(read_rows(tmp_path / "local"))


def test_prompted_matrix_runs_each_prompter_once_per_image_and_each_segmenter_embeds_once(toy, tmp_path):
    BrightPrompter.calls = FillSegmenter.embeds = 0
    cfg = {
        "datasets": {"toy": {"name": "folder", "root": str(toy), "prompt": "bright square"}},
        "matrix": {
            "prompter": {
                "P100": {"name": "test_bench_bright", "level": 100},
                "P127": {"name": "test_bench_bright"},
                "P200": {"name": "test_bench_bright", "level": 200},
            },
            "segmenter": {"F0": {"name": "test_bench_fill"}, "F1": {"name": "test_bench_fill", "grow": 1}},
        },
    }
    out = run_benchmark(cfg, tmp_path / "run", progress=False)
    assert out["written"] == 3 * 2 * 4
    assert BrightPrompter.calls == 3 * 4  # C prompters per image, not C x S
    assert FillSegmenter.embeds == 2 * 4  # S segmenters embed each image once
    rows = read_rows(tmp_path / "run")
    exact = [r for r in rows if r["labels"] == {"prompter": "P127", "segmenter": "F0"}]
    assert all(r["iou"] == 1.0 for r in exact)  # the bright square's box is the mask
    # resumed with a new segmenter: the prompts come from the disk cache, not from the prompter
    cfg["matrix"]["segmenter"]["F2"] = {"name": "test_bench_fill", "grow": 2}
    run_benchmark(cfg, tmp_path / "run", progress=False)
    assert BrightPrompter.calls == 3 * 4 and len(read_rows(tmp_path / "run")) == 3 * 3 * 4


def test_prompt_strategies_from_the_ground_truth(toy, tmp_path):
    cfg = {
        "datasets": {"toy": {"name": "folder", "root": str(toy), "prompt": "bright square"}},
        "pipelines": [{"label": "fill", "segmenter": {"name": "test_bench_fill"}}],
        "strategies": {"Box": "sample_box", "Center": "center", "Mine": "tests_not_a_module:fn"},
    }
    with pytest.raises(ConfigError, match="tests_not_a_module"):
        run_benchmark(cfg, tmp_path / "bad", progress=False)
    del cfg["strategies"]["Mine"]
    run_benchmark(cfg, tmp_path / "run", progress=False)
    rows = read_rows(tmp_path / "run")
    box = [r for r in rows if r["labels"]["strategy"] == "Box"]
    centre = [r for r in rows if r["labels"]["strategy"] == "Center"]
    assert len(box) == len(centre) == 4 and all(r["iou"] == 1.0 for r in box)
    assert all(
        r["pred_area"] == 25 and r["precision"] == 1.0 for r in centre
    )  # a 5 x 5 square inside the object
    from lvlm.bench.report import comparison_rows

    comp = comparison_rows(rows)
    assert [c["prompt_strategy"] for c in comp] == ["Box", "Center"] and comp[0]["iou_mean"] == 1.0
    assert comp[0]["num_samples"] == 4 and comp[0]["f1_mean"] == comp[0]["dice_mean"]


def test_overrides_iterable_datasets_and_generator_strategy_mismatch(tmp_path):
    from lvlm.bench.config import apply_overrides

    cfg = {
        "datasets": {"it": {"name": "test_bench_iterable", "n": 2}},
        "matrix": {"generator": {"S": {"name": "test_bench_bands"}}, "selector": {"C": "test_bench_pick"}},
    }
    over = apply_overrides(cfg, ["datasets.it.n=3", "sweep.generator.bands=[2, 3]"])
    assert over["datasets"]["it"]["n"] == 3 and over["sweep"] == {"generator.bands": [2, 3]}
    assert cfg["datasets"]["it"]["n"] == 2  # the original is untouched
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(cfg, ["datasets.it.n"])
    out = run_benchmark(cfg, tmp_path / "run", overrides=["datasets.it.n=3"], progress=False)
    assert out["written"] == 3 and [r["sample"] for r in read_rows(tmp_path / "run")] == ["it0", "it1", "it2"]
    with pytest.raises(ConfigError, match="prompted segmenter"):
        run_benchmark({**cfg, "strategies": {"Box": "sample_box"}}, tmp_path / "run2", progress=False)


def test_report_shows_oracle_selection_and_instance_columns_when_present():
    from lvlm.bench.report import comparison_rows, group_table, summary_rows, table_markdown

    def row(combo, sel, iou, **extra):
        return {
            "combo": combo,
            "dataset": "toy",
            "labels": {"selector": sel, "generator": "S0"},
            "tags": {},
            "iou": iou,
            **extra,
        }

    plain = [row("a", "C0", 0.5), row("a", "C0", 0.7)]
    t = group_table(plain)
    assert t["header"] == ["Model", "SAM", "All"]  # nothing extra without the keys
    rows = [
        row("a", "C0", 0.4, oracle_iou=0.8, selection_efficiency=0.5, instance_f1=0.6),
        row("a", "C0", 0.6, oracle_iou=0.6, selection_efficiency=1.0, instance_f1=0.8),
        row("b", "C1", 0.3, oracle_iou=0.9, selection_efficiency=1 / 3),
    ]  # no instance metric here
    t = group_table(rows)
    assert t["header"] == ["Model", "SAM", "All", "Oracle IoU", "Sel. eff.", "Inst. F1"]
    (_, a), (_, b) = t["lines"]
    assert a == pytest.approx([0.5, 0.7, 0.75, 0.7])
    assert b[:3] == pytest.approx([0.3, 0.9, 1 / 3]) and np.isnan(b[3])
    md = table_markdown(t)
    assert "Oracle IoU (↑)" in md and "**0.90**" in md and "–" in md
    comp = comparison_rows(rows)
    assert comp[0]["oracle_iou_mean"] == pytest.approx(0.7) and comp[0]["selection_efficiency_mean"] == 0.75
    assert comp[0]["instance_f1_std"] == pytest.approx(0.1)
    assert summary_rows(rows)[0]["oracle_iou_mean"] == pytest.approx(0.7)


@register(
    "prompter", "test_bench_bright_many", description="test stub: BrightPrompter with a counted prompts_many"
)
class BrightManyPrompter(BrightPrompter):
    batches: ClassVar[list] = []
    fail = False

    def prompts_many(self, images, texts):
        type(self).batches.append(len(images))
        if type(self).fail:
            from lvlm.errors import PromptError

            raise PromptError("this batch fails")
        return [BrightPrompter.prompts(self, im, t) for im, t in zip(images, texts)]


@register(
    "segmenter", "test_bench_fill_many", description="test stub: FillSegmenter with a counted _embed_many"
)
class FillManySegmenter(FillSegmenter):
    batches: ClassVar[list] = []

    def _embed_many(self, images):
        type(self).batches.append(len(images))
        return [im.shape[:2] for im in images]


def test_bench_batches_prompts_many_and_embed_many_with_the_per_image_rows(tmp_path):
    n, batch = 5, 2
    root = write_folder(tmp_path / "data", n=n)
    cfg = {
        "datasets": {"toy": {"name": "folder", "root": str(root), "prompt": "bright square"}},
        "matrix": {
            "prompter": {
                "P": {"name": "test_bench_bright_many"},
                "Q": {"name": "test_bench_bright_many", "level": 250},
            },
            "segmenter": {"F": {"name": "test_bench_fill_many"}},
        },
        "strategies": {"text": "text", "box": "sample_box"},
    }
    BrightManyPrompter.batches, BrightManyPrompter.calls = [], 0
    one = read_rows(Path(run_benchmark(cfg, tmp_path / "one", progress=False, batch_size=1)["run_dir"]))
    assert BrightManyPrompter.batches == [] and BrightManyPrompter.calls == 2 * n
    BrightManyPrompter.batches, FillManySegmenter.batches = [], []
    out = run_benchmark(cfg, tmp_path / "many", progress=False, batch_size=batch)
    many = read_rows(Path(out["run_dir"]))
    assert len(BrightManyPrompter.batches) == 2 * -(-n // batch)  # ceil(N / batch) calls per prompter
    assert FillManySegmenter.batches and max(FillManySegmenter.batches) == batch
    assert sorted(map(json.dumps, _strip(many))) == sorted(map(json.dumps, _strip(one)))
    assert any(r["error"] is None for r in many)
    # resumed: the prompts come from the disk cache; nothing left to batch
    BrightManyPrompter.batches = []
    assert run_benchmark(cfg, tmp_path / "many", progress=False, batch_size=batch)["written"] == 0
    assert BrightManyPrompter.batches == []
    # a batch that fails leaves each image to the per-image path: the same rows
    BrightManyPrompter.fail = True
    try:
        failed = read_rows(
            Path(run_benchmark(cfg, tmp_path / "failed", progress=False, batch_size=batch)["run_dir"])
        )
    finally:
        BrightManyPrompter.fail = False
    assert sorted(map(json.dumps, _strip(failed))) == sorted(map(json.dumps, _strip(one)))
