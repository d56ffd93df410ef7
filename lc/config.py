"""Experiment configuration: YAML files validated by typed models, dotted overrides.

``load_config("experiments/demo.yaml", ["train.lr=3e-4", "model.encoder=resnet34"])``
returns a validated :class:`ExperimentConfig`; every run logs ``resolved_yaml(cfg)``.
"""

from __future__ import annotations

import difflib
import typing
from datetime import date
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Encoder = Literal["resnet18", "resnet34", "resnet50"]
Loss = Literal["ce", "wce", "dice", "focal", "ce+dice", "lovasz"]
Augmentation = Literal["none", "flips", "spectral", "geometric", "radiometric"]
Harmonisation = Literal["none", "scene_standardise", "land_standardise", "dark_object", "atmospheric"]
M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AcquireSpec(Strict):
    level: Literal["L1C", "L2A"]
    tiles: list[str] = Field(description="MGRS tiles, e.g. 34SEJ")
    start: date
    end: date
    max_cloud: float | None = Field(None, description="maximum cloud cover, percent")


class SourceConfig(Strict):
    """Where the raw products come from: generated offline, or acquired from ESA."""

    kind: Literal["synth", "acquire"] = "synth"
    seed: int = Field(0, description="synth: generator seed")
    size: int = Field(768, description="synth: scene size in 10 m pixels (multiple of 6)")
    worldcover_year: Literal[2020, 2021] = 2021
    train: AcquireSpec | None = None
    predict: AcquireSpec | None = None


class DataConfig(Strict):
    scenes: list[Path] = Field(description="training scene bundles (folders written by `lc prepare`)")
    val_twins: dict[str, Path] = Field(
        default_factory=dict,
        description="scene -> the same acquisition at another level (e.g. its L2A); its val chips are scored too")
    train_on_twins: bool = Field(False, description="train on the twins' training blocks too: both processing levels")
    val_scenes: list[Path] = Field(
        default_factory=list,
        description="scenes of other areas that are never trained on (nor normalised with): every labelled chip of "
                    "them is scored in validation, so that models are chosen for mapping a new area")
    chip_size: int = Field(64, description="chip edge in pixels")
    block_size: int = Field(256, description="edge of the spatial blocks that are split, pixels")
    split: tuple[float, float, float] = Field((0.7, 0.15, 0.15), description="train/val/test fractions of blocks")
    buffer: int = Field(4, description="labels this close (px) to a block of another split are ignored")
    max_nodata: float = Field(0.5, description="skip chips with more unlabelled/no-data pixels than this")
    batch_size: int = 16
    num_workers: int = 2
    augmentation: Augmentation = "flips"
    jitter: bool = Field(True, description="training chips start anywhere inside their block, each epoch anew")
    samples_per_epoch: int | None = Field(
        None, description="training chips drawn per epoch, each at a random position inside a training block "
                          "(a budget in steps, whatever the size of the scenes); none: one pass over the chip grid")
    harmonisation: Harmonisation = "land_standardise"
    window_statistics: float = Field(
        0.5, ge=0.0, le=1.0,
        description="training: the chance that a chip is harmonised with the statistics of a random window of its "
                    "scene (a tenth of it to all of it) instead of the whole scene's; teaches the model the shifts "
                    "of scene statistics that come with another class mix")
    b10_dropout: float = Field(0.2, description="radiometric augmentation: chance to replace B10 by its fill value")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.block_size % self.chip_size:
            raise ValueError("data.block_size must be a multiple of data.chip_size")
        if abs(sum(self.split) - 1) > 1e-6:
            raise ValueError("data.split fractions must sum to 1")
        strays = sorted(set(self.val_twins) - {str(p) for p in self.scenes})
        if strays:  # e.g. the scenes were swapped for others and the twins left behind
            raise ValueError(f"data.val_twins names {', '.join(strays)}, not in data.scenes: a twin is another level "
                             "of a training scene")
        return self


SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # segmentation-models-pytorch's default, this project's before
# half smp's widths: at 64 px chips smp's decoder did more of a training step's work than the encoder; this one
# makes a step 1.4x as fast, at the same accuracy within the seeds' spread
DECODER_CHANNELS = (128, 64, 32, 16, 16)


