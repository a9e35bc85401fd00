"""``lvlm report RUN_DIR``: tables (CSV, Markdown, LaTeX booktabs), plots and galleries of a benchmark run.

Written to ``RUN_DIR/report/`` for each dataset of the run:

- ``table_<dataset>.{csv,md,tex}``: Villarreal et al.'s layout, ``Model | SAM | All | E | M | H | VH``
  (mean IoU; groups of the ``difficulty`` tag, or of ``class`` / ``defect`` where the data has those), best
  per column in bold;
- ``comparison_<dataset>.{csv,md}``: Dhungana and Bista's layout, ``model | prompt_strategy | iou_mean |
  iou_std | dice_mean | ... | boundary_f1_std | num_samples``;
- ``heatmap_<dataset>.{png,pdf}`` (CLIP x SAM mean IoU), ``bars_<dataset>.{png,pdf}`` (mean +- std);
- ``gallery_<dataset>_{best,worst}.png``: image + prompt | prediction | ground truth, as Villarreal et al.
  Fig. 6;

and ``summary.csv`` with every combination's mean / std / n per group. Plots need matplotlib (imported
only here).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LvlmError
from ..fsutil import atomic_write
from ..metrics import OPTIONAL_METRICS
from .metrics import METRICS, summarize

MODEL_AXES = ("selector", "prompter", "pipeline")
SAM_AXES = ("generator", "segmenter")
GROUP_TAGS = ("difficulty", "class", "defect")
DIFFICULTY = {"easy": "E", "medium": "M", "hard": "H", "very hard": "VH", "very_hard": "VH"}
COMPARISON_METRICS = (
    ("iou", "iou"),
    ("dice", "dice"),
    ("f1", "dice"),
    ("boundary_prec", "boundary_precision"),
    ("boundary_recall", "boundary_recall"),
    ("boundary_f1", "boundary_f1"),
)


def add_arguments(parser) -> None:
    """Add the options of ``lvlm report`` to ``parser``.

    Args:
        parser: the ``argparse`` (sub)parser.
    """
    parser.add_argument("run_dir", help="a run directory written by 'lvlm bench'")
    parser.add_argument("--out", "-o", help="output folder (default: RUN_DIR/report)")
    parser.add_argument(
        "--metric",
        default="iou",
        choices=METRICS + tuple(OPTIONAL_METRICS),
        help="metric of the tables and plots",
    )
    parser.add_argument(
        "--by", help="tag whose groups become table columns (default: difficulty, class or defect)"
    )
    parser.add_argument("--digits", type=int, default=2, help="decimals in the tables (default 2)")
    parser.add_argument("--gallery", type=int, default=3, help="best and worst cases per gallery (0: none)")
    parser.add_argument(
        "--gallery-combo", help="part of the label of the combination to show (default: the best)"
    )
    parser.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")


def run(args) -> int:
    """``lvlm report``: write the report of a run and print its tables; returns the exit status.

    Args:
        args: the parsed options of :func:`add_arguments`.
    """
    files = make_report(
        args.run_dir,
        out=args.out,
        metric=args.metric,
        by=args.by,
        digits=args.digits,
        gallery=0 if args.no_plots else args.gallery,
        gallery_combo=args.gallery_combo,
        plots=not args.no_plots,
    )
    for path in files:
        if path.suffix == ".md" and path.name.startswith("table_"):
            print(f"\n{path.stem}\n")
            print(path.read_text())
    print(f"\nwrote {len(files)} files to {files[0].parent if files else args.run_dir}")
    return 0


# --- loading ----------------------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows of the combinations the run's config still holds, run.json).

    Args:
        run_dir: a run directory written by ``lvlm bench``.
    """
    from .results import read_rows

    run_dir = Path(run_dir)
    if not (run_dir / "results.jsonl").is_file():
        raise LvlmError(f"{run_dir}: no results.jsonl here; run 'lvlm bench CONFIG --out {run_dir}' first")
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    rows = read_rows(run_dir)
    if info.get("config"):
        from .config import expand

        try:
            keep = {c.id for c in expand(info["config"])}
            rows = [r for r in rows if r["combo"] in keep]
        except LvlmError:
            pass
    return rows, info


