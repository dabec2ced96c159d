"""The HTML evaluation report of ``patentclip-eval --report DIR``: one plain page (``index.html``, no scripts, no
network) and its PNG figures, all in DIR:

    metrics.png            headline metrics, this model vs the baseline
    per_class.png          the long tail at a glance: training frequency of every class (sorted, head / tail
                           coloured) above the per-class accuracy of each classifier (zero-shot, linear probe,
                           classification head; the baseline's zero-shot in grey)
    retrieval_examples.png query drawings (blue frame) and their top-k results under the evaluation's protocol
                           (prior-art filter, exclusions), a relevant result framed green, a miss red
    embedding_map.png      a 2-D map (PCA, or t-SNE) of the image embeddings coloured by class

and tables: retrieval in the layout of the LLM-informed paper's Table 1 (head / tail / all classes x mAP, R@5,
R@10, M@10), image-text recall, classification, and per-class results.

``metrics.json`` (the metrics, per-class results and settings, as ``--out`` writes them) is written first, before any
figure, so the numbers survive whatever a figure meets; a figure that cannot be drawn is logged and named on the
page in its place. Text from the data (class codes and names, model labels) is drawn literally: matplotlib would
read a ``$...$`` in a class name as math and fail on it (:func:`literal`).

One concern (the report) in a little over 400 lines because it is one product: every figure is drawn for its place on the
page (sizes, colours and labels shared with the tables), and nothing else uses them.
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from patentclip.plugins.data import batch as B
from patentclip.shards.head_tail import HEAD_FRACTION

FIG_DPI = 110

# (title, [(label, key)]) of the report's metric tables
RETRIEVAL_COLUMNS = (("mAP", "mAP"), ("R@5", "R@5"), ("R@10", "R@10"), ("M@10", "MRR@10"))
TABLES = (
    ("Image-text retrieval (hit rate at K)", [
        ("image→text R@1", "image_to_text_R@1"), ("image→text R@5", "image_to_text_R@5"),
        ("image→text R@10", "image_to_text_R@10"), ("text→image R@1", "text_to_image_R@1"),
        ("text→image R@5", "text_to_image_R@5"), ("text→image R@10", "text_to_image_R@10")]),
    ("Classification", [
        ("zero-shot top-1", "zeroshot_top1"), ("zero-shot top-5", "zeroshot_top5"),
        ("zero-shot balanced", "zeroshot_balanced_top1"), ("zero-shot top-1 (head classes)", "zeroshot_top1_head"),
        ("zero-shot top-1 (tail classes)", "zeroshot_top1_tail"),
        ("linear probe top-1", "linear_probe_top1"), ("linear probe balanced", "linear_probe_balanced_top1"),
        ("linear probe top-1 (head classes)", "linear_probe_top1_head"),
        ("linear probe top-1 (tail classes)", "linear_probe_top1_tail"),
        ("classification head top-1", "classifier_top1"), ("classification head top-5", "classifier_top5"),
        ("classification head balanced", "classifier_balanced_top1"),
        ("classification head top-1 (head classes)", "classifier_top1_head"),
        ("classification head top-1 (tail classes)", "classifier_top1_tail")]),
    ("Image retrieval, more", [
        ("mAP (class-mean)", "i2i_mAP_macro"), ("HitRate@5", "i2i_HitRate@5"), ("HitRate@10", "i2i_HitRate@10"),
        ("P@5", "i2i_P@5"), ("P@10", "i2i_P@10")]),
)
FIGURE_METRICS = (("zero-shot top-1", "zeroshot_top1"), ("linear probe top-1", "linear_probe_top1"),
                  ("head top-1", "classifier_top1"), ("i2i mAP", "i2i_mAP"), ("i2i R@10", "i2i_R@10"),
                  ("i2i M@10", "i2i_MRR@10"), ("i2i mAP head", "i2i_head/mAP"), ("i2i mAP tail", "i2i_tail/mAP"),
                  ("image→text R@5", "image_to_text_R@5"), ("text→image R@5", "text_to_image_R@5"))
COLORS = {"model": "#1f77b4", "baseline": "#9e9e9e", "head": "#d62728", "tail": "#1f77b4", "hit": "#2ca02c",
          "miss": "#d62728", "query": "#1f5fbf"}
PER_CLASS_SERIES = (("zeroshot_top1", "zero-shot", "o", "#1f77b4"), ("linear_probe_top1", "linear probe", "s",
                    "#ff7f0e"), ("classifier_top1", "classification head", "D", "#2ca02c"))



def literal(text) -> str:
    """``text`` as matplotlib draws it literally: a ``$`` escaped, so that no pair of them starts math mode."""
    return str(text).replace("$", r"\$")


def jsonable(x):
    """The value with non-finite floats as None (JSON has no NaN), tuples as lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def metrics_document(result, baseline=None, model: Optional[Dict] = None, baseline_source: Optional[str] = None
                     ) -> Dict:
    """What ``--out`` and the report's ``metrics.json`` hold: the metrics, per-class results and settings (and the
    baseline's), JSON-ready."""
    doc = {**result.metrics, "per_class": result.per_class, "settings": result.settings}
    if model is not None:
        doc["model"] = model
    if baseline is not None:
        doc["baseline"] = {"source": baseline_source, "metrics": baseline.metrics, "per_class": baseline.per_class}
    return jsonable(doc)

