"""Streaming tiled prediction: grids, seams, no-data, outputs, evaluation, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import rasterio
import torch

from lc.learning.contract import ContractError, ModelContract
from lc.mapping.predict import predict, predict_scene
from lc.mapping.tiling import hann_window
from lc.raster import tile_origins
from lc.sentinel2.safe import ProductError
from lc.tracking.registry import register
from lc.tracking.train import train
from lc.worldcover import BY_CODE
from tests.conftest import tiny_config
from tests.helpers import mlflow_store_in

ROOT = Path(__file__).resolve().parents[1]

CODES = [10, 30, 40, 80]


def _contract(codes=CODES) -> ModelContract:
    return ModelContract(
        harmonisation="none", normalisation={"mean": [1000.0] * 13, "std": [1000.0] * 13},
        classes=[{"code": c, "name": BY_CODE[c].name, "colour": BY_CODE[c].colour} for c in codes],
        chip_size=64, encoder="resnet18",
    )


def _pointwise_model(seed=0) -> torch.nn.Module:
    """A per-pixel model: exactly translation-equivariant, so tiling must not change it."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(13, 16, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, len(CODES), 1))


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src.profile, src


def test_tile_origins_cover_and_stay_inside():
    assert tile_origins(96, 64, 16) == [0, 32]
    assert tile_origins(1000, 256, 64) == [0, 192, 384, 576, 744]
    assert tile_origins(40, 64, 16) == [0]
    w = hann_window(64)
    assert w.min() > 0 and w[32, 32] == pytest.approx(w.max())


def test_bf16_and_fp32_maps_agree_and_fp32_is_the_reference(small_scenes, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(13, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, len(CODES), 3, padding=1))
    scene = small_scenes["epirus_L1C"]
    maps = {p: _read(predict_scene(model, _contract(), scene, tmp_path / f"{p}.tif", tile=64, overlap=16,
                                   precision=p))[0] for p in ("fp32", "bf16")}
    again = _read(predict_scene(model, _contract(), scene, tmp_path / "again.tif", tile=64, overlap=16,
                                precision="fp32"))[0]
    assert (again == maps["fp32"]).all()
    assert (maps["bf16"] == maps["fp32"]).mean() > 0.95
    with pytest.raises(ValueError, match="precision must be auto, fp32, bf16 or fp16"):
        predict_scene(model, _contract(), scene, tmp_path / "x.tif", precision="int8")


def test_map_has_the_scene_grid_and_keeps_nodata(small_scenes, tmp_path):
    scene = small_scenes["thessaly_L1C"]
    out = predict_scene(_pointwise_model(), _contract(), scene, tmp_path / "map.tif", tile=64, overlap=16, batch_size=3)
    mapped, profile, _ = _read(out)
    with rasterio.open(scene / "image.tif") as src:
        image = src.read()
        assert (profile["crs"], profile["transform"], profile["width"], profile["height"]) == (
            src.crs, src.transform, src.width, src.height)
    nodata = (image == 0).all(axis=0)
    assert nodata.any() and (mapped[nodata] == 0).all() and (mapped[~nodata] > 0).all()
    assert set(np.unique(mapped[~nodata])) <= set(CODES)
    confidence, conf_profile, _ = _read(tmp_path / "map.confidence.tif")
    assert (confidence[nodata] == 255).all() and confidence[~nodata].max() <= 100
    assert confidence[~nodata].min() >= 100 / len(CODES) - 1


def test_tiled_prediction_equals_untiled_for_an_equivariant_model(small_scenes, tmp_path):
    scene = small_scenes["epirus_L1C"]
    model = _pointwise_model(3)
    tiled = predict_scene(model, _contract(), scene, tmp_path / "tiled.tif", tile=32, overlap=8)
    whole = predict_scene(model, _contract(), scene, tmp_path / "whole.tif", tile=96, overlap=0)
    a, _, _ = _read(tiled)
    b, _, _ = _read(whole)
    assert np.array_equal(a, b)
    # and the probabilities agree too: no seams in the confidence either
    assert np.abs(_read(tmp_path / "tiled.confidence.tif")[0].astype(int) - _read(tmp_path / "whole.confidence.tif")[0]).max() <= 1


def test_map_is_a_cloud_optimised_geotiff_with_colours_and_names(small_scenes, tmp_path):
    out = predict_scene(_pointwise_model(), _contract(), small_scenes["epirus_L1C"], tmp_path / "m.tif", tile=64, overlap=16)
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.colormap(1)[80][:3] == (0, 100, 200) and src.dtypes[0] == "uint8" and src.nodata == 0
        assert src.tags(1)["CLASS_40"] == "Cropland"
    assert "<Category>Cropland</Category>" in (tmp_path / "m.tif.aux.xml").read_text()


