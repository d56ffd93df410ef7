"""``lc report``: the figures and the report of a study and of the map of the new area.

Everything is read back from where the pipeline left it: the Optuna study (trials,
parameters, states), MLflow (per-epoch curves and evaluation of the trials' runs) and the
evaluation files written beside the map. Each figure is written as PNG and SVG with the
table it shows as CSV; ``report.md`` and a self-contained ``report.html`` embed them.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd

from lc import figures
from lc.mapping.area_figures import plot_area_estimates, plot_class_areas, plot_sample_accuracy
from lc.mapping.baseline import find_baseline
from lc.mapping.sampled import assessment_path
from lc.tracking import store
from lc.tracking.refit import chosen_model, finalists, recorded_refit, trial_score
from lc.tracking.space import StudySpec, load_spec
from lc.tracking.storage import default_storage, existing_study

FORMATS = ("png", "svg")
CODE_SPAN = re.compile(r"`([^`]*)`")
COMPARED = ("model.encoder", "train.loss", "data.augmentation", "data.harmonisation")


@dataclass
class Report:
    """What the report shows, figure by figure, with the numbers of its tables."""

    title: str
    sections: list[tuple[str, str, list[Path]]] = field(default_factory=list)  # (heading, text, figures)

    def add(self, heading: str, text: str, *paths: Path | None) -> None:
        self.sections.append((heading, text, [f for f in paths if f is not None]))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, val mIoU, params, test mIoU, seconds, MLflow run."""
    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name, "val_miou": t.value,
                     **{k.split("@")[0]: v for k, v in t.params.items()},
                     "test_miou": t.user_attrs.get("test_miou"), "seconds": t.user_attrs.get("seconds"),
                     "run_id": t.user_attrs.get("mlflow_run_id"), "error": t.user_attrs.get("error")})
    return pd.DataFrame(rows)


def curves(run_ids: list[str]) -> pd.DataFrame:
    """Per-epoch train/val loss and val mIoU of MLflow runs, long format."""
    client = mlflow.MlflowClient()
    rows = []
    for run_id in run_ids:
        for key in ("train_loss", "val_loss", "val_miou"):
            rows += [{"run_id": run_id, "metric": key, "epoch": m.step, "value": m.value}
                     for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(rows, columns=["run_id", "metric", "epoch", "value"])


def _run_json(run_id: str, name: str) -> dict | None:
    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{name}"))
    except Exception:  # noqa: BLE001 - an absent artifact just leaves the figure out
        return None


def _md_table(df: pd.DataFrame, floats: str = "{:.3f}") -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if np.isnan(v) else floats.format(v)
        return "" if v is None else str(v)

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def study_section(report: Report, study: optuna.Study, table: pd.DataFrame, out: Path, top: int) -> pd.Series | None:
    """Learning curves of the best trials, study comparison figures; returns the best trial row."""
    complete = table[table.state == "COMPLETE"].sort_values("val_miou", ascending=False)
    counts = table.state.value_counts().to_dict()
    text = (f"{len(table)} trials: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items()) + ". "
            "Objective: validation macro mIoU (the test split never selects).")
    best = complete.iloc[0] if len(complete) else None
    if best is not None:
        text += f" Best: trial {int(best.trial)}, val mIoU {best.val_miou:.3f}, test mIoU {best.test_miou or float('nan'):.3f}."
    shown = complete.head(top)
    columns = ["trial", "state", "val_miou", "test_miou", *[c for c in COMPARED if c in table], "seconds"]
    report.add("Study", text + "\n\n" + _md_table(shown[columns]))
    runs = [r for r in shown.run_id if isinstance(r, str)]
    if runs:
        names = {r: f"trial {int(t)}" for r, t in zip(shown.run_id, shown.trial)}
        report.add("Learning curves of the best trials", "Loss and validation mIoU per epoch.",
                   figures.plot_curves_overlay(curves(runs), names, out / "learning_curves", FORMATS))
    history = figures.plot_study(study, out, FORMATS)
    report.add("Optimisation", "History, parameter importances (fANOVA), parallel coordinates and slices.",
               *[f for f in history if f.suffix == ".png"])
    report.add("Validation mIoU by choice", "Each dot a trial; pruned trials are shown at their last reported value.",
               figures.plot_choices(_with_pruned_values(study, table), [c for c in COMPARED if c in table],
                                  out / "miou_by_choice", FORMATS))
    return best


def _with_pruned_values(study: optuna.Study, table: pd.DataFrame) -> pd.DataFrame:
    last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in study.trials if t.intermediate_values}
    table = table.copy()
    table["val_miou"] = [v if s == "COMPLETE" else last.get(n) for n, s, v in zip(table.trial, table.state, table.val_miou)]
    return table[table.val_miou.notna()]


