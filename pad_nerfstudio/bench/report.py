"""The benchmark report: tables like the PAD paper's, plots, and the attribute study, from stored results only.

``write_benchmark_report(out)`` reads every ``runs/*/*/*/result.json`` under ``out`` (the runs of one machine,
or the copied-together shards of a cluster job) and writes:

    results.json   every run's metrics, the means per method and setting, attributes and correlations
    results.csv    one row per (class, method, setting) with all metrics and the class attributes
    results.md     Table 2 layout (rows = classes + mean, columns = methods, cells = pixel / image AUROC, plus
                   AUPRO, pose error and seconds per query of OmniposeAD), all metrics, the Table 3 layout
                   when several training-view settings ran, and the attribute study
    plots/         per setting: per-class bars per metric, image ROC curves per class, attribute scatter plots;
                   metrics against the number of training views when several settings ran

The attribute study correlates, over classes, each method's metrics with shape complexity and colour contrast
(Pearson's r and Spearman's rho with their p-values, scipy.stats), as the paper's Figures 3 and 6 do.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from pad_nerfstudio.bench.attributes import ATTRIBUTES
from pad_nerfstudio.bench.methods import RELEVANT_OPTIONS
from pad_nerfstudio.bench.plan import METHODS, BenchRun, ReportError, setting_name
from pad_nerfstudio.bench.store import json_ready, load_results, write_json_atomic, write_text_atomic

__all__ = [
    "METRICS",
    "METHOD_LABELS",
    "correlation",
    "attribute_table",
    "correlation_rows",
    "summarise",
    "render_markdown",
    "render_csv",
    "write_benchmark_report",
]

METRICS: Tuple[str, ...] = ("pixel_auroc", "image_auroc", "pixel_aupro")
"""Metrics of the tables, plots and the attribute study."""

METRIC_LABELS = {
    "pixel_auroc": "pixel AUROC",
    "image_auroc": "image AUROC",
    "pixel_aupro": "AUPRO",
    "pixel_f1_max": "pixel F1-max",
    "image_f1_max": "image F1-max",
}
METHOD_LABELS = {"omnipose-ad": "OmniposeAD (ours)", "patchcore": "PatchCore", "nearest-view": "Nearest view"}
ATTRIBUTE_LABELS = {"shape_complexity": "shape complexity", "colour_contrast": "colour contrast"}
OURS = "omnipose-ad"
CSV_COLUMNS = (
    "class_name",
    "method",
    "setting",
    "train_views",
    "pixel_auroc",
    "image_auroc",
    "pixel_aupro",
    "pixel_f1_max",
    "image_f1_max",
    "pose_rot_err_deg_median",
    "pose_trans_err_pct_median",
    "pose_within_2deg",
    "seconds_per_query",
    "num_queries",
    "train_seconds",
    "wall_seconds",
)


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------------------------------


def _number(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


EXACT_P_MAX_CLASSES = 7
"""Up to this many classes the p-values come from all permutations of the pairs (7! = 5040 of them):
scipy's asymptotic tests are far off for a handful of classes (Spearman's gives p = 0 for any perfect
ranking of 3 classes, whose exact p is 1/3)."""


def correlation(x: Sequence[float], y: Sequence[float]) -> Dict[str, Optional[float]]:
    """Pearson's r and Spearman's rho (with two-sided p-values) of paired values; None where undefined.

    Pairs with a missing value are dropped; fewer than 3 pairs, or a constant variable, give None.
    p-values are exact permutation tests up to `EXACT_P_MAX_CLASSES` pairs, scipy's asymptotic ones above.

    Example:
        >>> round(correlation([1, 2, 3, 4], [1, 3, 2, 5])["pearson_r"], 4)
        0.8315
    """
    from scipy import stats

    pairs = [(a, b) for a, b in zip(x, y) if _number(a) is not None and _number(b) is not None]
    empty = {"n": len(pairs), "pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    if len(pairs) < 3:
        return empty
    xs, ys = np.array(pairs, dtype=np.float64).T
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns for n < 3 and ties; both are handled above or harmless
        if len(pairs) <= EXACT_P_MAX_CLASSES:
            exact = stats.PermutationMethod()  # exact: n! <= its default 9999 resamples
            pearson = stats.pearsonr(xs, ys, method=exact)
            spearman = stats.pearsonr(stats.rankdata(xs), stats.rankdata(ys), method=exact)  # rho = r of ranks
        else:
            pearson = stats.pearsonr(xs, ys)
            spearman = stats.spearmanr(xs, ys)
    return {
        "n": len(pairs),
        "pearson_r": _number(float(pearson[0])),
        "pearson_p": _number(float(pearson[1])),
        "spearman_rho": _number(float(spearman[0])),
        "spearman_p": _number(float(spearman[1])),
    }


def _ordered(values: Iterable[str], order: Sequence[str]) -> List[str]:
    present = set(values)
    return [v for v in order if v in present] + sorted(present - set(order))


def _methods(results: Sequence[Dict[str, Any]]) -> List[str]:
    # Baselines first and ours last, as in the paper's tables.
    order = [m for m in METHODS if m != OURS] + [OURS]
    return _ordered((r["method"] for r in results), order)


def _settings(results: Sequence[Dict[str, Any]]) -> List[str]:
    views = {r["setting"]: r.get("train_views") for r in results}
    return sorted(views, key=lambda s: BenchRun("", "", views[s]).sort_key())


def _classes(results: Sequence[Dict[str, Any]]) -> List[str]:
    return sorted({r["class_name"] for r in results})


def attribute_table(results: Sequence[Dict[str, Any]]) -> Tuple[str, Dict[str, Dict[str, Optional[float]]]]:
    """(source, {class: {attribute: value}}): pad-synth's attributes when every class has them, else image-based.

    Example:
        >>> r = {"class_name": "a", "attributes": {"pad-synth": None, "images": {"shape_complexity": 0.2}}}
        >>> attribute_table([r])
        ('images', {'a': {'shape_complexity': 0.2, 'colour_contrast': None}})
    """
    per_class: Dict[str, Dict[str, Any]] = {}
    for result in results:
        per_class.setdefault(result["class_name"], result.get("attributes") or {})
    source = "pad-synth" if per_class and all(a.get("pad-synth") for a in per_class.values()) else "images"
    table = {
        name: {key: _number((attributes.get(source) or {}).get(key)) for key in ATTRIBUTES}
        for name, attributes in sorted(per_class.items())
    }
    return source, table


def correlation_rows(
    results: Sequence[Dict[str, Any]], attributes: Dict[str, Dict[str, Optional[float]]]
) -> List[Dict[str, Any]]:
    """Correlation of every (setting, method, metric) with every attribute, over classes."""
    rows = []
    for setting in _settings(results):
        for method in _methods(results):
            chosen = [r for r in results if r["setting"] == setting and r["method"] == method]
            for metric in METRICS:
                for attribute in ATTRIBUTES:
                    x = [attributes.get(r["class_name"], {}).get(attribute) for r in chosen]
                    y = [r["metrics"].get(metric) for r in chosen]
                    rows.append(
                        {"setting": setting, "method": method, "metric": metric, "attribute": attribute}
                        | correlation(x, y)
                    )
    return rows


def _mean(values: Iterable[Any]) -> Tuple[Optional[float], int]:
    numbers = [v for v in (_number(v) for v in values) if v is not None]
    return (float(np.mean(numbers)) if numbers else None), len(numbers)


def summarise(results: Sequence[Dict[str, Any]], expected: Sequence[BenchRun] = ()) -> Dict[str, Any]:
    """Everything results.json holds, computed from the stored run results.

    Missing runs are the holes in the (class x method x setting) grid of the results, plus the ``expected`` runs
    (the plan, when known) without a result.
    """
    planned = [
        {"class_name": r.class_name, "method": r.method, "setting": r.setting, "train_views": r.train_views}
        for r in expected
    ]
    grid = list(results) + planned  # a planned run that failed still gets its row, column and "–" cell
    classes, methods, settings = _classes(grid), _methods(grid), _settings(grid)
    present = {(r["class_name"], r["method"], r["setting"]) for r in results}
    missing = [f"{c}/{m}/{s}" for s in settings for m in methods for c in classes if (c, m, s) not in present]
    means: Dict[str, Dict[str, Dict[str, Any]]] = defaultdict(dict)
    metric_keys = sorted({k for r in results for k, v in r["metrics"].items() if _number(v) is not None})
    for setting in settings:
        for method in methods:
            chosen = [r for r in results if r["setting"] == setting and r["method"] == method]
            entry: Dict[str, Any] = {"classes": len(chosen)}
            for key in metric_keys + ["train_seconds"]:
                source = (r.get(key) if key == "train_seconds" else r["metrics"].get(key) for r in chosen)
                entry[key] = _mean(source)[0]
            means[setting][method] = entry
    source, attributes = attribute_table(results)
    runs = [
        {key: r.get(key) for key in ("class_name", "method", "setting", "train_views", "train_seconds", "wall_seconds")}
        | {"metrics": r["metrics"], "details": r.get("details", {}), "options": r.get("options", {})}
        for r in results
    ]
    return {
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "classes": classes,
        "methods": methods,
        "settings": settings,
        "runs": runs,
        "missing": missing,
        "means": dict(means),
        "attributes": {"source": source, "per_class": attributes},
        "correlations": correlation_rows(results, attributes),
    }


def _percent(value: Any) -> str:
    number = _number(value)
    return "–" if number is None else f"{100.0 * number:.1f}"


def _plain(value: Any, digits: int = 2) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _pair(metrics: Optional[Dict[str, Any]]) -> str:
    if metrics is None:
        return "–"
    return f"{_percent(metrics.get('pixel_auroc'))} / {_percent(metrics.get('image_auroc'))}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """A Markdown table, first column left-aligned, the numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _by_key(results: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str, str], Dict[str, Any]]:
    return {(r["class_name"], r["method"], r["setting"]): r for r in results}


