"""A saved view of MLflow's experiment page: one study's trials, their useful columns, best first.

MLflow 3's UI restores a view from the experiment tag ``mlflow.sharedViewState.<key>`` when a
link carries ``viewStateShareKey=<key>``: what its *Share* button saves. The view holds the
search (filter, sort), the table's columns and which charts show; ``compareRunsMode=CHART`` in
the same link opens the chart view, whose line charts overlay a metric's curve per epoch across
the runs shown. ``workflowType=machine_learning`` keeps the UI on model training, not its GenAI
pages (the UI otherwise remembers the last choice in the browser, GenAI at first).
Writing the view changes only that experiment tag, never a run, study or model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlflow

SHARED_VIEW_TAG = "mlflow.sharedViewState."
TRIAL_COLUMNS = (("metrics", "best_val_miou"), ("metrics", "val_miou"), ("metrics", "test_miou"),
                 ("params", "model.encoder"), ("params", "train.loss"), ("params", "data.augmentation"),
                 ("params", "data.harmonisation"), ("params", "train.lr"), ("tags", "state"))
TRIAL_CHARTS = "val_miou|val_area_miou|loss"  # a regular expression over metric names: of 60-odd charts, the curves that compare trials


def column(kind: str, key: str) -> str:
    """A column as MLflow's UI names it: ``metrics.`best_val_miou```."""
    return f"{kind}.`{key}`"


@dataclass(frozen=True)
class TrialsView:
    experiment_id: str
    key: str
    state: dict

    def table(self, base: str) -> str:
        return f"{base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={self.key}"

    def charts(self, base: str) -> str:
        return f"{self.table(base)}&compareRunsMode=CHART"


def trials_view(experiment: str, study: str) -> TrialsView | None:
    """Save the view of ``study``'s trial runs in ``experiment`` (None when the experiment has no runs yet)."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    quoted = study.replace("'", "\\'")
    state = {"searchFilter": f"tags.optuna_study = '{quoted}' AND tags.trial_number LIKE '%'",
             "orderByKey": column("metrics", "best_val_miou"), "orderByAsc": False,
             "selectedColumns": [column(kind, key) for kind, key in TRIAL_COLUMNS],
             "chartsSearchFilter": TRIAL_CHARTS}
    key = f"trials-{study}"
    mlflow.MlflowClient().set_experiment_tag(found.experiment_id, SHARED_VIEW_TAG + key, json.dumps(state))
    return TrialsView(found.experiment_id, key, state)