def refit_section(report: Report, spec: StudySpec, study: optuna.Study) -> tuple[str, str]:
    """The refits of the study's finalists, where it made them; returns the (run id, name) of the study's model."""
    trials = finalists(spec, study)
    refits = [recorded_refit(study, t) for t in trials]
    trial, chosen = chosen_model(trials, refits)
    name = f"{'refit of trial' if chosen is refits[trials.index(trial)] else 'trial'} {trial.number}"
    roles = ["", " (the experiment's recipe)"]
    lines = [f"Trial {t.number}{role} retrained with {_settings(r.settings)} ({r.epochs} epochs, {r.seconds:.0f} s): "
             f"val mIoU {r.val_miou:.3f} (the trial: {trial_score(t)}), test mIoU {r.test_miou:.3f}."
             for t, r, role in zip(trials, refits, roles) if r is not None]
    if lines:
        report.add("Refits before registration", " ".join(lines) + f" The {name} is the study's model.")
    return chosen.run_id, name


def _settings(settings: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in settings.items()) or "the space's refit settings"


def model_section(report: Report, run_id: str, name: str, out: Path) -> None:
    """The study's model on validation: confusion matrices and per-class IoU/F1."""
    metrics = _run_json(run_id, "metrics_val.json") if isinstance(run_id, str) else None
    if metrics is None:
        return
    cm, codes = np.asarray(metrics["confusion_matrix"]), metrics["class_order"]
    matrices = [figures.plot_confusion_matrix(cm, codes, out / f"confusion_validation{s}", normalise=n, formats=FORMATS,
                                           title=f"validation, {name}{' (row-normalised)' if n else ''}")
               for s, n in (("", False), ("_normalised", True))]
    bars = figures.plot_class_scores(metrics, out / "class_scores_validation", FORMATS, title=f"{name}, validation")
    report.add(f"The study's model on validation ({name})", _metric_line(metrics) + "\n\n" + _class_table(metrics), *matrices, bars)


def baseline_section(report: Report, run_id: str, name: str, map_tif: Path | None) -> None:
    """Does context pay? The study's model beside per-pixel gradient boosting on the same splits,
    with the same harmonisation: on validation, on test and on the mapped area."""
    run = mlflow.MlflowClient().get_run(run_id)
    harmonisation, key = run.data.params.get("data.harmonisation"), run.data.tags.get("split_key")
    experiment = mlflow.get_experiment(run.info.experiment_id).name
    baseline = find_baseline(experiment, key, harmonisation) if key else None
    heading = "The U-Net against the per-pixel baseline"
    if baseline is None:
        report.add(heading, f"No per-pixel baseline on these splits with `{harmonisation}` harmonisation: run "
                            f"`make baseline` (`lc baseline CONFIG --model MODEL`) and make the report again.")
        return
    gbm = mlflow.MlflowClient().get_run(baseline).data.metrics
    unet = run.data.metrics
    rows = [("validation", unet.get("best_val_miou"), gbm.get("best_val_miou")),
            ("test", unet.get("test_miou"), gbm.get("test_miou"))]
    metrics_path = map_tif.with_name(map_tif.stem + ".metrics.json") if map_tif else None
    if metrics_path is not None and metrics_path.exists() and "new_area_miou" in gbm:
        rows.append(("mapped area", json.loads(metrics_path.read_text())["miou"], gbm["new_area_miou"]))
    table = pd.DataFrame([{"evaluated on": where, f"U-Net ({name})": u, "gradient boosting": g,
                           "difference": (u - g) if u is not None and g is not None else None} for where, u, g in rows])
    report.add(heading, f"Macro mIoU of the study's model and of per-pixel gradient boosting (run `{baseline}`) "
                        f"on the same pixels, both with `{harmonisation}` harmonisation. A positive difference is "
                        f"what the U-Net's spatial context earns.\n\n" + _md_table(table))


def _metric_line(m: dict) -> str:
    """The headline numbers, naming the classes the means run over; with a map's metrics of the
    model's classes alone where these differ (training scores only those)."""
    codes = ", ".join(map(str, m["miou_classes"]))
    line = (f"Agreement with the reference at every pixel: overall {m['overall_accuracy']:.3f}, macro mIoU {m['miou']:.3f}, macro F1 {m['macro_f1']:.3f}, "
            f"kappa {m['kappa']:.3f} over {m['n_pixels']:,} pixels; the means run over classes {codes}.")
    own = m.get("model_classes_metrics")
    if own and own["miou_classes"] != m["miou_classes"]:
        line += (f" Over the classes the model can predict ({', '.join(map(str, own['miou_classes']))}), as training "
                 f"scores them: macro mIoU {own['miou']:.3f}, overall accuracy {own['overall_accuracy']:.3f}.")
    return line