def axes_of(rows: Sequence[dict[str, Any]]) -> tuple[str | None, str | None, list[str]]:
    """(model axis, SAM axis, other axes) among the rows' label keys.

    Args:
        rows: result rows (their ``labels`` dicts name the axes).
    """
    keys = list(dict.fromkeys(k for r in rows for k in r["labels"]))
    model = next((a for a in MODEL_AXES if a in keys), None)
    sam = next((a for a in SAM_AXES if a in keys), None)
    others = [k for k in keys if k not in (model, sam)]
    if model is None and others:
        model = others.pop(0)
    return model, sam, others


def _label(r: dict[str, Any], axis: str | None) -> str:
    if axis is None:
        return ""
    v = r["labels"].get(axis, "")
    return "" if v is None else str(v)


def _groups(rows, by: str | None) -> tuple[str | None, list[Any]]:
    tag = by or next((t for t in GROUP_TAGS if any(t in r.get("tags", {}) for r in rows)), None)
    if tag is None:
        return None, []
    values = list(
        dict.fromkeys(r.get("tags", {}).get(tag) for r in rows if r.get("tags", {}).get(tag) is not None)
    )
    if tag == "difficulty":
        order = list(DIFFICULTY)
        values.sort(key=lambda v: order.index(v) if v in order else len(order))
    else:
        values.sort(key=str)
    return tag, values


def _combos(rows) -> list[str]:
    return list(dict.fromkeys(r["combo"] for r in rows))


def extra_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The :data:`~lvlm.metrics.OPTIONAL_METRICS` (oracle IoU, selection efficiency, instance metrics) that
    some row holds a value of, in their standard order.

    Args:
        rows: result rows.
    """
    return [m for m in OPTIONAL_METRICS if any(r.get(m) is not None for r in rows)]


# --- tables -----------------------------------------------------------------------------------------


def group_table(
    rows: Sequence[dict[str, Any]],
    metric: str = "iou",
    by: str | None = None,
    extra: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Villarreal et al.'s table: one line per combination, ``All`` then one column per group; values are
    means.

    Args:
        rows: result rows of one dataset.
        metric: the metric of the ``All`` and group columns.
        by: the tag whose groups become columns (default: difficulty, class or defect when present).
        extra: further metrics shown as one mean column each after the groups (default: the
            :func:`extra_metrics` present in the rows, e.g. oracle IoU and selection efficiency).
    """
    model, sam, others = axes_of(rows)
    tag, values = _groups(rows, by)
    extra = [m for m in (extra_metrics(rows) if extra is None else extra) if m != metric]
    header = (["Model"] if model else []) + (["SAM"] if sam else []) + others + ["All"]
    header += [DIFFICULTY.get(v, str(v)) if tag == "difficulty" else str(v) for v in values]
    header += [OPTIONAL_METRICS.get(m, m) for m in extra]
    lines = []
    for cid in _combos(rows):
        rs = [r for r in rows if r["combo"] == cid]
        r0 = rs[0]
        cells = ([_label(r0, model)] if model else []) + ([_label(r0, sam)] if sam else [])
        cells += [_label(r0, o) for o in others]
        nums = [summarize(rs, [metric])["all"][f"{metric}_mean"]]
        per = summarize(rs, [metric], by=f"tags.{tag}") if tag else {}
        nums += [per.get(v, {}).get(f"{metric}_mean", math.nan) for v in values]
        if extra:
            s = summarize(rs, extra)["all"]
            nums += [s[f"{m}_mean"] for m in extra]
        lines.append((cells, nums))
    n_text = len(header) - 1 - len(values) - len(extra)
    return {"header": header, "n_text": n_text, "lines": lines, "metric": metric, "tag": tag}


