"""Figures of a map's class areas and accuracies: the sample-based estimates with their 95%
intervals, and the wall-to-wall areas of map and reference (pixel counts, no intervals)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from lc.figures import class_colour, new_figure, save_figure

_HOLLOW = {"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"}


def _class_axis(ax: Axes, names: Sequence[str], xlabel: str, title: str) -> None:
    ax.set_yticks(np.arange(len(names)), names)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    ax.grid(axis="x", linewidth=0.4, alpha=0.6)
    ax.set_axisbelow(True)


def _legend(ax: Axes, handles: list) -> None:
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def plot_area_estimates(areas: dict, path: Path, formats: Sequence[str] = ("png",), *,
                        title: str = "Class areas estimated from the sample (95% CI)") -> Path:
    """Bars of the estimated area per class (ha) with its 95% CI, and the mapped area (diamonds).

    ``areas`` is the dict of :func:`lc.mapping.areas.area_estimates`. Classes with neither mapped
    nor estimated area are left out; bars are in the class order of ``areas``.
    """
    rows = [{"code": int(code), "name": c["name"], "mapped_ha": c["mapped_area_ha"],
             "estimated_ha": c["area_ha"]["estimate"], "ci95_low_ha": c["area_ha"]["ci95"][0],
             "ci95_high_ha": c["area_ha"]["ci95"][1]}
            for code, c in areas["per_class"].items() if c["mapped_pixels"] > 0 or (c["area_ha"]["estimate"] or 0) > 0]
    columns = ["code", "name", "mapped_ha", "estimated_ha", "ci95_low_ha", "ci95_high_ha"]
    table = pd.DataFrame(rows, columns=columns).set_index("code").astype({c: float for c in columns[2:]})
    y = np.arange(len(table))
    est = table["estimated_ha"].to_numpy()
    err = np.nan_to_num([est - table["ci95_low_ha"].to_numpy(), table["ci95_high_ha"].to_numpy() - est])
    fig, ax = new_figure(7.0, 1.2 + 0.45 * max(len(table), 1))
    ax.barh(y, est, color=[class_colour(c) for c in table.index], edgecolor="0.3", linewidth=0.6,
            xerr=err, error_kw={"ecolor": "black", "capsize": 3, "linewidth": 1})
    ax.plot(table["mapped_ha"], y, linestyle="none", markersize=5, zorder=3, **_HOLLOW)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _class_axis(ax, table["name"], "area (ha)", title)
    _legend(ax, [Patch(facecolor="0.85", edgecolor="0.3", label="estimated, with 95% CI"),
                 Line2D([], [], linestyle="none", label="mapped", **_HOLLOW)])
    return save_figure(fig, table, path, formats)


def plot_class_areas(agreement: dict, path: Path, formats: Sequence[str] = ("png",), *,
                     title: str = "Class areas: map and reference, every pixel") -> Path:
    """Mapped and reference area per class (ha) of a wall-to-wall comparison: two counts, no
    intervals (``agreement`` is the dict of :func:`lc.mapping.accuracy.evaluate_rasters`)."""
    rows = [{"code": int(code), "name": c["name"], "mapped_ha": c["mapped_ha"], "reference_ha": c["reference_ha"]}
            for code, c in agreement["class_areas"].items() if c["mapped_pixels"] or c["reference_pixels"]]
    table = pd.DataFrame(rows, columns=["code", "name", "mapped_ha", "reference_ha"]).set_index("code")
    y = np.arange(len(table))
    fig, ax = new_figure(7.0, 1.2 + 0.45 * max(len(table), 1))
    colours = [class_colour(c) for c in table.index]
    ax.barh(y - 0.2, table["mapped_ha"], height=0.4, color=colours, edgecolor="0.3", linewidth=0.6)
    ax.barh(y + 0.2, table["reference_ha"], height=0.4, color=colours, edgecolor="0.3", linewidth=0.6,
            hatch="////", alpha=0.6)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    _class_axis(ax, table["name"], "area (ha)", title)
    _legend(ax, [Patch(facecolor="0.85", edgecolor="0.3", label="map"),
                 Patch(facecolor="0.85", edgecolor="0.3", hatch="////", label="reference")])
    return save_figure(fig, table, path, formats)


def plot_sample_accuracy(assessment: dict, path: Path, formats: Sequence[str] = ("png",), *,
                         title: str = "Accuracy estimated from the sample (95% CI)") -> Path:
    """User's and producer's accuracy per class with 95% CIs, overall accuracy as a band
    (``assessment`` is the dict of :func:`lc.mapping.sampled.assess_sample`)."""
    rows = []
    for code, c in assessment["per_class"].items():
        if not c["sample_count"] and not (c["area_ha"]["estimate"] or 0):
            continue
        row = {"code": int(code), "name": c["name"], "sample_count": c["sample_count"]}
        for measure in ("users_accuracy", "producers_accuracy"):
            est, (low, high) = c[measure]["estimate"], c[measure]["ci95"]
            row |= {measure: est, f"{measure}_ci95_low": low, f"{measure}_ci95_high": high}
        rows.append(row)
    table = pd.DataFrame(rows).set_index("code")
    overall = assessment["overall_accuracy"]
    y = np.arange(len(table))
    fig, ax = new_figure(7.0, 1.4 + 0.45 * max(len(table), 1))
    low, high = overall["ci95"]
    ax.axvspan(low, high, color="0.88", zorder=0)
    ax.axvline(overall["estimate"], color="0.4", linewidth=1, zorder=1)
    for offset, measure, marker in ((-0.15, "users_accuracy", "o"), (0.15, "producers_accuracy", "s")):
        est = table[measure].astype(float).to_numpy()
        err = np.nan_to_num([est - table[f"{measure}_ci95_low"].astype(float).to_numpy(),
                             table[f"{measure}_ci95_high"].astype(float).to_numpy() - est])
        ax.errorbar(est, y + offset, xerr=err, fmt=marker, color="black", markerfacecolor="white" if marker == "s"
                    else "black", capsize=3, linewidth=1, markersize=5, zorder=3)
    ax.set_xlim(0, 1.05)
    _class_axis(ax, table["name"], "accuracy", title)
    _legend(ax, [Line2D([], [], marker="o", linestyle="none", color="black", label="user's (1 − commission)"),
                 Line2D([], [], marker="s", linestyle="none", color="black", markerfacecolor="white",
                        label="producer's (1 − omission)"),
                 Patch(facecolor="0.88", edgecolor="0.4", label=f"overall {overall['estimate']:.3f} (95% CI)")])
    return save_figure(fig, table, path, formats)
