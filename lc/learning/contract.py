"""The model contract: what prediction needs to feed a trained network and read its output.

Training writes it beside the weights (``contract.json`` and the MLmodel metadata);
prediction reads it back and needs nothing else: the band order, the harmonisation and
normalisation, the fill of missing bands, the classes with their names and colours, and the
network to rebuild (encoder, decoder widths, number of classes). See docs/architecture.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from lc.config import SMP_DECODER_CHANNELS, Encoder, ExperimentConfig, Harmonisation
from lc.learning.datamodule import LandCoverData
from lc.learning.inputs import IGNORE, Normalisation
from lc.sentinel2.bands import BAND_NAMES
from lc.worldcover import BY_CODE

FORMAT = "landcover-model/1"


class ContractError(ValueError):
    """A model or an input that does not fit the model's contract."""


class ClassEntry(BaseModel):
    """One output class of the model: its WorldCover code, name and colour."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    code: int
    name: str
    colour: str


class TrainedOn(BaseModel):
    """A scene the model was trained on."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    product_id: str
    level: str


class ModelContract(BaseModel):
    """The typed contract of a trained model (``format`` names its version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    format: Literal["landcover-model/1"] = FORMAT
    bands: tuple[str, ...] = BAND_NAMES
    reflectance_scale: int = 10000
    harmonisation: Harmonisation
    missing_band_fill: float = 0.0
    normalisation: Normalisation
    classes: tuple[ClassEntry, ...]
    ignore_index: int = IGNORE
    resampling: str = "sharpen"
    chip_size: int
    encoder: Encoder
    decoder_channels: tuple[int, ...] = SMP_DECODER_CHANNELS  # what models logged before it was a setting had
    weights: str = "none"
    trained_on: tuple[TrainedOn, ...] = ()
    val_miou: float | None = None

    @property
    def codes(self) -> tuple[int, ...]:
        """The WorldCover code of each output channel, in channel order."""
        return tuple(c.code for c in self.classes)

    def check_scene_bands(self, scene_bands: tuple[str, ...], source: Path) -> None:
        """Every model band must be in the scene, except B10 (filled with ``missing_band_fill``)."""
        if self.bands != BAND_NAMES:
            raise ContractError(f"the model expects bands {list(self.bands)}, this code knows {list(BAND_NAMES)}")
        unknown = [b for b in scene_bands if b not in self.bands]
        missing = [b for b in self.bands if b not in scene_bands and b != "B10"]
        if unknown or missing:
            raise ContractError(f"{source}: bands do not match the model's contract "
                                f"(missing {missing or 'none'}, unknown {unknown or 'none'})")

    @classmethod
    def of_training(cls, cfg: ExperimentConfig, data: LandCoverData, val_miou: float) -> ModelContract:
        """The contract of a model trained with ``cfg`` on ``data`` (set up)."""
        scenes = [json.loads((Path(p) / "scene.json").read_text()) for p in cfg.data.scenes]
        methods = {s["resampling"]["to_10m"] for s in scenes}
        if len(methods) != 1:
            raise ContractError(f"the training scenes brought their bands to 10 m in different ways: {sorted(methods)}")
        return cls(
            resampling=methods.pop(),
            harmonisation=cfg.data.harmonisation, normalisation=data.norm,
            classes=tuple(ClassEntry(code=c, name=BY_CODE[c].name, colour=BY_CODE[c].colour) for c in data.codes),
            chip_size=cfg.data.chip_size, encoder=cfg.model.encoder, decoder_channels=cfg.model.decoder_channels,
            weights=cfg.model.weights,
            trained_on=tuple(TrainedOn(product_id=s["product_id"], level=s["level"]) for s in scenes),
            val_miou=val_miou,
        )