def _setting_title(setting: str, results: Sequence[Dict[str, Any]]) -> str:
    views = [r["details"].get("training_views") for r in results if r["setting"] == setting and r.get("details")]
    views = [v for v in views if isinstance(v, int)]
    count = f" ({views[0]})" if views and setting == setting_name(None) else ""
    return "all training views" + count if setting == setting_name(None) else setting.replace("-", " training ")


def _table2(setting: str, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> List[str]:
    classes, methods = summary["classes"], summary["methods"]
    found = _by_key(results)
    ours = OURS in methods
    header = ["Class"] + [METHOD_LABELS.get(m, m) for m in methods]
    if ours:
        header += ["AUPRO (ours)", "pose error ° (ours)", "s / query (ours)"]
    rows = []
    for name in classes:
        row = [name] + [_pair((found.get((name, m, setting)) or {}).get("metrics")) for m in methods]
        if ours:
            metrics = (found.get((name, OURS, setting)) or {}).get("metrics") or {}
            row += [
                _percent(metrics.get("pixel_aupro")),
                _plain(metrics.get("pose_rot_err_deg_median")),
                _plain(metrics.get("seconds_per_query"), 1),
            ]
        rows.append(row)
    means = summary["means"].get(setting, {})
    mean_row = ["**Mean**"]
    for method in methods:
        entry = means.get(method, {})
        cell = _pair(entry)
        if entry.get("classes", 0) < len(classes):
            cell += f" ({entry.get('classes', 0)}/{len(classes)})"
        mean_row.append(f"**{cell}**")
    if ours:
        entry = means.get(OURS, {})
        mean_row += [
            _percent(entry.get("pixel_aupro")),
            _plain(entry.get("pose_rot_err_deg_median")),
            _plain(entry.get("seconds_per_query"), 1),
        ]
    rows.append(mean_row)
    return _table(header, rows)


def _details_table(setting: str, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> List[str]:
    header = [
        "Class",
        "Method",
        "pixel AUROC",
        "image AUROC",
        "AUPRO",
        "pixel F1-max",
        "image F1-max",
        "pose error ° (median)",
        "within 2°",
        "s / query",
        "train s",
    ]
    found = _by_key(results)
    rows = []
    for name in summary["classes"]:
        for method in summary["methods"]:
            result = found.get((name, method, setting))
            if result is None:
                continue
            m = result["metrics"]
            rows.append(
                [
                    name,
                    METHOD_LABELS.get(method, method),
                    _percent(m.get("pixel_auroc")),
                    _percent(m.get("image_auroc")),
                    _percent(m.get("pixel_aupro")),
                    _percent(m.get("pixel_f1_max")),
                    _percent(m.get("image_f1_max")),
                    _plain(m.get("pose_rot_err_deg_median")),
                    _percent(m.get("pose_within_2deg")),
                    _plain(m.get("seconds_per_query")),
                    _plain(result.get("train_seconds"), 0),
                ]
            )
    return _table(header, rows)


def _table3(results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> List[str]:
    settings = summary["settings"]
    found = _by_key(results)
    lines: List[str] = []
    for method in summary["methods"]:
        lines += ["", f"### {METHOD_LABELS.get(method, method)}: pixel / image AUROC (%) by training views", ""]
        header = ["Class"] + [_setting_title(s, results) for s in settings]
        rows = [
            [name] + [_pair((found.get((name, method, s)) or {}).get("metrics")) for s in settings]
            for name in summary["classes"]
        ]
        rows.append(["**Mean**"] + [f"**{_pair(summary['means'].get(s, {}).get(method))}**" for s in settings])
        lines += _table(header, rows)
    return lines


def _attribute_section(summary: Dict[str, Any]) -> List[str]:
    source = summary["attributes"]["source"]
    per_class = summary["attributes"]["per_class"]
    definition = (
        "from pad-synth's attributes.json (shape complexity = 1 - brick volume / convex-hull volume; colour "
        "contrast = mean CIE76 ΔE between face-adjacent bricks)"
        if source == "pad-synth"
        else "computed from the training images (shape complexity = mean 1 - silhouette area / convex-hull area; "
        "colour contrast = mean CIELAB ΔE across the boundaries of 8 colour clusters; see "
        "pad_nerfstudio/bench/attributes.py)"
    )
    lines = ["", "## Attribute study", "", f"Attributes {definition}.", ""]
    lines += _table(
        ["Class"] + [ATTRIBUTE_LABELS[a] for a in ATTRIBUTES],
        [[name] + [_plain(values.get(a), 3) for a in ATTRIBUTES] for name, values in per_class.items()],
    )
    if len(per_class) < 3:
        return lines + ["", f"Correlations need at least 3 classes ({len(per_class)} here); none computed."]
    lines += [
        "",
        "Correlation over classes: Pearson r (p) / Spearman ρ (p), two-sided p-values (exact permutation tests "
        f"up to {EXACT_P_MAX_CLASSES} classes); – for a constant variable.",
        "",
    ]
    cells = {(r["setting"], r["method"], r["metric"], r["attribute"]): r for r in summary["correlations"]}
    several = len(summary["settings"]) > 1
    rows = []
    for setting in summary["settings"]:
        for method in summary["methods"]:
            for metric in METRICS:
                label = METHOD_LABELS.get(method, method) + (f" ({setting})" if several else "")
                row = [label, METRIC_LABELS[metric]]
                for attribute in ATTRIBUTES:
                    c = cells.get((setting, method, metric, attribute), {})
                    row.append(
                        f"{_plain(c.get('pearson_r'))} ({_plain(c.get('pearson_p'))}) / "
                        f"{_plain(c.get('spearman_rho'))} ({_plain(c.get('spearman_p'))})"
                    )
                rows.append(row)
    lines += _table(["Method", "Metric"] + [ATTRIBUTE_LABELS[a] for a in ATTRIBUTES], rows)
    return lines


def render_markdown(results: Sequence[Dict[str, Any]], summary: Dict[str, Any], plots: Sequence[str] = ()) -> str:
    """results.md: the paper-style tables, the attribute study and links to the plots."""
    classes, methods, settings = summary["classes"], summary["methods"], summary["settings"]
    lines = [
        "# PAD benchmark",
        "",
        f"{len(classes)} classes × {len(methods)} methods × {len(settings)} training-view settings, "
        f"{len(results)} runs (generated {summary['generated_at']}). Cells are percentages; "
        "pixel / image AUROC under the PAD protocol (maps and masks at 224 px, pixels pooled per class).",
    ]
    if summary["missing"]:
        lines += ["", f"**Missing runs ({len(summary['missing'])}):** " + ", ".join(summary["missing"])]
    for setting in settings:
        title = _setting_title(setting, results)
        lines += ["", f"## Table 2 layout: pixel / image AUROC (%), {title}", ""]
        lines += _table2(setting, results, summary)
        lines += ["", f"### All metrics, {title}", ""]
        lines += _details_table(setting, results, summary)
    if len(settings) > 1:
        lines += ["", "## Table 3 layout: fewer training views"]
        lines += _table3(results, summary)
    lines += _attribute_section(summary)
    if plots:
        lines += ["", "## Plots", ""] + [f"- [{p}]({p})" for p in plots]
        lines.append("- per run: runs/<class>/<method>/<setting>/report/ (curves.png with pixel ROC and PRO, panels/)")
    options = {}
    for result in results:
        stored = result.get("options") or {}
        options.setdefault(result["method"], {k: stored.get(k) for k in RELEVANT_OPTIONS.get(result["method"], stored)})
    if options:
        lines += ["", "## Options", ""]
        for method, values in options.items():
            text = ", ".join(f"{k}={v}" for k, v in sorted(values.items()))
            lines.append(f"- {METHOD_LABELS.get(method, method)}: {text}")
    return "\n".join(lines) + "\n"


def render_csv(results: Sequence[Dict[str, Any]], attributes: Dict[str, Dict[str, Optional[float]]]) -> str:
    """results.csv: one row per run with the metrics of CSV_COLUMNS and the class attributes."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(CSV_COLUMNS) + list(ATTRIBUTES))
    for result in results:
        row = []
        for column in CSV_COLUMNS:
            value = result.get(column) if column in result else result["metrics"].get(column)
            row.append("" if value is None else (f"{value:.6g}" if isinstance(value, float) else value))
        row += [
            "" if v is None else f"{v:.6g}"
            for v in (attributes.get(result["class_name"], {}).get(a) for a in ATTRIBUTES)
        ]
        writer.writerow(row)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_bars(
    path: Path, metric: str, setting: str, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]
) -> None:
    plt = _pyplot()
    classes, methods = summary["classes"], summary["methods"]
    found = _by_key(results)
    labels = classes + ["mean"]
    width = 0.8 / max(len(methods), 1)
    figure, axis = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) * max(len(methods), 1) * 0.5 + 2), 4))
    for index, method in enumerate(methods):
        values = [_number((found.get((c, method, setting)) or {}).get("metrics", {}).get(metric)) for c in classes]
        values.append(_number(summary["means"].get(setting, {}).get(method, {}).get(metric)))
        heights = [np.nan if v is None else 100.0 * v for v in values]
        axis.bar(
            np.arange(len(labels)) + (index - (len(methods) - 1) / 2) * width,
            heights,
            width,
            label=METHOD_LABELS.get(method, method),
        )
    axis.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right")
    axis.set(ylabel=f"{METRIC_LABELS[metric]} (%)", ylim=(0, 100), title=f"{METRIC_LABELS[metric]}, {setting}")
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_roc(path: Path, setting: str, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> bool:
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    classes, methods = summary["classes"], summary["methods"]
    found = _by_key(results)
    columns = min(4, len(classes))
    rows = int(math.ceil(len(classes) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.2 * rows), squeeze=False)
    drawn = False
    for axis, name in zip(axes.ravel(), classes):
        for method in methods:
            queries = (found.get((name, method, setting)) or {}).get("queries") or []
            labels = np.array([q["label"] for q in queries])
            scores = np.array([q["score"] for q in queries], dtype=np.float64)
            if labels.size == 0 or labels.all() or not labels.any() or not np.isfinite(scores).all():
                continue
            fpr, tpr, _ = roc_curve(labels, scores)
            auroc = (found[(name, method, setting)]["metrics"] or {}).get("image_auroc")
            axis.plot(fpr, tpr, label=f"{METHOD_LABELS.get(method, method)} {_percent(auroc)}")
            drawn = True
        axis.plot([0, 1], [0, 1], color="0.7", linestyle=":")
        axis.set(title=name, xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
        axis.legend(fontsize=7, loc="lower right")
    for axis in axes.ravel()[len(classes) :]:
        axis.axis("off")
    figure.suptitle(f"Image ROC per class, {setting}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return drawn


def _plot_attributes(path: Path, setting: str, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> None:
    plt = _pyplot()
    per_class = summary["attributes"]["per_class"]
    correlations = {
        (r["method"], r["metric"], r["attribute"]): r for r in summary["correlations"] if r["setting"] == setting
    }
    found = _by_key(results)
    metrics = ("image_auroc", "pixel_auroc")
    figure, axes = plt.subplots(
        len(ATTRIBUTES), len(metrics), figsize=(5.2 * len(metrics), 4.0 * len(ATTRIBUTES)), squeeze=False
    )
    markers = "osD^v<>"
    for row, attribute in enumerate(ATTRIBUTES):
        for column, metric in enumerate(metrics):
            axis = axes[row, column]
            for index, method in enumerate(summary["methods"]):
                points = []
                for name in summary["classes"]:
                    x = per_class.get(name, {}).get(attribute)
                    y = _number((found.get((name, method, setting)) or {}).get("metrics", {}).get(metric))
                    if x is not None and y is not None:
                        points.append((x, 100.0 * y, name))
                if not points:
                    continue
                xs, ys, names = zip(*points)
                stats = correlations.get((method, metric, attribute), {})
                strength = f"r {_plain(stats.get('pearson_r'))}, ρ {_plain(stats.get('spearman_rho'))}"
                label = f"{METHOD_LABELS.get(method, method)} ({strength})"
                axis.scatter(xs, ys, marker=markers[index % len(markers)], label=label)
                if len(points) >= 2 and np.ptp(xs) > 0:
                    slope, intercept = np.polyfit(xs, ys, 1)
                    grid = np.linspace(min(xs), max(xs), 2)
                    axis.plot(grid, slope * grid + intercept, linewidth=0.8, alpha=0.6)
                for x, y, name in points:
                    axis.annotate(name, (x, y), fontsize=6, alpha=0.7, xytext=(2, 2), textcoords="offset points")
            axis.set(xlabel=ATTRIBUTE_LABELS[attribute], ylabel=f"{METRIC_LABELS[metric]} (%)")
            axis.legend(fontsize=7)
    figure.suptitle(f"Per-class results against object attributes ({summary['attributes']['source']}), {setting}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_views(path: Path, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> None:
    plt = _pyplot()
    settings = summary["settings"]
    counts = {}
    for setting in settings:
        views = [
            r.get("train_views") or r.get("details", {}).get("training_views")
            for r in results
            if r["setting"] == setting
        ]
        views = [v for v in views if isinstance(v, int)]
        counts[setting] = max(views) if views else None
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4.3 * len(METRICS), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], METRICS):
        for method in summary["methods"]:
            points = [
                (counts[s], 100.0 * v)
                for s in settings
                if counts[s] is not None
                and (v := _number(summary["means"].get(s, {}).get(method, {}).get(metric))) is not None
            ]
            if points:
                xs, ys = zip(*sorted(points))
                axis.plot(xs, ys, marker="o", label=METHOD_LABELS.get(method, method))
        axis.set(xlabel="training views", ylabel=f"mean {METRIC_LABELS[metric]} (%)", title=METRIC_LABELS[metric])
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _write_plots(out: Path, results: Sequence[Dict[str, Any]], summary: Dict[str, Any]) -> List[str]:
    written = []
    for setting in summary["settings"]:
        chosen = [r for r in results if r["setting"] == setting]
        folder = out / "plots" / setting
        folder.mkdir(parents=True, exist_ok=True)
        for metric in METRICS:
            _plot_bars(folder / f"bars_{metric}.png", metric, setting, chosen, summary)
            written.append(f"plots/{setting}/bars_{metric}.png")
        if _plot_roc(folder / "roc_image.png", setting, chosen, summary):
            written.append(f"plots/{setting}/roc_image.png")
        _plot_attributes(folder / "attributes.png", setting, chosen, summary)
        written.append(f"plots/{setting}/attributes.png")
    if len(summary["settings"]) > 1:
        _plot_views(out / "plots" / "train_views.png", results, summary)
        written.append("plots/train_views.png")
    return written


def write_benchmark_report(out: Path, plots: bool = True, expected: Sequence[BenchRun] = ()) -> Dict[str, Any]:
    """Read every stored run under ``out`` and write results.json, results.csv, results.md and plots/.

    Example:
        >>> summary = write_benchmark_report(Path("outputs/pad-bench"))  # doctest: +SKIP
        >>> summary["means"]["all-views"]["patchcore"]["image_auroc"]  # doctest: +SKIP
        0.785
    """
    out = Path(out)
    results = load_results(out)
    if not results:
        raise ReportError(
            f"No finished runs under {out / 'runs'} (expected runs/<class>/<method>/<setting>/result.json). "
            "Run `pad-bench --data ROOT --out DIR` first, or copy the shards' runs/ folders into DIR."
        )
    summary = summarise(results, expected)
    written = _write_plots(out, results, summary) if plots else []
    summary["plots"] = written
    write_json_atomic(out / "results.json", json_ready(summary))
    write_text_atomic(out / "results.csv", render_csv(results, summary["attributes"]["per_class"]))
    write_text_atomic(out / "results.md", render_markdown(results, summary, written))
    return summary