def _figure(w, h):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=FIG_DPI, layout="constrained")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _date(day: int) -> str:
    return "unknown" if day is None or day < 0 else (_dt.date(1970, 1, 1) + _dt.timedelta(days=int(day))).isoformat()


# ----------------------------------------------------------------------------------------------------------------
# images of drawings
# ----------------------------------------------------------------------------------------------------------------
def _normalize_stats(preprocess):
    from torchvision.transforms import Normalize

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, Normalize):
            return torch.tensor(t.mean).view(3, 1, 1), torch.tensor(t.std).view(3, 1, 1)
    return torch.zeros(3, 1, 1), torch.ones(3, 1, 1)


def to_uint8(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    """A preprocessed image (normalised float CHW, or the uint8 transport's pixels) as HWC uint8 RGB for display."""
    if image.dtype == torch.uint8:
        return image.cpu().expand(3, -1, -1).permute(1, 2, 0).numpy().copy()
    x = (image.float().cpu() * std + mean).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def collect_images(loaders: Iterable, keys: Iterable[str], preprocess) -> Dict[str, np.ndarray]:
    """The drawings with the given keys, read again from the loaders (the report's second, model-free pass)."""
    want = set(keys)
    out: Dict[str, np.ndarray] = {}
    if not want:
        return out
    mean, std = _normalize_stats(preprocess)
    for loader in loaders:
        for batch in loader:
            for i, k in enumerate(batch[B.KEY]):
                if k in want and k not in out:
                    out[k] = to_uint8(batch[B.IMAGE][i], mean, std)
            if len(out) == len(want):
                return out
    return out


# ----------------------------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------------------------
def metrics_figure(path: str, metrics: Dict, baseline: Optional[Dict], model_label: str, baseline_label: str) -> None:
    items = [(lab, k) for lab, k in FIGURE_METRICS if _finite(metrics.get(k))
             or (baseline is not None and _finite(baseline.get(k)))]
    fig = _figure(7.5, 0.42 * max(3, len(items)) + 1.0)
    ax = fig.add_subplot()
    y = np.arange(len(items))
    h = 0.38 if baseline is not None else 0.6
    vals = [100 * metrics[k] if _finite(metrics.get(k)) else 0.0 for _, k in items]
    bars = ax.barh(y - (h / 2 if baseline is not None else 0), vals, height=h, color=COLORS["model"],
                   label=literal(model_label))
    ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    if baseline is not None:
        bvals = [100 * baseline[k] if _finite(baseline.get(k)) else 0.0 for _, k in items]
        bb = ax.barh(y + h / 2, bvals, height=h, color=COLORS["baseline"], label=literal(baseline_label))
        ax.bar_label(bb, fmt="%.1f", padding=2, fontsize=8)
    ax.set_yticks(y, [lab for lab, _ in items])
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("%")
    ax.set_title("Headline metrics")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)


