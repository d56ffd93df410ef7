"""Publication figures. Each function writes its figure (PNG by default; any matplotlib
format via ``formats``) and, beside it, ``<stem>.csv``: the exact table the figure shows.

Figures are drawn on the Agg canvas without pyplot, so nothing global changes, no window
opens and no figure outlives its function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from mpl_toolkits.axes_grid1 import make_axes_locatable

from lc.worldcover import BY_CODE, class_name

_UNKNOWN_COLOUR = "#808080"
_DPI = 200


def class_colour(code: int) -> str:
    """The WorldCover colour of a code ('#rrggbb'), grey for codes outside the legend."""
    return BY_CODE[code].colour if code in BY_CODE else _UNKNOWN_COLOUR


def compact_count(n: float) -> str:
    """A count in at most three significant digits: 950, 12.3k, 4.56M."""
    value, suffix = float(n), ""
    for bigger in ("k", "M", "G"):
        if abs(value) < 999.5:
            break
        value, suffix = value / 1000, bigger
    return f"{value:.3g}{suffix}"


def new_figure(width: float, height: float) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, table: pd.DataFrame, path: Path, formats: Sequence[str]) -> Path:
    """Write ``table`` to ``<stem>.csv`` and the figure in each format; the first figure's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path.with_suffix(".csv"))
    outputs = [path.with_suffix(f".{fmt.lstrip('.')}") for fmt in formats]
    for out in outputs:
        fig.savefig(out, dpi=_DPI, bbox_inches="tight")
    return outputs[0]


def _colour_strip(ax: Axes, codes: Sequence[int], names: Sequence[str], vertical: bool) -> None:
    """Class colours as a strip of patches, labelled with the class names."""
    rgb = np.array([to_rgb(class_colour(c)) for c in codes])
    ax.imshow(rgb[:, None] if vertical else rgb[None, :], aspect="auto")
    ticks = np.arange(len(codes))
    if vertical:
        ax.set_xticks([])
        ax.set_yticks(ticks, names)
    else:
        ax.set_yticks([])
        ax.set_xticks(ticks, names, rotation=40, ha="right", rotation_mode="anchor")
    ax.tick_params(length=0, labelsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_confusion_matrix(
    cm: np.ndarray,
    codes: Sequence[int],
    path: Path,
    *,
    normalise: bool,
    title: str,
    formats: Sequence[str] = ("png",),
    drop_absent: bool = True,
) -> Path:
    """Heatmap of a confusion matrix, rows = reference, columns = map.

    Counts are shown compactly (12.3k) on a log colour scale; ``normalise`` shows each
    reference row as fractions of its pixels (0-1; blank for a row without pixels). Classes
    absent from both reference and map are left out unless ``drop_absent=False``. Each class
    carries its WorldCover colour as a patch beside its name.
    """
    cm = np.asarray(cm, dtype=np.int64)
    keep = (cm.sum(axis=0) + cm.sum(axis=1) > 0) | (not drop_absent)
    if not keep.any():
        raise ValueError(f"nothing to plot in {path}: the confusion matrix has no pixels")
    cm, codes = cm[np.ix_(keep, keep)], [int(c) for c, k in zip(codes, keep) if k]
    names = [class_name(c) for c in codes]
    if normalise:
        rows = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)
        labels = np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.2f}")(values)
        scale = {"vmin": 0.0, "vmax": 1.0, "cbar_kws": {"label": "fraction of reference pixels"}}
    else:
        values = cm
        labels = np.vectorize(compact_count)(values)
        scale = {"norm": LogNorm(vmin=1, vmax=max(int(cm.max()), 10)), "cbar_kws": {"label": "pixels"}}
    table = pd.DataFrame(values, index=pd.Index(names, name="reference \\ map"), columns=names)

    side = 1.6 + 0.62 * len(codes)
    fig, ax = new_figure(side + 1.2, side)
    divider = make_axes_locatable(ax)
    left = divider.append_axes("left", size=0.16, pad=0.04)
    bottom = divider.append_axes("bottom", size=0.16, pad=0.04)
    cax = divider.append_axes("right", size=0.18, pad=0.12)
    sns.heatmap(
        table, ax=ax, cbar_ax=cax, annot=labels, fmt="", cmap="Blues", square=True,
        linewidths=0.5, linecolor="white", annot_kws={"fontsize": 8}, **scale,
    )
    ax.set(xticks=[], yticks=[], xlabel="", ylabel="", title=title)
    _colour_strip(left, codes, names, vertical=True)
    _colour_strip(bottom, codes, names, vertical=False)
    left.set_ylabel("Reference")
    bottom.set_xlabel("Map")
    return save_figure(fig, table, path, formats)


def scale_losses(ax: Axes, values: Sequence[float]) -> str:
    """A log scale for the loss axis when one value dwarfs the rest (an early val loss of 10^5
    would flatten every other curve into the x-axis); the scale chosen."""
    finite = [v for v in values if np.isfinite(v) and v > 0]
    scale = "log" if finite and max(finite) / min(finite) > 50 else "linear"
    ax.set_yscale(scale)
    ax.set_ylabel("loss (log scale)" if scale == "log" else "loss")
    return scale