def _best(lines, j: int) -> float:
    vals = [nums[j] for _, nums in lines if not math.isnan(nums[j])]
    return max(vals) if vals else math.nan


def _fmt(v: float, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _grouped_cells(lines) -> list[list[str]]:
    """Text cells with a repeated model name left blank (Villarreal et al.'s look)."""
    out, prev = [], None
    for cells, _ in lines:
        c = list(cells)
        if c and c[0] == prev:
            c[0] = ""
        else:
            prev = c[0] if c else None
        out.append(c)
    return out


def table_markdown(t: dict[str, Any], digits: int = 2) -> str:
    """A markdown table of :func:`group_table`'s output, the best value of each column in bold.

    Args:
        t: the table of :func:`group_table`.
        digits: decimals shown.
    """
    arrows = [h if i < t["n_text"] else f"{h} (↑)" for i, h in enumerate(t["header"])]
    out = [
        "| " + " | ".join(arrows) + " |",
        "|" + "|".join("---" if i < t["n_text"] else "---:" for i in range(len(arrows))) + "|",
    ]
    best = [_best(t["lines"], j) for j in range(len(t["header"]) - t["n_text"])]
    for cells, (_, nums) in zip(_grouped_cells(t["lines"]), t["lines"]):
        vals = [
            f"**{_fmt(v, digits)}**"
            if not math.isnan(v) and round(v, digits) == round(best[j], digits)
            else _fmt(v, digits)
            for j, v in enumerate(nums)
        ]
        out.append("| " + " | ".join(cells + vals) + " |")
    return "\n".join(out) + "\n"


def _tex(s: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("$", "\\$"),
        ("#", "\\#"),
        ("_", "\\_"),
        ("{", "\\{"),
        ("}", "\\}"),
        ("~", "\\textasciitilde{}"),
        ("^", "\\^{}"),
    ):
        s = s.replace(a, b)
    return s


def table_latex(t: dict[str, Any], digits: int = 2, caption: str = "") -> str:
    """A LaTeX (booktabs) table of :func:`group_table`'s output, the best value of each column in bold.

    Args:
        t: the table of :func:`group_table`.
        digits: decimals shown.
        caption: the table's caption (none when empty).
    """
    n_num = len(t["header"]) - t["n_text"]
    head = [_tex(h) if i < t["n_text"] else f"{_tex(h)} ($\\uparrow$)" for i, h in enumerate(t["header"])]
    best = [_best(t["lines"], j) for j in range(n_num)]
    out = ["\\begin{table}[t]", "\\centering"]
    if caption:
        out.append(f"\\caption{{{_tex(caption)}}}")
    out += [
        f"\\begin{{tabular}}{{{'l' * t['n_text']}{'r' * n_num}}}",
        "\\toprule",
        " & ".join(head) + " \\\\",
        "\\midrule",
    ]
    for i, (cells, (_, nums)) in enumerate(zip(_grouped_cells(t["lines"]), t["lines"])):
        if i and cells and cells[0]:
            out.append("\\addlinespace")
        vals = [
            f"\\textbf{{{_fmt(v, digits)}}}"
            if not math.isnan(v) and round(v, digits) == round(best[j], digits)
            else _fmt(v, digits)
            for j, v in enumerate(nums)
        ]
        out.append(" & ".join([_tex(c) for c in cells] + vals) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def table_csv(t: dict[str, Any], path: Path) -> Path:
    """Write :func:`group_table`'s output as CSV (full precision) to ``path``; returns ``path``.

    Args:
        t: the table of :func:`group_table`.
        path: the CSV file to write.
    """
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(t["header"])
    for cells, nums in t["lines"]:
        w.writerow(cells + [("" if math.isnan(v) else f"{v:.6f}") for v in nums])
    return atomic_write(path, buf.getvalue())


def comparison_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dhungana and Bista's comparison: per combination, model | prompt_strategy | <metric>_mean / _std |
    num_samples.

    The :func:`extra_metrics` present in the rows (oracle IoU, selection efficiency, instance metrics) get
    their ``_mean`` / ``_std`` columns after the standard ones.

    Args:
        rows: result rows of one dataset.
    """
    model, sam, others = axes_of(rows)
    extra = extra_metrics(rows)
    out = []
    for cid in _combos(rows):
        rs = [r for r in rows if r["combo"] == cid]
        r0 = rs[0]
        name = " / ".join(
            x
            for x in [_label(r0, model), _label(r0, sam)]
            + [f"{o}={_label(r0, o)}" for o in others if o != "strategy"]
            if x
        )
        s = summarize(rs, list(METRICS) + extra)["all"]
        row: dict[str, Any] = {"model": name, "prompt_strategy": r0["labels"].get("strategy", "text")}
        for short, m in COMPARISON_METRICS + tuple((m, m) for m in extra):
            row[f"{short}_mean"], row[f"{short}_std"] = s[f"{m}_mean"], s[f"{m}_std"]
        row["num_samples"] = s["n"]
        row["errors"] = sum(1 for r in rs if r.get("error"))
        out.append(row)
    return out


def _write_dicts(rows: list[dict[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return atomic_write(path, buf.getvalue())


def dicts_markdown(rows: list[dict[str, Any]], digits: int = 4) -> str:
    """A markdown table of dicts sharing the first one's keys (floats rounded to ``digits``).

    Args:
        rows: the dicts, one per table line.
        digits: decimals of float cells.
    """
    if not rows:
        return ""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(_fmt(r[k], digits) if isinstance(r[k], float) else str(r[k]) for k in keys)
            + " |"
        )
    return "\n".join(out) + "\n"


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (dataset, combination, group) with mean / std / n of every metric (and of the extra ones
    present).

    Args:
        rows: result rows.
    """
    metrics = list(METRICS) + extra_metrics(rows)
    out = []
    for cid in _combos(rows):
        rs = [r for r in rows if r["combo"] == cid]
        r0 = rs[0]
        base = {"dataset": r0["dataset"], "combo": cid, **{f"label.{k}": v for k, v in r0["labels"].items()}}
        groups = [("all", None, summarize(rs, metrics)["all"])]
        for tag in dict.fromkeys(t for r in rs for t in r.get("tags", {}) if t in GROUP_TAGS):
            for g, s in summarize(rs, metrics, by=f"tags.{tag}").items():
                if g is not None:
                    groups.append((tag, g, s))
        for tag, g, s in groups:
            out.append(
                {
                    **base,
                    "group": tag,
                    "value": "" if g is None else g,
                    **s,
                    "errors": sum(1 for r in rs if r.get("error") and (g is None or r["tags"].get(tag) == g)),
                }
            )
    keys = list(dict.fromkeys(k for r in out for k in r))
    return [{k: r.get(k, "") for k in keys} for r in out]


# --- plots --------------------------------------------------------------------------------------------


def _plt():
    from ..optional import require

    mpl = require("matplotlib", "report plots")
    mpl.use("Agg")
    return require("matplotlib.pyplot", "report plots")


def heatmap(rows, path_stem: Path, metric: str = "iou", title: str = "") -> list[Path]:
    """Model (CLIP) x SAM heat map of the mean ``metric``.

    Args:
        rows: result rows of one dataset.
        path_stem: the output path without suffix (a ``.png`` and a ``.pdf`` are written).
        metric: the metric shown.
        title: the plot's title.
    """
    import numpy as np

    model, sam, others = axes_of(rows)
    if model is None or sam is None:
        return []

    def mlabel(r):
        return " ".join([_label(r, model)] + [f"{o}={_label(r, o)}" for o in others])

    ms = list(dict.fromkeys(mlabel(r) for r in rows))
    ss = list(dict.fromkeys(_label(r, sam) for r in rows))
    grid = np.full((len(ms), len(ss)), np.nan)
    for cid in _combos(rows):
        rs = [r for r in rows if r["combo"] == cid]
        grid[ms.index(mlabel(rs[0])), ss.index(_label(rs[0], sam))] = summarize(rs, [metric])["all"][
            f"{metric}_mean"
        ]
    plt = _plt()
    longest = max(len(m) for m in ms)
    fig, ax = plt.subplots(figsize=(2.4 + 1.1 * len(ss) + 0.07 * longest, 1.2 + 0.42 * len(ms)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)  # every metric lies in [0, 1]
    ax.set_xticks(range(len(ss)), ss)
    ax.set_yticks(range(len(ms)), ms)
    for i in range(len(ms)):
        for j in range(len(ss)):
            if np.isfinite(grid[i, j]):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if grid[i, j] < 0.6 else "black",
                    fontsize=8,
                )
    ax.set_xlabel(sam)
    ax.set_ylabel(model)
    ax.set_title(title or f"mean {metric}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, plt, path_stem)


def bars(rows, path_stem: Path, metric: str = "iou", title: str = "") -> list[Path]:
    """Mean +- std of ``metric`` per combination, grouped by model, one colour per SAM.

    Args:
        rows: result rows of one dataset.
        path_stem: the output path without suffix (a ``.png`` and a ``.pdf`` are written).
        metric: the metric shown.
        title: the plot's title.
    """
    import numpy as np

    model, sam, others = axes_of(rows)
    groups, series, vals = [], [], {}
    for cid in _combos(rows):
        rs = [r for r in rows if r["combo"] == cid]
        g = " ".join([_label(rs[0], model)] + [f"{o}={_label(rs[0], o)}" for o in others]) or cid
        s = _label(rs[0], sam) or metric
        st = summarize(rs, [metric])["all"]
        if g not in groups:
            groups.append(g)
        if s not in series:
            series.append(s)
        vals[(g, s)] = (st[f"{metric}_mean"], st[f"{metric}_std"])
    plt = _plt()
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(groups) * max(1, len(series)) + 1.5), 3.2))
    x = np.arange(len(groups))
    for k, s in enumerate(series):
        mean = [vals.get((g, s), (np.nan, np.nan))[0] for g in groups]
        std = [vals.get((g, s), (np.nan, np.nan))[1] for g in groups]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, mean, width, yerr=std, capsize=2, label=s)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (mean ± std)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path_stem)