def per_class_figure(path: str, per_class: List[Dict], baseline_per_class: Optional[List[Dict]] = None) -> None:
    """Top: training frequency of each class, sorted (the long tail), head / tail coloured. Bottom: per-class
    top-1 accuracy of each classifier, same order."""
    freq_key = "train_count" if any(r["train_count"] > 0 for r in per_class) else "eval_count"
    order = sorted(range(len(per_class)), key=lambda i: (-per_class[i][freq_key], per_class[i]["id"]))
    n = len(order)
    x = np.arange(n)
    fig = _figure(max(7.0, min(16.0, 0.32 * n + 3)), 6.2)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.4])
    counts = [max(per_class[i][freq_key], 0) for i in order]
    colors = [COLORS["head"] if per_class[i]["is_head"] else COLORS["tail"] for i in order]
    ax1.bar(x, counts, color=colors, width=0.8)
    if any(c > 0 for c in counts):
        ax1.set_yscale("log")
    ax1.set_ylabel("training drawings" if freq_key == "train_count" else "evaluation drawings")
    n_head = sum(1 for i in order if per_class[i]["is_head"])
    from matplotlib.patches import Patch

    ax1.legend(handles=[Patch(color=COLORS["head"], label=f"head classes ({n_head})"),
                        Patch(color=COLORS["tail"], label=f"tail classes ({n - n_head})")], fontsize=8, loc="upper right")
    ax1.set_title("Class frequency (sorted) and per-class top-1 accuracy")
    ax1.grid(axis="y", alpha=0.3)
    plotted = False
    for key, label, marker, color in PER_CLASS_SERIES:
        vals = [per_class[i].get(key) for i in order]
        if all(v is None for v in vals):
            continue
        ys = np.array([np.nan if v is None else 100 * v for v in vals])
        ax2.plot(x, ys, marker=marker, linestyle="-", linewidth=0.8, markersize=5, color=color, label=label)
        plotted = True
    if baseline_per_class is not None:
        vals = [baseline_per_class[i].get("zeroshot_top1") for i in order]
        if not all(v is None for v in vals):
            ys = np.array([np.nan if v is None else 100 * v for v in vals])
            ax2.plot(x, ys, marker="o", linestyle=":", linewidth=0.8, markersize=5, markerfacecolor="none",
                     color=COLORS["baseline"], label="baseline zero-shot")
            plotted = True
    if n_head and n_head < n:
        for ax in (ax1, ax2):
            ax.axvline(n_head - 0.5, color="k", linestyle="--", linewidth=0.8)
    ax2.set_ylim(-5, 105)
    ax2.set_ylabel("top-1 accuracy (%)")
    ax2.grid(axis="y", alpha=0.3)
    if plotted:
        fig.legend(*ax2.get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    if n <= 40:
        ax2.set_xticks(x, [literal(per_class[i]["code"]) for i in order], rotation=60, ha="right", fontsize=8)
    else:
        ax2.set_xlabel(f"{n} classes, most frequent first")
    fig.savefig(path)


def retrieval_figure(path: str, examples: List[Dict], images: Dict[str, np.ndarray], class_codes: Sequence[str],
                     relevance: str) -> None:
    k = max([len(e["results"]) for e in examples] + [1])
    rows = max(1, len(examples))
    fig = _figure(1.55 * (k + 1) + 0.3, 1.85 * rows + 0.4)
    axes = fig.subplots(rows, k + 1, squeeze=False)
    placeholder = np.full((32, 32, 3), 225, dtype=np.uint8)

    def show(ax, key, color, title):
        img = images.get(key)
        ax.imshow(img if img is not None else placeholder, interpolation="lanczos" if img is not None else "nearest")
        if img is None:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_edgecolor(color)
            sp.set_linewidth(4)
        ax.set_title(literal(title), fontsize=7)

    for r in range(rows):
        for c in range(k + 1):
            axes[r][c].axis("off")
        if r >= len(examples):
            continue
        e = examples[r]
        ax = axes[r][0]
        ax.axis("on")
        part = "" if e.get("is_head") is None else (" · head" if e["is_head"] else " · tail")
        show(ax, e["key"], COLORS["query"], f"query {class_codes[e['class_id']]}{part}\n{_date(e['grant_day'])}"
                                            f" · AP {100 * e['ap']:.0f}%")
        for j, res in enumerate(e["results"]):
            ax = axes[r][j + 1]
            ax.axis("on")
            what = class_codes[res["class_id"]] if relevance == "class" else res["patent_id"]
            show(ax, res["key"], COLORS["hit"] if res["hit"] else COLORS["miss"],
                 f"#{j + 1} {what}\n{_date(res['grant_day'])}")
    fig.suptitle("Retrieval examples (green: relevant, red: not relevant)", fontsize=9)
    fig.savefig(path)


def embedding_2d(features: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    x = features.double()
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as exc:
            raise RuntimeError("--map-method tsne needs scikit-learn (pip install scikit-learn)") from exc
        perplexity = float(max(2.0, min(30.0, (x.shape[0] - 1) / 3)))
        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
        if x.shape[0] <= 5000:
            # a few thousand points: one thread is fast, and OpenMP threads spinning against other busy
            # processes can make it 10x slower
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                return tsne.fit_transform(x.numpy())
        return tsne.fit_transform(x.numpy())
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2))
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).numpy()
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros((xy.shape[0], 2 - xy.shape[1]))], 1)
    return xy