def plot_learning_curves(history: Sequence[dict], path: Path, formats: Sequence[str] = ("png",),
                         *, title: str = "Learning curves") -> Path:
    """Loss (train and val) and val mIoU per epoch of one run."""
    table = pd.DataFrame(history).set_index("epoch")
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(9, 3.6))
        FigureCanvasAgg(fig)
        loss_ax, miou_ax = fig.subplots(1, 2)
    losses = [c for c in ("train_loss", "val_loss") if c in table]
    for column in losses:
        loss_ax.plot(table.index, table[column], "-" if column == "train_loss" else "--", marker="o", ms=3,
                     label=column.replace("_", " "))
    loss_ax.set(xlabel="epoch", title="loss")
    scale_losses(loss_ax, table[losses].to_numpy().ravel().tolist() if losses else [])
    loss_ax.legend()
    if "val_miou" in table:
        miou_ax.plot(table.index, table["val_miou"], marker="o", ms=3, color="#006400", label="val mIoU")
        best = table["val_miou"].idxmax()
        miou_ax.axvline(best, color="grey", lw=0.8, ls=":", label=f"best (epoch {best})")
    miou_ax.set(xlabel="epoch", ylabel="macro mIoU", title="validation mIoU", ylim=(0, 1))
    miou_ax.legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, table, path, formats)