def _save(fig, plt, stem: Path) -> list[Path]:
    out = []
    for ext in (".png", ".pdf"):
        p = stem.with_suffix(ext)
        fig.savefig(p, dpi=150)
        out.append(p)
    plt.close(fig)
    return out


def make_gallery(
    rows,
    info: dict[str, Any],
    dataset: str,
    path_stem: Path,
    k: int = 3,
    metric: str = "iou",
    combo: str | None = None,
) -> list[Path]:
    """Best and worst ``k`` cases of one combination: image + prompt | prediction | ground truth.

    Args:
        rows: result rows of one dataset (with stored masks).
        info: the run's ``run.json`` (its config rebuilds the dataset for the images).
        dataset: the dataset's label.
        path_stem: the output path without suffix.
        k: the number of best and of worst cases.
        metric: the metric that ranks the cases.
        combo: a text matched against the combinations' labels; None picks the combination with the best mean.
    """
    from .. import rle
    from ..io import load_image, load_mask, overlay
    from ..registry import build_spec
    from .config import import_plugins

    scored = [r for r in rows if r.get("mask") is not None and r.get(metric) is not None]
    if not scored or k <= 0:
        return []
    per = {
        cid: summarize([r for r in scored if r["combo"] == cid], [metric])["all"][f"{metric}_mean"]
        for cid in _combos(scored)
    }
    if combo:
        match = [
            cid
            for cid in per
            if combo.lower() in " ".join(map(str, _first(scored, cid)["labels"].values())).lower()
        ]
        if not match:
            raise LvlmError(f"no combination's labels contain {combo!r}")
        cid = match[0]
    else:
        cid = max(per, key=lambda c: per[c])
    rs = sorted((r for r in scored if r["combo"] == cid), key=lambda r: r[metric])
    spec = (info.get("config") or {}).get("datasets", {}).get(dataset)
    if spec is None:
        return []
    import_plugins(
        (info.get("config") or {}).get("imports"),
        Path(info["config_dir"]) if info.get("config_dir") else None,
    )
    from .executor import Indexed

    try:
        ds = Indexed(build_spec("dataset", spec))
    except LvlmError:
        return []  # the data is not here any more: tables only
    index = {sid: i for i, sid in enumerate(ds.ids())}
    plt = _plt()
    out = []
    labels = " / ".join(str(v) for v in rs[0]["labels"].values())
    for name, cases in (("best", rs[::-1][:k]), ("worst", rs[:k])):
        fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
        for row_axes, r in zip(axes, cases):
            s = ds[index[r["sample"]]]
            img = load_image(s.image)
            gt = load_mask(s.mask) if not hasattr(s.mask, "shape") else s.mask.astype(bool)
            pred = rle.decode(r["mask"])
            panels = [
                (img, f'{r["sample"]}\n"{r["prompt"]}"'),
                (overlay(img, pred), f"prediction ({metric} {r[metric]:.2f})"),
                (overlay(img, gt, color=(40, 200, 80)), "ground truth"),
            ]
            for ax, (im, title) in zip(row_axes, panels):
                ax.imshow(im)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.suptitle(f"{dataset}: {labels} ({name})", fontsize=9)
        fig.tight_layout()
        p = path_stem.parent / f"{path_stem.name}_{name}.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        out.append(p)
    return out