def embedding_figure(path: str, features: torch.Tensor, class_id: torch.Tensor, per_class: List[Dict],
                     method: str = "pca", max_points: int = 3000, seed: int = 0) -> None:
    n = features.shape[0]
    idx = torch.arange(n)
    if n > max_points:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points].sort().values
    xy = embedding_2d(features[idx], method, seed)
    cls = class_id[idx].numpy()
    fig = _figure(8.0, 6.0)
    ax = fig.add_subplot()
    from matplotlib import colormaps

    n_cls = len(per_class)
    cmap = colormaps["tab10" if n_cls <= 10 else "tab20" if n_cls <= 20 else "turbo"]
    for c in range(n_cls):
        m = cls == c
        if not m.any():
            continue
        color = cmap(c % 20) if n_cls <= 20 else cmap(c / max(1, n_cls - 1))
        marker = "o" if per_class[c]["is_head"] else "^"
        label = literal(f"{per_class[c]['code']} {per_class[c]['name']}"[:32]) if n_cls <= 20 else None
        ax.scatter(xy[m, 0], xy[m, 1], s=float(np.clip(6000 / max(1, len(idx)), 8, 40)), color=color, marker=marker, alpha=0.8, label=label, linewidths=0)
        if n_cls > 20:
            cx, cy = np.median(xy[m], axis=0)
            ax.annotate(literal(per_class[c]["code"]), (cx, cy), fontsize=6, ha="center")
    ax.set_title(f"Image embeddings ({'PCA' if method == 'pca' else 't-SNE'}, {len(idx)} drawings; "
                 f"● head class, ▲ tail class)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if n_cls <= 20:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=1.2, frameon=False)
    fig.savefig(path)


# ----------------------------------------------------------------------------------------------------------------
# the page
# ----------------------------------------------------------------------------------------------------------------
def _pct(v) -> str:
    return f"{100 * v:.1f}" if _finite(v) else "–"


def _metrics_table(rows: Dict[str, Dict], items: Sequence) -> str:
    names = list(rows)
    out = ["<table class='metrics'><thead><tr><th>metric</th>"
           + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr></thead><tbody>"]
    for label, key in items:
        if not any(_finite(rows[n].get(key)) for n in names):
            continue
        out.append(f"<tr><td>{html.escape(label)}</td>"
                   + "".join(f"<td data-key='{html.escape(key)}'>{_pct(rows[n].get(key))}</td>" for n in names)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _retrieval_table(rows: Dict[str, Dict]) -> str:
    """The LLM-informed paper's Table 1 layout: head / tail / all classes x mAP, R@5, R@10, M@10."""
    parts = (("Head classes", "i2i_head/"), ("Tail classes", "i2i_tail/"), ("All classes", "i2i_"))
    out = ["<table class='metrics'><thead><tr><th rowspan='2'>model</th>"
           + "".join(f"<th colspan='{len(RETRIEVAL_COLUMNS)}'>{p}</th>" for p, _ in parts) + "</tr><tr>"
           + "".join(f"<th>{c}</th>" for _ in parts for c, _ in RETRIEVAL_COLUMNS) + "</tr></thead><tbody>"]
    for name, m in rows.items():
        out.append(f"<tr><td>{html.escape(name)}</td>"
                   + "".join(f"<td data-key='{html.escape(pre + key)}'>{_pct(m.get(pre + key))}</td>"
                             for _, pre in parts for _, key in RETRIEVAL_COLUMNS) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _per_class_table(per_class: List[Dict], baseline_per_class: Optional[List[Dict]]) -> str:
    cols = [("zeroshot_top1", "zero-shot"), ("linear_probe_top1", "linear probe"),
            ("classifier_top1", "classification head"), ("i2i_mAP", "retrieval mAP")]
    cols = [(k, lab) for k, lab in cols if any(r.get(k) is not None for r in per_class)]
    head = ("<tr><th>id</th><th>code</th><th>name</th><th>head/tail</th><th>training drawings</th>"
            "<th>evaluation drawings</th>" + "".join(f"<th>{lab} top-1 %</th>" if k != "i2i_mAP" else f"<th>{lab} %</th>"
                                                      for k, lab in cols)
            + ("<th>baseline zero-shot %</th>" if baseline_per_class else "") + "</tr>")
    body = []
    for i, r in enumerate(sorted(per_class, key=lambda r: (-r["train_count"], r["id"]))):
        cells = [str(r["id"]), html.escape(r["code"]), html.escape(r["name"]), "head" if r["is_head"] else "tail",
                 str(r["train_count"]), str(r["eval_count"])]
        cells += [_pct(r.get(k)) if r.get(k) is not None else "–" for k, _ in cols]
        if baseline_per_class:
            b = baseline_per_class[r["id"]].get("zeroshot_top1")
            cells.append(_pct(b) if b is not None else "–")
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table class='metrics'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


CSS = """
body { font-family: DejaVu Sans, Arial, sans-serif; margin: 24px; color: #222; max-width: 1300px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table.metrics { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
table.metrics thead th { background: #f2f2f2; }
figure { margin: 12px 0 24px; } figcaption { font-size: 12px; color: #555; max-width: 900px; }
img.fig { max-width: 100%; border: 1px solid #eee; }
.settings { font-size: 12px; color: #444; }
"""


def write_report(out_dir: str, result, class_table, *, baseline=None, images: Optional[Dict[str, np.ndarray]] = None,
                 title: str = "patentclip evaluation", model_label: str = "model",
                 baseline_label: Optional[str] = None, map_method: str = "pca", map_points: int = 3000) -> str:
    """Write ``index.html`` and its PNG figures into ``out_dir``; returns the page's path.

    ``result`` / ``baseline``: :class:`patentclip.evaluation.run.EvalResult` (``features`` needed for the map,
    ``examples`` for the retrieval examples); ``images``: key -> HxWx3 uint8 of the drawings in the examples.
    """
    os.makedirs(out_dir, exist_ok=True)
    images = images or {}
    baseline_label = baseline_label or "baseline"
    bm = baseline.metrics if baseline is not None else None
    bpc = baseline.per_class if baseline is not None else None
    codes = [c.code for c in class_table.classes]
    s = result.settings
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:  # first: the numbers do not depend on a figure
        json.dump(metrics_document(result, baseline, {"label": model_label}, baseline_label), f, indent=2)
    figs = []

    def figure(fn: str, draw, *draw_args) -> bool:
        try:
            draw(os.path.join(out_dir, fn), *draw_args)
            return True
        except Exception as exc:  # one figure must not cost the page (the metrics are already written)
            logging.warning("report: figure %s could not be drawn: %s: %s", fn, type(exc).__name__, exc)
            failed.append((fn, f"{type(exc).__name__}: {exc}"))
            return False

    failed: List = []
    if figure("metrics.png", metrics_figure, result.metrics, bm, model_label, baseline_label):
        figs.append(("metrics.png", "Headline metrics",
                     "Percentages. i2i = image-to-image retrieval under the protocol above; R@K = relevant results "
                     "in the top K / all relevant results (the paper's Recall@K); M@10 = MRR@10."))
    if figure("per_class.png", per_class_figure, result.per_class, bpc):
        figs.append(("per_class.png", "Per-class accuracy against class frequency",
                     "Top: drawings per class in training (log scale), most frequent first; red = head classes, "
                     "blue = tail classes (dashed line). Bottom: top-1 accuracy of each class, same order."))
    if result.examples and figure("retrieval_examples.png", retrieval_figure, result.examples, images, codes,
                                  s.get("relevance", "class")):
        figs.append(("retrieval_examples.png", "Retrieval examples",
                     "Each row: a query drawing (blue) and its top results in rank order; green frame = relevant "
                     f"(same {'class' if s.get('relevance', 'class') == 'class' else 'patent'}), red = not. Dates "
                     "are grant dates" + (" (prior-art filter: only earlier grants are searched)."
                                         if s.get("prior_art_filter") else ".")))
    if result.features is not None and figure("embedding_map.png", embedding_figure, result.features["image_features"],
                                              result.features["class_id"], result.per_class, map_method, map_points,
                                              s.get("seed", 0)):
        figs.append(("embedding_map.png", "Embedding map",
                     f"Image embeddings of the evaluation drawings projected to 2-D "
                     f"({'PCA' if map_method == 'pca' else 't-SNE'}), coloured by class."))

    rows = {model_label: result.metrics}
    if bm is not None:
        rows[baseline_label] = bm
    lp = s.get("linear_probe_fit")
    settings_lines = [
        f"relevance: same {s.get('relevance', 'class')}",
        f"prior-art filter: {'on (only drawings granted before the query are searched)' if s.get('prior_art_filter') else 'off'}",
        f"retrieval database: {s.get('retrieval_database', '')}",
        f"queries: {int(result.metrics.get('i2i_num_queries', 0))} "
        f"({int(result.metrics.get('i2i_num_queries_without_relevant', 0))} without any relevant candidate, not "
        f"averaged; {int(result.metrics.get('i2i_num_queries_unknown_date', 0))} without grant date)",
        f"evaluation drawings: {int(result.metrics.get('num_samples', 0))}, classes: {len(class_table)}, head "
        f"classes: {len(s.get('head_classes', []))} (top {HEAD_FRACTION:.0%} by training frequency, or "
        f"classes.json categories)",
        f"zero-shot templates: {' | '.join(s.get('templates', []))}",
        f"linear probe: {lp['protocol']} (l2 = {lp['l2']:g})" if isinstance(lp, dict) else "linear probe: off",
    ]
    parts = [
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<ul class='settings'>" + "".join(f"<li>{html.escape(x)}</li>" for x in settings_lines) + "</ul>",
        "<h2>Image-to-image retrieval</h2>",
        "<p class='settings'>Percentages, in the layout of Table 1 of “Large Language Model Informed Patent Image "
        "Retrieval”: R@K = relevant results in the top K / all relevant results, M@10 = MRR@10.</p>",
        _retrieval_table(rows),
    ]
    for heading, items in TABLES:
        parts += [f"<h2>{html.escape(heading)}</h2>", _metrics_table(rows, items)]
    parts.append("<h2>Figures</h2>")
    for fn, cap_title, cap in figs:
        parts.append(f"<figure><img class='fig' src='{fn}' alt='{html.escape(cap_title)}'>"
                     f"<figcaption><b>{html.escape(cap_title)}.</b> {html.escape(cap)}</figcaption></figure>")
    for fn, why in failed:
        parts.append(f"<p class='settings'>Figure {html.escape(fn)} could not be drawn: {html.escape(why)}</p>")
    parts += ["<h2>Per-class results</h2>", _per_class_table(result.per_class, bpc), "</body></html>"]
    page = os.path.join(out_dir, "index.html")
    with open(page, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
    return page
