"""A trained network as an MLflow model: its weights as tensors beside its contract, never a pickle.

``log_model`` writes ``weights.safetensors`` (the state dict) and ``contract.json`` under the
``landcover`` flavor, with the contract also in the MLmodel metadata. ``load_model`` rebuilds
the network from the contract and loads the tensors: nothing in the artifact is executed, so
a model from a shared store or server cannot run code inside ``lc predict``. Models logged as
pickles (before this format) load only with ``allow_pickle=True`` (``lc predict --allow-pickle``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import Model, ModelSignature
from mlflow.types import Schema, TensorSpec
from safetensors.torch import load_file, save_file

from lc.learning.contract import ContractError, ModelContract
from lc.learning.unet import build_unet
from lc.tracking.store import configure

FLAVOR = "landcover"
WEIGHTS = "weights.safetensors"
CONTRACT = "contract.json"


def signature(n_bands: int, n_classes: int) -> ModelSignature:
    """Tensor signature: (batch, bands, H, W) float32 -> (batch, classes, H, W) logits."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_bands, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_classes, -1, -1))]),
    )


class TensorFlavor:
    """The MLflow flavor of landcover models (``Model.log`` calls ``save_model``)."""

    __name__ = FLAVOR

    @staticmethod
    def save_model(path: str, mlflow_model: Model, network: torch.nn.Module, contract: ModelContract) -> None:
        folder = Path(path)
        folder.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, folder / WEIGHTS)
        (folder / CONTRACT).write_text(contract.model_dump_json(indent=1))
        mlflow_model.add_flavor(FLAVOR, weights=WEIGHTS, contract=CONTRACT, format=contract.format)
        mlflow_model.signature = signature(len(contract.bands), len(contract.classes))
        mlflow_model.save(str(folder / "MLmodel"))


def log_model(network: torch.nn.Module, contract: ModelContract) -> str:
    """Log the network's tensors and its contract into the active run; returns ``models:/m-…``."""
    terms = contract.model_dump(mode="json")
    info = Model.log(None, flavor=TensorFlavor, name="model", metadata={"contract": terms}, network=network,
                     contract=contract)
    mlflow.log_dict(terms, CONTRACT)
    return info.model_uri


def load_contract(uri: str) -> tuple[Model, ModelContract]:
    """A model's MLmodel description and its contract, without its weights."""
    configure()
    try:
        meta = Model.load(uri)
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"model {uri!r} cannot be found: {exc.message}") from exc
    if "contract" not in (meta.metadata or {}):
        raise ValueError(f"model {uri!r} carries no landcover contract; it was not logged by `lc train`")
    return meta, ModelContract.model_validate(meta.metadata["contract"])


def load_model(uri: str, allow_pickle: bool = False) -> tuple[torch.nn.Module, ModelContract]:
    """The network (eval mode, CPU) and its contract from any model URI (alias, stage, version, run)."""
    meta, contract = load_contract(uri)
    if FLAVOR in meta.flavors:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        network = build_unet(contract.encoder, len(contract.classes), decoder_channels=contract.decoder_channels)
        try:
            network.load_state_dict(load_file(folder / meta.flavors[FLAVOR]["weights"]))
        except (RuntimeError, OSError) as exc:
            raise ContractError(f"model {uri!r}: its weights do not fit a {contract.encoder} U-Net of "
                                f"{len(contract.classes)} classes ({exc})") from exc
        return network.eval(), contract
    if not allow_pickle:
        raise ContractError(
            f"model {uri!r} stores its network as a pickle ({json.dumps(sorted(meta.flavors))}): loading it would run "
            "code from the artifact. Retrain it with this version, or pass --allow-pickle if you trust its source.")
    return mlflow.pytorch.load_model(uri, map_location="cpu").eval(), contract


def resolve_model(uri: str) -> dict[str, str]:
    """What a model URI points at now: the registered version (for ``models:/name/stage``,
    ``models:/name@alias``, ``models:/name/3``), the logged model and the run it came from."""
    configure()
    client = mlflow.MlflowClient()
    found: dict[str, str] = {}
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        name, _, rest = uri.removeprefix("models:/").partition("/")
        name, _, alias = name.partition("@")
        if alias:
            version = client.get_model_version_by_alias(name, alias)
        elif rest.isdigit():
            version = client.get_model_version(name, rest)
        else:  # a stage: its newest version, as MLflow resolves it (without the deprecated get_latest_versions)
            staged = [v for v in client.search_model_versions(f"name = '{name}'") if v.current_stage.lower() == rest.lower()]
            if not staged:
                raise ValueError(f"{uri}: no version of model {name!r} is in stage {rest!r}")
            version = max(staged, key=lambda v: int(v.version))
        found = {"registered_model": name, "model_version": str(version.version), "model_id": version.model_id or "",
                 "run_id": version.run_id or ""}
    elif uri.startswith("models:/m-"):
        logged = client.get_logged_model(uri.removeprefix("models:/"))
        found = {"model_id": logged.model_id, "run_id": logged.source_run_id or ""}
    elif uri.startswith("runs:/"):
        found = {"run_id": uri.removeprefix("runs:/").split("/")[0]}
    return {k: v for k, v in found.items() if v}
