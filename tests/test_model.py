"""U-Net construction and pretrained encoder weights from local files in their real formats."""

from __future__ import annotations

import pytest
import torch

from lc.learning.unet import SSL4EO, WeightsNotFound, build_unet


def _resnet_state(encoder: str, in_channels: int, with_fc: bool) -> dict[str, torch.Tensor]:
    """A state dict with the real keys and shapes of a ResNet (random values)."""
    import segmentation_models_pytorch as smp

    unet = smp.Unet(encoder, encoder_weights=None, in_channels=in_channels, classes=2)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in unet.encoder.state_dict().items()}
    if with_fc:
        state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return state


def test_random_init_has_13_inputs_and_k_outputs():
    model = build_unet("resnet34", 7)
    assert model(torch.zeros(1, 13, 64, 64)).shape == (1, 7, 64, 64)
    assert len(model.decoder.blocks) == 5  # a decoder block per encoder stage: the skip connections


@pytest.mark.parametrize(("channels", "size", "stride"), [(512, 2, 1), (256, 4, 2), (8, 6, 1)])
def test_small_maps_as_unfold_and_matmul_give_the_convolutions_outputs_and_gradients(channels, size, stride):
    from lc.learning.unet import SMALL_MAP, SmallMapConv2d, matmul_small_maps

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 32, 3, stride=stride, padding=1, bias=True)
    small = matmul_small_maps(torch.nn.Sequential(torch.nn.Conv2d(channels, 32, 3, stride=stride, padding=1)))[0]
    small.load_state_dict(conv.state_dict())
    assert type(small) is SmallMapConv2d and small.weight.is_contiguous()
    x = torch.randn(3, channels, size, size).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = conv(xa), small(xb)
    assert ya.shape == yb.shape and (ya.shape[-1] * ya.shape[-2] <= SMALL_MAP) == (size <= 4)
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4)
    (ya * ya).sum().backward()
    (yb * yb).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(small.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-3)


def test_only_float32_training_on_the_cpu_computes_small_maps_as_matmul():
    from lc.config import ModelConfig, TrainConfig
    from lc.learning.module import LandCoverModule
    from lc.learning.unet import SmallMapConv2d

    def small_map_convs(precision: str) -> int:
        module = LandCoverModule(ModelConfig(), TrainConfig(precision=precision), [10, 20], [1.0, 1.0])
        return sum(type(m) is SmallMapConv2d for m in module.modules())

    assert small_map_convs("32-true") > 20 and small_map_convs("bf16-mixed") == 0


def test_a_narrower_decoder_is_trained_logged_and_loaded_as_configured(tmp_path):
    """`model.decoder_channels` reaches the network `lc train` builds, its contract, and the network
    `lc predict` rebuilds; a contract written before the setting existed means smp's widths, which
    models had then."""
    import mlflow

    from lc.config import ModelConfig, TrainConfig
    from lc.learning.contract import ModelContract
    from lc.learning.module import LandCoverModule
    from lc.tracking.models import load_model, log_model
    from lc.worldcover import BY_CODE
    from tests.helpers import mlflow_store_in

    light = (64, 32, 16, 16, 8)
    module = LandCoverModule(ModelConfig(decoder_channels=light), TrainConfig(), [10, 30, 80], [1.0] * 3)
    assert [b.conv2[0].out_channels for b in module.model.decoder.blocks] == list(light)
    terms = {"harmonisation": "none", "normalisation": {"mean": [0.0] * 13, "std": [1.0] * 13}, "chip_size": 64,
             "encoder": "resnet18", "classes": [{"code": c, "name": BY_CODE[c].name, "colour": BY_CODE[c].colour}
                                                for c in (10, 30, 80)]}
    assert ModelContract.model_validate(terms).decoder_channels == (256, 128, 64, 32, 16)
    network = module.model.eval()
    with mlflow_store_in(tmp_path):
        with mlflow.start_run():
            uri = log_model(network, ModelContract.model_validate({**terms, "decoder_channels": light}))
        loaded, contract = load_model(uri)
    assert contract.decoder_channels == light
    assert all(torch.equal(tensor, loaded.state_dict()[k]) for k, tensor in network.state_dict().items())


def test_imagenet_weights_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = tmp_path / "hub" / f"models--{settings['repo_id'].replace('/', '--')}" / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    state = _resnet_state("resnet18", 3, with_fc=False)
    save_file(state, snapshot / "model.safetensors")
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    model = build_unet("resnet18", 4, "imagenet")
    conv = model.encoder.conv1.weight.detach()
    assert conv.shape == (64, 13, 7, 7)
    for band in range(13):  # RGB kernels cycled over the 13 bands, scaled by 3/13
        assert torch.allclose(conv[:, band], state["conv1.weight"][:, band % 3] * 3 / 13)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_missing_imagenet_weights_say_where_they_come_from(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFound, match=r"smp-hub/resnet50\.imagenet.*huggingface-cli download"):
        build_unet("resnet50", 4, "imagenet")


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_ssl4eo_weights_from_the_torch_hub_cache(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _resnet_state(encoder, 13, with_fc=encoder == "resnet18")  # real checkpoints carry fc.*
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / SSL4EO[encoder][2])
    model = build_unet(encoder, 5, "ssl4eo")
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])  # native 13 channels
    assert torch.equal(model.encoder.bn1.running_mean, state["bn1.running_mean"])


def test_ssl4eo_missing_or_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFound, match=r"hub/checkpoints/resnet18_sentinel2_all_moco-59bfdff9\.pth.*hf\.co/torchgeo"):
        build_unet("resnet18", 5, "ssl4eo")
    with pytest.raises(ValueError, match="resnet18.*resnet50.*not resnet34"):
        build_unet("resnet34", 5, "ssl4eo")


def test_encoder_from_a_checkpoint_path(tmp_path):
    donor = build_unet("resnet18", 3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in donor.state_dict().items()}}, tmp_path / "run.ckpt")
    model = build_unet("resnet18", 6, str(tmp_path / "run.ckpt"))
    assert torch.equal(model.encoder.layer1[0].conv1.weight, donor.encoder.layer1[0].conv1.weight)
    with pytest.raises(WeightsNotFound, match="missing.ckpt does not exist"):
        build_unet("resnet18", 6, str(tmp_path / "missing.ckpt"))