def plot_study(study, folder: Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """Optuna's optimisation history, parameter importances, parallel coordinates and slice
    plots of a study (each skipped when the study has too few complete trials for it)."""
    import warnings

    import optuna
    import optuna.visualization.matplotlib as ov

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    plots = {"optimization_history": ov.plot_optimization_history}
    if len(complete) >= 2:
        plots |= {"parallel_coordinates": ov.plot_parallel_coordinate, "slice": ov.plot_slice}
    if len(complete) >= 3 and len({tuple(sorted(t.params.items())) for t in complete}) > 1:
        plots["param_importances"] = ov.plot_param_importances
    written = []
    for name, plot in plots.items():
        with warnings.catch_warnings():  # optuna marks its matplotlib backend experimental
            warnings.simplefilter("ignore")
            axes = plot(study)
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        fig = first.figure
        for fmt in formats:
            path = Path(folder) / f"study_{name}.{fmt}"
            fig.savefig(path, dpi=_DPI // 2, bbox_inches="tight")
            written.append(path)
        import matplotlib.pyplot as plt

        plt.close(fig)
    return written


def _read_preview(path: Path, max_pixels: int = 1024) -> tuple[np.ndarray, float]:
    """A class raster decimated (nearest) to at most ``max_pixels`` a side, and its pixel size in m."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        factor = max(1, int(np.ceil(max(src.width, src.height) / max_pixels)))
        shape = (max(1, src.height // factor), max(1, src.width // factor))
        array = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        return array, abs(src.transform.a) * src.width / shape[1]


def _class_rgb(codes: np.ndarray) -> np.ndarray:
    lut = np.ones((256, 4))
    lut[0] = (1, 1, 1, 0)
    for code, cls in BY_CODE.items():
        lut[code, :3] = to_rgb(cls.colour)
    return lut[codes]


def _scale_bar(ax: Axes, pixel_m: float, width_px: int) -> None:
    """A bar of a round length (1, 2 or 5 x 10^k m), about a fifth of the image wide."""
    target = pixel_m * width_px / 5
    length = min((m * 10**k for k in range(0, 7) for m in (1, 2, 5)), key=lambda v: abs(v - target))
    px = length / pixel_m
    x0, y0 = width_px * 0.04, ax.get_ylim()[0] * 0.95
    ax.plot([x0, x0 + px], [y0, y0], color="black", lw=3, solid_capstyle="butt")
    ax.text(x0 + px / 2, y0 * 0.985, f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m",
            ha="center", va="bottom", fontsize=8, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})


def _legend(ax: Axes, codes: Sequence[int]) -> None:
    handles = [Patch(facecolor=class_colour(c), edgecolor="0.4", label=class_name(c)) for c in codes]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def plot_map_quicklook(map_tif: Path, path: Path, formats: Sequence[str] = ("png",)) -> Path:
    """The map in WorldCover colours with its legend and a scale bar."""
    array, pixel_m = _read_preview(map_tif)
    codes = [int(c) for c in np.unique(array) if c in BY_CODE]
    fig, ax = new_figure(8, 7)
    ax.imshow(_class_rgb(array), interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(Path(map_tif).name)
    _scale_bar(ax, pixel_m, array.shape[1])
    _legend(ax, codes)
    table = pd.DataFrame({"code": codes, "pixels_in_preview": [int((array == c).sum()) for c in codes]}).set_index("code")
    return save_figure(fig, table, path, formats)


def plot_map_comparison(map_tif: Path, truth_tif: Path, path: Path, formats: Sequence[str] = ("png",)) -> Path:
    """Map, ground truth and the error map side by side, with legend and scale bar."""
    predicted, pixel_m = _read_preview(map_tif)
    truth, _ = _read_preview(truth_tif)
    both = (predicted > 0) & (truth > 0)
    errors = np.zeros((*truth.shape, 4))
    errors[both & (predicted == truth)] = (0.85, 0.85, 0.85, 1)
    errors[both & (predicted != truth)] = (0.8, 0.1, 0.1, 1)
    codes = [int(c) for c in np.union1d(np.unique(predicted), np.unique(truth)) if c in BY_CODE]
    fig = Figure(figsize=(16, 5.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    accuracy = (predicted[both] == truth[both]).mean() if both.any() else float("nan")
    for ax, image, title in ((axes[0], _class_rgb(predicted), "map"), (axes[1], _class_rgb(truth), "ground truth"),
                             (axes[2], errors, f"errors (red; agreement {accuracy:.1%} in this preview)")):
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title)
        _scale_bar(ax, pixel_m, image.shape[1])
    _legend(axes[1], codes)
    fig.tight_layout()
    table = pd.DataFrame({"preview_pixels": [int(both.sum())], "agreeing": [int((predicted[both] == truth[both]).sum())]})
    return save_figure(fig, table, path, formats)


def plot_curves_overlay(curves: pd.DataFrame, names: dict[str, str], path: Path,
                        formats: Sequence[str] = ("png",)) -> Path:
    """Loss (train solid, val dashed) and val mIoU per epoch of several runs, overlaid."""
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(11, 4))
        FigureCanvasAgg(fig)
        loss_ax, miou_ax = fig.subplots(1, 2)
    palette = dict(zip(names, sns.color_palette("colorblind", len(names))))
    for run_id, label in names.items():
        run = curves[curves.run_id == run_id]
        for metric, ax, style in (("train_loss", loss_ax, "-"), ("val_loss", loss_ax, "--"), ("val_miou", miou_ax, "-")):
            part = run[run.metric == metric].sort_values("epoch")
            ax.plot(part.epoch, part.value, style, color=palette[run_id], marker="o", ms=3,
                    label=label if metric != "val_loss" else None)
    loss_ax.set(xlabel="epoch", title="loss (train solid, val dashed)")
    scale_losses(loss_ax, curves[curves.metric.isin(["train_loss", "val_loss"])].value.tolist())
    miou_ax.set(xlabel="epoch", ylabel="val macro mIoU", title="validation mIoU", ylim=(0, 1))
    miou_ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    table = curves.assign(trial=curves.run_id.map(names)).set_index(["trial", "metric", "epoch"])["value"].unstack("metric")
    return save_figure(fig, table, path, formats)


def plot_choices(trials: pd.DataFrame, columns: Sequence[str], path: Path, formats: Sequence[str] = ("png",)) -> Path:
    """Val mIoU of every trial by the value of each categorical choice; pruned trials marked."""
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(4 * len(columns), 4))
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(columns), sharey=True))
    for ax, column in zip(axes, columns):
        data = trials[trials[column].notna()]
        order = sorted(data[column].astype(str).unique())
        complete = data[data.state == "COMPLETE"]
        if len(complete):
            sns.boxplot(data=complete, x=complete[column].astype(str), y="val_miou", order=order, ax=ax, color="0.9",
                        showfliers=False, width=0.5)
        sns.stripplot(data=data, x=data[column].astype(str), y="val_miou", order=order, hue="state", ax=ax,
                      palette={"COMPLETE": "#006400", "PRUNED": "#fa0000", "FAIL": "#808080"}, size=6, jitter=0.15,
                      marker="o", legend=ax is axes[-1])
        ax.set(xlabel=column, ylabel="val macro mIoU")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return save_figure(fig, trials[["trial", "state", "val_miou", *columns]].set_index("trial"), path, formats)


def plot_class_scores(metrics: dict, path: Path, formats: Sequence[str] = ("png",), *, title: str = "") -> Path:
    """IoU and F1 per class (bars in WorldCover colours) with the macro means as lines."""
    rows = [{"code": int(code), "name": c["name"], "IoU": c["iou"], "F1": c["f1"]}
            for code, c in metrics["per_class"].items() if c["iou"] is not None]
    table = pd.DataFrame(rows).set_index("code")
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(10, 4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2, sharey=True)
    for ax, score, macro in ((axes[0], "IoU", metrics["miou"]), (axes[1], "F1", metrics["macro_f1"])):
        x = np.arange(len(table))
        ax.bar(x, table[score], color=[class_colour(c) for c in table.index], edgecolor="0.3", linewidth=0.6)
        ax.axhline(macro, color="black", ls="--", lw=1, label=f"macro {macro:.3f}")
        ax.set_xticks(x, table["name"], rotation=35, ha="right", rotation_mode="anchor")
        ax.set(ylim=(0, 1), ylabel=score, title=f"{title}: {score}" if title else score)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, table, path, formats)