def _class_table(m: dict) -> str:
    rows = [{"class": c["name"], "IoU": c["iou"], "F1": c["f1"], "precision": c["precision"], "recall": c["recall"],
             "support": c["support"]} for c in m["per_class"].values() if c["support"] or c["predicted"]]
    return _md_table(pd.DataFrame(rows))


def map_section(report: Report, map_tif: Path, out: Path) -> None:
    """The new area: agreement with the reference map at every pixel, then, where a sample of the
    map was assessed (``lc evaluate --points``), accuracy and class areas estimated from it."""
    metrics_path = map_tif.with_name(map_tif.stem + ".metrics.json")
    truth = map_tif.with_name(map_tif.stem + ".truth.tif")
    if not metrics_path.exists() or not truth.exists():
        report.add("New area", f"{map_tif}: no evaluation found (run `lc predict … --worldcover …`).")
        return
    m = json.loads(metrics_path.read_text())
    cm, codes = np.asarray(m["confusion_matrix"]), m["class_order"]
    comparison = figures.plot_map_comparison(map_tif, truth, out / "new_area_map", FORMATS)
    matrices = [figures.plot_confusion_matrix(cm, codes, out / f"confusion_new_area{s}", normalise=n, formats=FORMATS,
                                           title=f"new area{' (row-normalised)' if n else ''}")
               for s, n in (("", False), ("_normalised", True))]
    bars = figures.plot_class_scores(m, out / "class_scores_new_area", FORMATS, title="New area")
    areas = plot_class_areas(m, out / "class_areas", FORMATS)
    area_rows = [{"class": c["name"], "map ha": c["mapped_ha"], "reference ha": c["reference_ha"]}
                 for c in m["class_areas"].values() if c["mapped_pixels"] or c["reference_pixels"]]
    report.add("New area: map, reference and their disagreement", f"{map_tif.name}. " + _metric_line(m), comparison)
    report.add("New area: agreement with the reference map, every pixel",
               "WorldCover is itself a map (about 77% accurate in ESA's own validation), so these numbers are the "
               "agreement of two maps, not the map's accuracy; for that, see the sample-based estimates.\n\n"
               + _class_table(m), *matrices, bars)
    report.add("New area: class areas of map and reference (pixel counts, no intervals)",
               _md_table(pd.DataFrame(area_rows), "{:,.1f}"), areas)
    sample_section(report, assessment_path(map_tif), out, name="new area")


def sample_section(report: Report, assessment: Path, out: Path, name: str) -> None:
    """Accuracy and areas with 95% intervals from a sample of reference points of ``name``."""
    heading = f"{name[0].upper()}{name[1:]}: accuracy and class areas estimated from a sample"
    if not assessment.exists():
        report.add(heading, "No sample of this map was assessed: `lc sample MAP --n 1000 --out points.gpkg`, label "
                            "the points, then `lc evaluate MAP --points points.gpkg` (`make predict` does it with "
                            "WorldCover as the reference).")
        return
    a = json.loads(assessment.read_text())
    oa = a["overall_accuracy"]
    shown = [c for c in a["per_class"].values() if c["sample_count"] or (c["area_ha"]["estimate"] or 0) > 0]
    accuracy = pd.DataFrame([{"class": c["name"], "points": c["sample_count"],
                              "user's accuracy": c["users_accuracy"]["estimate"], "UA ± 95%": _half(c["users_accuracy"]),
                              "producer's accuracy": c["producers_accuracy"]["estimate"],
                              "PA ± 95%": _half(c["producers_accuracy"])} for c in shown])
    areas = pd.DataFrame([{"class": c["name"], "map ha": c["mapped_area_ha"], "estimated ha": c["area_ha"]["estimate"],
                           "± 95% ha": _half(c["area_ha"])} for c in shown])
    left_out = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in a["excluded"].items() if v) or "none"
    text = (f"{a['n_used']} of {a['n_points']} points, {a['design']}. Reference: {a['reference_source']}. Points left "
            f"out: {left_out}. Estimator of Olofsson et al. (2014); intervals are estimate ± 1.96 SE. "
            f"**Overall accuracy {oa['estimate']:.3f} ± {_half(oa):.3f}.** Where the reference is WorldCover these "
            f"estimate agreement with WorldCover, now from a probability sample with honest intervals.\n\n"
            + _md_table(accuracy) + "\n\n" + _md_table(areas, "{:,.1f}"))
    stem = out / f"{name.replace(' ', '_')}_sample"
    report.add(heading, text, plot_sample_accuracy(a, Path(f"{stem}_accuracy"), FORMATS),
               plot_area_estimates(a, Path(f"{stem}_areas"), FORMATS))