def test_bands_that_do_not_match_the_contract(small_scenes, tmp_path):
    scene = tmp_path / "no-b01"
    shutil.copytree(small_scenes["epirus_L1C"], scene, ignore=shutil.ignore_patterns("cache"))
    with rasterio.open(scene / "image.tif", "r+") as dst:
        dst.set_band_description(1, "X01")
    with pytest.raises(ContractError, match=r"no-b01: bands do not match.*missing \['B01'\].*unknown \['X01'\]"):
        predict_scene(_pointwise_model(), _contract(), scene, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_l2a_without_b10_is_accepted(small_scenes, tmp_path):
    out = predict_scene(_pointwise_model(), _contract(), small_scenes["thrace_L2A"], tmp_path / "l2a.tif", tile=64, overlap=16)
    assert (_read(out)[0] > 0).all()


# --- end to end through the registry ----------------------------------------------------------


@pytest.fixture(scope="module")
def registered(small_scenes, tmp_path_factory):
    store = tmp_path_factory.mktemp("mlflow-predict")
    with mlflow_store_in(store):
        result = train(tiny_config(small_scenes))
        register(result.model_uri, result.val["miou"], description="test", tags={})
        yield store


def test_predict_a_product_of_another_area_and_evaluate(registered, tiny_raw, tmp_path):
    raw, manifest = tiny_raw
    entry = next(p for p in manifest["products"] if p["role"] == "predict")
    out = tmp_path / "thrace.tif"
    summary = predict("models:/landcover/Production", raw / entry["path"], out,
                      worldcover=[raw / w for w in entry["worldcover"]], tile=32, overlap=8)
    for name in ("thrace.tif", "thrace.confidence.tif", "thrace.png", "thrace.truth.tif", "thrace.metrics.json",
                 "thrace.confusion.png", "thrace.areas.png", "thrace.comparison.png", "thrace.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "thrace.metrics.json").read_text())
    truth = _read(tmp_path / "thrace.truth.tif")[0]
    mapped = _read(out)[0]
    assert metrics["n_pixels"] == int(((truth > 0) & (mapped > 0)).sum())
    assert metrics["overall_accuracy"] == pytest.approx(((truth == mapped) & (truth > 0)).sum() / (truth > 0).sum())
    assert summary["metrics"]["miou"] == metrics["miou"]
    assert not list(tmp_path.glob(".*"))  # the temporary scene is gone
    from lc.learning.hardware import cpu_has_native_bf16

    record = json.loads((tmp_path / "thrace.json").read_text())
    assert record["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")


def test_alias_uri_gives_the_same_map(registered, small_scenes, tmp_path):
    a = predict("models:/landcover/Production", small_scenes["epirus_L1C"], tmp_path / "a.tif", tile=32, overlap=8)
    b = predict("models:/landcover@production", small_scenes["epirus_L1C"], tmp_path / "b.tif", tile=32, overlap=8)
    assert np.array_equal(_read(a["map"])[0], _read(b["map"])[0])


def test_unknown_model_uri(registered, small_scenes, tmp_path):
    with pytest.raises(ValueError, match="models:/nothing@here"):
        predict("models:/nothing@here", small_scenes["epirus_L1C"], tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_ground_truth_that_does_not_cover_the_scene(registered, tiny_raw, small_scenes, tmp_path):
    raw, manifest = tiny_raw
    far = next(p for p in manifest["products"] if p["role"] == "predict")["worldcover"]
    with pytest.raises(ProductError, match="does not cover the scene"):
        predict("models:/landcover/Production", small_scenes["epirus_L1C"], tmp_path / "m.tif",
                worldcover=[raw / w for w in far])
    assert not (tmp_path / "m.tif").exists() and not (tmp_path / "m.confidence.tif").exists()


def test_existing_output_needs_overwrite(registered, small_scenes, tmp_path):
    out = tmp_path / "m.tif"
    out.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        predict("models:/landcover/Production", small_scenes["epirus_L1C"], out)
    assert out.read_bytes() == b"precious"
    predict("models:/landcover/Production", small_scenes["epirus_L1C"], out, overwrite=True, tile=32, overlap=8)
    assert _read(out)[0].shape == (96, 96)


def test_make_predict_default_maps_the_experiments_other_area(registered, small_raw, tmp_path, recwarn):
    """`make predict` without PRODUCT: the experiment names the product and its ground truth; the map
    is then assessed on a stratified sample labelled from WorldCover. Runs the recipe's own lc lines."""
    import shlex
    import subprocess

    import yaml
    from typer.testing import CliRunner

    from lc.cli.main import app
    from lc.config import load_config
    from lc.sources.experiment import make_data

    raw = tmp_path / "raw"
    shutil.copytree(small_raw[0], raw)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "small", "source": {"kind": "synth", "seed": 0, "size": 96}, "raw_dir": str(raw),
        "scenes_dir": str(tmp_path / "scenes"), "data": {"scenes": [str(tmp_path / "scenes" / "epirus_L1C")]}}))
    make_data(load_config(experiment))
    out = tmp_path / "map.tif"
    recipe = subprocess.run(["make", "-n", "--no-print-directory", "predict", f"CONFIG={experiment}", f"OUT={out}",
                             "SAMPLE_N=400"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = recipe.replace("\\\n", " ").splitlines()
    commands = [shlex.split(line)[1:] for line in lines if line.startswith(".venv/bin/lc ")]
    assert [c[0] for c in commands] == ["data", "predict", "sample", "evaluate"], recipe
    outputs = []
    for command in commands[1:]:
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, (command, result.output)
        outputs.append(result.output)
    assert "macro mIoU" in outputs[0] and (tmp_path / "map.metrics.json").exists()
    assessment = json.loads((tmp_path / "map.assessment.json").read_text())
    assert assessment["n_points"] == 400 and assessment["design"].startswith("stratified random")
    assert assessment["reference_source"] == f"{tmp_path / 'map.truth.tif'} read at the points"
    assert "overall accuracy" in outputs[2] and (tmp_path / "map.points.gpkg.design.json").exists()
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in recwarn if "/lc/" in w.filename]
    assert not ours, ours  # e.g. a deprecated MLflow call of ours on the console
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32635  # the other area, in the other UTM zone


def test_remapping_without_ground_truth_drops_the_old_evaluation_and_records_the_version(registered, tiny_raw, tmp_path):
    raw, manifest = tiny_raw
    entry = next(p for p in manifest["products"] if p["role"] == "predict")
    out = tmp_path / "m.tif"
    predict("models:/landcover/Production", raw / entry["path"], out, worldcover=[raw / w for w in entry["worldcover"]],
            tile=32, overlap=8)
    assert (tmp_path / "m.metrics.json").exists() and (tmp_path / "m.truth.tif").exists()
    predict("models:/landcover@production", raw / entry["path"], out, overwrite=True, tile=32, overlap=8)
    assert not (tmp_path / "m.metrics.json").exists() and not (tmp_path / "m.truth.tif").exists()
    assert not list(tmp_path.glob("m.confusion*")) and not (tmp_path / "m.areas.png").exists()
    record = json.loads((tmp_path / "m.json").read_text())
    production = mlflow.MlflowClient().get_model_version_by_alias("landcover", "production")
    assert record["model"] == "models:/landcover@production" and record["model_version"] == str(production.version)
    assert record["run_id"] == production.run_id and record.get("model_id") == (production.model_id or None)


def _leave_a_mark(path: str) -> None:
    """What a malicious pickle runs when it is loaded."""
    Path(path).write_text("code from the artifact ran")


class _Trap(torch.nn.Module):
    """A network whose pickle runs code when it is loaded."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def __reduce__(self):
        return (_leave_a_mark, (self.marker,))


def test_a_pickled_model_is_refused_unless_allowed(registered, small_scenes, tmp_path):
    from lc.tracking.models import load_model

    marker = tmp_path / "pwned"
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(_Trap(str(marker)), name="model", serialization_format="pickle",
                                        metadata={"contract": _contract().model_dump(mode="json")})
    marker.unlink(missing_ok=True)  # MLflow itself loads what it logs
    with pytest.raises(ContractError, match="pickle.*would run code.*--allow-pickle"):
        predict(info.model_uri, small_scenes["epirus_L1C"], tmp_path / "m.tif")
    assert not marker.exists() and not (tmp_path / "m.tif").exists()
    with pytest.raises(Exception):  # noqa: B017 - what the trap returns is no network
        load_model(info.model_uri, allow_pickle=True)
    assert marker.exists()  # the opt-in really unpickles: that is why it is refused by default


def test_a_logged_model_is_tensors_and_a_contract(registered):
    from lc.tracking.models import load_model

    version = mlflow.MlflowClient().get_model_version_by_alias("landcover", "production")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/landcover@production"))
    assert {p.name for p in local.iterdir()} >= {"MLmodel", "weights.safetensors", "contract.json"}
    assert not [p for p in local.rglob("*") if p.suffix in (".pkl", ".pth", ".pt")]
    model, contract = load_model(f"models:/landcover/{version.version}")
    assert contract.encoder == "resnet18" and model.segmentation_head[0].out_channels == len(contract.classes)