class ModelConfig(Strict):
    encoder: Encoder = "resnet18"
    weights: str = Field("none", description="none | imagenet | ssl4eo | path to a checkpoint")
    decoder_channels: tuple[int, int, int, int, int] = Field(
        DECODER_CHANNELS, description="channels of the U-Net's five decoder blocks, deepest first")
    freeze_encoder_epochs: int = Field(0, description="train only the decoder for this many epochs")
    encoder_lr_factor: float = Field(1.0, description="encoder learning rate = lr x this")


class TrainConfig(Strict):
    loss: Loss = "ce+dice"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "plateau", "onecycle"] = Field(
        "onecycle", description="cosine: per epoch; plateau: halve on a stalled val mIoU; "
                              "onecycle: warm-up then cosine annealing, per optimiser step")
    warmup: float = Field(0.1, description="onecycle: fraction of the optimiser steps spent warming up")
    max_epochs: int = 12
    patience: int = Field(5, description="early stopping on val mIoU")
    weight_average: float = Field(
        0.995, ge=0, lt=1, description="decay of an exponential moving average of the weights, updated every "
                                       "optimiser step, that validation scores and checkpoints keep (0: the raw weights)")
    batchnorm_windows: int = Field(
        64, ge=0, description="the trained model's BatchNorm statistics are recomputed over up to this many windows "
                              "of the training scenes, of prediction's tile size and harmonisation (0: keep the "
                              "running averages of training)")
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = Field("auto", description="Lightning precision; auto: bf16-mixed on a CPU with native "
                                                  "bfloat16 (AVX-512 BF16, AMX) or a GPU, else 32-true")
    channels_last: bool = Field(True, description="channels-last memory layout (faster convolutions on CPU and GPU)")
    strategy: str = "auto"
    limit_train_batches: float | int = 1.0


class PredictConfig(Strict):
    chip_size: int = Field(256, description="inference tile edge in pixels")
    overlap: int = Field(64, description="overlap between inference tiles, pixels")
    batch_size: int = 8
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast + channels-last where the CPU/GPU has bfloat16, else fp32 (fp16 on CUDA)")


class ExperimentConfig(Strict):
    name: str
    source: SourceConfig = SourceConfig()
    raw_dir: Path
    scenes_dir: Path
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    mlflow_experiment: str = "landcover"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, value = item.split("=", 1)
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


class ConfigError(ValueError):
    """A settings file that cannot be used: the message names the file, the key and what was expected."""


def read_settings(path: str | Path, model: type[M], overrides: list[str] | None = None) -> M:
    """Read a YAML settings file, apply dotted overrides and validate it against ``model``;
    any problem is one ConfigError that names the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    try:
        return model.model_validate(apply_overrides(raw, overrides or []))
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + "; ".join(_explain(model, e) for e in exc.errors())) from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _explain(model: type[BaseModel], error: dict) -> str:
    """One validation error as a sentence: the dotted key, what is wrong, the nearest valid key."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] != "extra_forbidden":
        return f"{key or 'the file'}: {error['msg']}"
    fields = _fields_at(model, error["loc"][:-1])
    near = difflib.get_close_matches(str(error["loc"][-1]), fields, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {'.'.join([*map(str, error['loc'][:-1]), near[0]])!r}?)"
                                     if near else f"; valid keys there: {', '.join(fields)}")


def _fields_at(model: type[BaseModel], location: tuple) -> list[str]:
    """The field names of the settings section at ``location`` (dotted keys of a model)."""
    for part in location:
        annotation = model.model_fields[str(part)].annotation if str(part) in model.model_fields else None
        candidates = [a for a in typing.get_args(annotation) or (annotation,) if isinstance(a, type)]
        model = next((a for a in candidates if issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment YAML."""
    return read_settings(path, ExperimentConfig, overrides)


def resolved_yaml(cfg: ExperimentConfig) -> str:
    """The fully resolved config, as YAML that ``load_config`` reads back identically."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
