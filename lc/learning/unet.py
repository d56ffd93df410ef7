"""The U-Net: segmentation-models-pytorch with a ResNet encoder and 13 input channels.

Pretrained encoders load only from local files, never from the network:

- ``imagenet``: smp's ResNet weights from the Hugging Face cache (``smp-hub/<encoder>.imagenet``
  at smp's pinned revision); the RGB first convolution is adapted to 13 bands by cycling the
  kernels and scaling by 3/13, as smp does.
- ``ssl4eo``: SSL4EO-S12 MoCo weights (13-band Sentinel-2 L1C, ResNet18/50) as torch-hub
  checkpoints in ``$TORCH_HOME/hub/checkpoints``; native 13 channels, input = reflectance.
- a path: a checkpoint holding an encoder (or whole-model) state dict.
"""

from __future__ import annotations

import os
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from torch import nn

from lc.config import DECODER_CHANNELS
from lc.learning.harmonise import Z_SCORES

N_BANDS = 13
NET_MULTIPLE = 32  # a U-Net of depth 5 needs sizes divisible by 2^5
SMALL_MAP = 4  # output pixels up to which a convolution is computed as unfold + matmul
SSL4EO = {
    "resnet18": ("torchgeo/resnet18_sentinel2_all_moco", "5b8cddc9a14f3844350b7f40b85bcd32aed75918",
                 "resnet18_sentinel2_all_moco-59bfdff9.pth"),
    "resnet50": ("torchgeo/resnet50_sentinel2_all_moco", "da4f3c9dbe09272eb902f3b37f46635fa4726879",
                 "resnet50_sentinel2_all_moco-df8b932e.pth"),
}


class WeightsNotFound(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says where to put them."""


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """smp's ImageNet weights for ``encoder`` from the local Hugging Face cache."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors.torch import load_file

    settings = smp_encoders[encoder]["pretrained_settings"]["imagenet"]
    repo, revision = settings["repo_id"], settings["revision"]
    try:
        path = hf_hub_download(repo, "model.safetensors", revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError) as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise WeightsNotFound(
            f"ImageNet weights for {encoder} are not in the Hugging Face cache ({HF_HUB_CACHE}). "
            f"They come from https://huggingface.co/{repo} (revision {revision}); on a machine with "
            f"network access run `huggingface-cli download {repo} --revision {revision}` and copy the "
            f"cache here, or point HF_HOME at a cache that has them."
        ) from exc
    return load_file(path, device="cpu")


def ssl4eo_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """SSL4EO-S12 MoCo weights (13-band L1C) for ``encoder`` from the torch-hub cache."""
    if encoder not in SSL4EO:
        raise ValueError(f"SSL4EO-S12 weights exist for {sorted(SSL4EO)} only, not {encoder}")
    repo, revision, filename = SSL4EO[encoder]
    path = torch_hub_checkpoints() / filename
    if not path.exists():
        raise WeightsNotFound(
            f"SSL4EO-S12 weights for {encoder} are not at {path}. They come from "
            f"https://hf.co/{repo}/resolve/{revision}/{filename} (listed by torchgeo as "
            f"{encoder.replace('resnet', 'ResNet')}_Weights.SENTINEL2_ALL_MOCO); download that file "
            f"into {path.parent} (or set TORCH_HOME)."
        )
    return _encoder_keys(torch.load(path, map_location="cpu", weights_only=True))


def checkpoint_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An encoder state dict from a checkpoint file (Lightning, whole model or bare encoder)."""
    if not path.exists():
        raise WeightsNotFound(f"encoder checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    for prefix in ("model.encoder.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return _encoder_keys(state)


def _encoder_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the classification head; strip DataParallel prefixes."""
    return {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}


def build_unet(encoder: str, n_classes: int, weights: str = "none",
               decoder_channels: tuple[int, ...] = DECODER_CHANNELS) -> smp.Unet:
    """A U-Net (skip connections from every encoder stage) for 13-band input."""
    def unet(in_channels: int) -> smp.Unet:
        return smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=n_classes,
                        decoder_channels=decoder_channels)

    if weights == "none":
        return unet(N_BANDS)
    if weights == "imagenet":
        model = unet(3)
        model.encoder.load_state_dict(imagenet_state_dict(encoder))
        model.encoder.set_in_channels(N_BANDS, pretrained=True)  # cycle RGB kernels, scale by 3/13
        return model
    model = unet(N_BANDS)
    state = ssl4eo_state_dict(encoder) if weights == "ssl4eo" else checkpoint_state_dict(Path(os.path.expanduser(weights)))
    try:
        model.encoder.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"encoder weights {weights!r} do not fit a 13-band {encoder}: {exc}") from exc
    return model


def uses_reflectance_input(weights: str, harmonisation: str) -> bool:
    """SSL4EO-S12 encoders were trained on reflectance (DN / 10000): feed them that, unless the
    harmonisation has already turned reflectance into per-scene z-scores."""
    return weights == "ssl4eo" and harmonisation not in Z_SCORES


class SmallMapConv2d(nn.Conv2d):
    """A convolution whose output maps of at most ``SMALL_MAP`` pixels are computed as unfold + matmul.

    On an AVX2 CPU in float32, oneDNN takes 45 ms for the forward and backward pass of ResNet-18's
    512-channel 3x3 convolution on the 2x2 maps of 64 px chips (batch 16); unfold + matmul takes 14 ms.
    Larger maps (prediction's tiles) use the convolution. The parameters are those of ``nn.Conv2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ph, pw = self.padding if not isinstance(self.padding, str) else (-1, -1)
        oh, ow = (x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if ph < 0 or oh * ow > SMALL_MAP or self.groups != 1 or self.padding_mode != "zeros":
            return super().forward(x)
        cols = F.unfold(x, self.kernel_size, self.dilation, (ph, pw), self.stride)
        y = (self.weight.flatten(1) @ cols).view(len(x), -1, oh, ow)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def matmul_small_maps(model: nn.Module) -> nn.Module:
    """Every plain convolution of ``model`` becomes a :class:`SmallMapConv2d`, its weights (contiguous) kept."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = SmallMapConv2d
            module.weight.data = module.weight.data.contiguous()
    return model