def _first(rows, cid):
    return next(r for r in rows if r["combo"] == cid)


# --- everything -------------------------------------------------------------------------------------


def make_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    metric: str = "iou",
    by: str | None = None,
    digits: int = 2,
    gallery: int = 3,
    gallery_combo: str | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write every table, plot and gallery of a run; returns the files written.

    Args:
        run_dir: a run directory written by ``lvlm bench``.
        out: the output folder (default: ``RUN_DIR/report``).
        metric: the metric of the tables, plots and galleries.
        by: the tag whose groups become table columns (default: difficulty, class or defect when present).
        digits: decimals in the tables.
        gallery: best and worst cases per gallery (0: no gallery).
        gallery_combo: a text matched against the combinations' labels for the gallery (default: the best
            one).
        plots: write the heat maps and bar plots.
    """
    from ..io import slug

    rows, info = load_run(run_dir)
    if not rows:
        raise LvlmError(f"{run_dir}: no result rows yet")
    out_dir = Path(out) if out else Path(run_dir) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [_write_dicts(summary_rows(rows), out_dir / "summary.csv")]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        rs = [r for r in rows if r["dataset"] == ds]
        name = slug(ds)
        t = group_table(rs, metric, by)
        atomic_write(out_dir / f"table_{name}.md", table_markdown(t, digits))
        atomic_write(
            out_dir / f"table_{name}.tex", table_latex(t, digits, caption=f"Results on {ds} (mean {metric}).")
        )
        files += [
            out_dir / f"table_{name}.md",
            out_dir / f"table_{name}.tex",
            table_csv(t, out_dir / f"table_{name}.csv"),
        ]
        comp = comparison_rows(rs)
        atomic_write(out_dir / f"comparison_{name}.md", dicts_markdown(comp))
        files += [out_dir / f"comparison_{name}.md", _write_dicts(comp, out_dir / f"comparison_{name}.csv")]
        if plots:
            files += heatmap(rs, out_dir / f"heatmap_{name}", metric, title=f"{ds}: mean {metric}")
            files += bars(rs, out_dir / f"bars_{name}", metric, title=ds)
            if gallery:
                files += make_gallery(
                    rs, info, ds, out_dir / f"gallery_{name}", gallery, metric, gallery_combo
                )
    return files