def _half(interval: dict) -> float | None:
    low, high = interval["ci95"]
    return None if low is None or high is None else (high - low) / 2


def region_section(report: Report, maps: Path, out: Path) -> None:
    """A mapped region (``lc map``): each product's state, the mosaics and the region's agreement."""
    state_path = maps / "region.json"
    if not state_path.exists():
        report.add("Region", f"{maps}: no region.json (run `lc map REGION.yaml`).")
        return
    state = json.loads(state_path.read_text())
    rows = [{"product": name, "state": e["status"] + (" (kept)" if e.get("skipped") else ""),
             "seconds": e.get("seconds"), "mIoU vs WorldCover": e.get("miou"), "error": e.get("error", "")}
            for name, e in state["products"].items()]
    quicklooks = []
    for vrt in map(Path, state.get("mosaics", [])):
        if vrt.with_suffix(".png").exists():
            quicklooks.append(shutil.copy(vrt.with_suffix(".png"), out / f"region_{vrt.stem}.png"))
    text = (f"Region {state['region']}: {len(rows)} products mapped with {state['model']} (version "
            f"{state.get('model_version', '?')}), one task each on Dask; a VRT mosaic per CRS.\n\n"
            + _md_table(pd.DataFrame(rows)))
    metrics_path = maps / "region.metrics.json"
    if metrics_path.exists():
        m = json.loads(metrics_path.read_text())
        text += (f"\n\nThe whole region against WorldCover, every place counted once ({m['rule']}). "
                 + _metric_line(m) + "\n\n" + _class_table(m))
    report.add("Region", text, *map(Path, quicklooks))
    if (maps / "region.assessment.json").exists():
        sample_section(report, maps / "region.assessment.json", out, name="region")


def write_markdown(report: Report, out: Path) -> Path:
    lines = [f"# {report.title}", ""]
    for heading, text, paths in report.sections:
        lines += [f"## {heading}", "", text, ""]
        lines += [f"![{f.stem}]({f.name})" for f in paths if f.suffix == ".png"] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_html(report: Report, out: Path) -> Path:
    """A single HTML file: tables rendered, figures embedded as base64 PNG."""
    def table_html(text: str) -> str:
        blocks, html = text.split("\n\n"), []
        for block in blocks:
            rows = [r for r in block.splitlines() if r.startswith("|") and not r.startswith("|---")]
            if rows:
                cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
                head = "".join(f"<th>{c}</th>" for c in cells[0])
                body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
                html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            else:
                html.append("<p>" + CODE_SPAN.sub(r"<code>\1</code>", block) + "</p>")
        return "".join(html)

    parts = [f"<h1>{report.title}</h1>"]
    for heading, text, paths in report.sections:
        parts.append(f"<h2>{heading}</h2>{table_html(text)}")
        for f in paths:
            if f.suffix == ".png":
                data = base64.b64encode(f.read_bytes()).decode()
                parts.append(f'<figure><img alt="{f.stem}" src="data:image/png;base64,{data}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "img{max-width:100%}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:2px 8px;text-align:right}th{background:#f3f3f3}")
    path = out / "report.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{report.title}</title>"
                    f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return path


def build_report(space: Path, out: Path | None = None, map_tif: Path | None = None, study_name: str | None = None,
                 storage: str | None = None, top: int = 5, region: Path | None = None) -> Path:
    """Write every figure, report.md and report.html; returns the report folder."""
    store.configure()
    spec = load_spec(space)
    study = existing_study(spec, storage or default_storage(spec), study_name)
    out = Path(out or Path("reports") / study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(study)
    table.to_csv(out / "trials.csv", index=False)
    report = Report(f"landcover report: study {study.study_name}")
    best = study_section(report, study, table, out, top) if len(table) else None
    if best is not None:
        run_id, name = refit_section(report, spec, study)
        model_section(report, run_id, name, out)
        if isinstance(run_id, str):
            baseline_section(report, run_id, name, Path(map_tif) if map_tif else None)
    if map_tif is not None:
        map_section(report, Path(map_tif), out)
    if region is not None:
        region_section(report, Path(region), out)
    write_markdown(report, out)
    write_html(report, out)
    return out
