"""Chips, block splits, normalisation, augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lc.learning.augment import build_policy
from lc.learning.datamodule import LandCoverData
from lc.learning.harmonise import harmonise
from lc.learning.inputs import IGNORE, fit_normalisation, model_input
from lc.learning.scenes import load_scene
from lc.learning.splits import SPLITS, SceneBlocks, ignored, split_chips
from lc.sentinel2.bands import BAND_ID, BAND_NAMES
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def data(small_scenes):
    dm = LandCoverData(tiny_config(small_scenes).data)
    dm.setup()
    return dm


def _chip_block(chip, cfg):
    return chip.scene, chip.row // cfg.block_size, chip.col // cfg.block_size


def test_splits_never_share_a_block(data):
    cfg = data.cfg
    blocks = {s: {_chip_block(c, cfg) for c in chips} for s, chips in data.split.chips.items()}
    assert all(blocks.values())
    assert not blocks["train"] & blocks["val"] and not blocks["train"] & blocks["test"] and not blocks["val"] & blocks["test"]


def test_no_labelled_neighbours_across_splits(data):
    """Within `buffer` px, a labelled pixel never has a labelled pixel of another split."""
    cfg = data.cfg
    scene_shape = (data.scenes[0].height, data.scenes[0].width)
    owner = np.full(scene_shape, -1)
    for split_index, name in enumerate(("train", "val", "test")):
        ds = data.dataset(name)
        for i, chip in enumerate(ds.chips):
            if chip.scene:
                continue
            _, mask = ds[i]
            labelled = mask.numpy() != IGNORE
            window = owner[chip.row : chip.row + cfg.chip_size, chip.col : chip.col + cfg.chip_size]
            window[labelled] = split_index
    b = cfg.buffer
    for dr in range(-b, b + 1):
        for dc in range(-b, b + 1):
            shifted = np.roll(np.roll(owner, dr, 0), dc, 1)
            both = (owner >= 0) & (shifted >= 0)
            both[:b], both[-b:], both[:, :b], both[:, -b:] = False, False, False, False
            assert (owner[both] == shifted[both]).all()


def test_border_ignore_marks_only_pixels_near_another_split():
    blocks = SceneBlocks(np.array([[0, 1], [0, 0]], np.int8), 0, 0, 4)
    mask = ignored(0, 0, 4, blocks, 1)  # chip = block (0, 0); its right neighbour is another split
    assert mask[:, 3].all() and not mask[:, :3].any()
    corner = ignored(4, 0, 4, blocks, 1)  # block (1, 0) touches (0, 1) only at a corner
    assert corner[0, 3] and corner.sum() == 1


def test_a_chip_across_blocks_labels_only_its_own_split():
    blocks = SceneBlocks(np.array([[0, 1], [0, 0]], np.int8), 0, 2, 4)  # the scene starts 2 px into block (0, 0)
    mask = ignored(0, 0, 4, blocks, 0)  # centre (2, 2) lies in block (0, 1): split 1
    assert mask[:, :2].all() and not mask[:, 2:].any()


def test_every_training_class_is_in_validation_or_reported(small_scenes):
    scenes = [str(small_scenes[s]) for s in ("epirus_L1C", "thessaly_L1C", "thrace_L2A")]
    cfg = tiny_config(small_scenes, data__block_size=96, data__split=[0.34, 0.33, 0.33], data__scenes=scenes)
    dm = LandCoverData(cfg.data)
    dm.setup()  # 3 scenes x 1 block: one block per split, so classes can't all be everywhere
    train_classes = set(dm.split.class_pixels["train"])
    val_classes = set(dm.split.class_pixels["val"])
    assert sorted(train_classes - val_classes) == dm.split.missing_in_val
    assert dm.split.summary()["missing_in_val"] == dm.split.missing_in_val


def test_split_is_seeded(small_scenes):
    scenes = [load_scene(small_scenes[s]) for s in ("epirus_L1C", "thessaly_L1C")]
    cfg = tiny_config(small_scenes).data
    a, b = split_chips(scenes, cfg), split_chips(scenes, cfg)
    c = split_chips(scenes, cfg.model_copy(update={"seed": 7}))
    assert a.chips == b.chips and a.chips != c.chips


def test_normalisation_comes_from_training_chips_only(data):
    cfg = data.cfg
    train = data.split.chips["train"]
    pixels = []
    for chip in train:
        scene = data.scenes[chip.scene]
        raw = np.asarray(scene.image[chip.row : chip.row + cfg.chip_size, chip.col : chip.col + cfg.chip_size])
        valid = raw[(raw > 0).all(axis=-1)].astype(np.float32)
        pixels.append(harmonise(valid, cfg.harmonisation, scene.stats))
    pixels = np.concatenate(pixels)
    assert np.allclose(data.norm.mean, pixels.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert np.allclose(data.norm.std, pixels.std(axis=0), rtol=1e-4)
    other = fit_normalisation(data.scenes, data.split.chips["val"], cfg)
    assert not np.allclose(other.mean, data.norm.mean)


def test_model_input_fills_missing_b10_and_nodata(small_scenes, data):
    l2a = load_scene(small_scenes["thessaly_L2A"])
    raw = np.asarray(l2a.image[:32, :32]).copy()
    raw[0, 0] = 0
    x = model_input(raw, l2a.bands, l2a.stats, "scene_standardise", data.norm)
    assert x.shape == (32, 32, len(BAND_NAMES)) and x.dtype == np.float32
    assert (x[..., BAND_ID["B10"]] == 0).all() and (x[0, 0] == 0).all()
    assert np.abs(x[1:, 1:, BAND_ID["B04"]]).max() > 0


@pytest.mark.parametrize("policy", ["none", "flips", "geometric", "radiometric"])
def test_masks_follow_images_exactly(policy):
    """Image band values encode the class; wherever the moved mask is locally uniform, the
    moved image must show the same class (interpolation only blends at class edges)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    mask = np.kron(rng.integers(0, 5, (4, 4)), np.ones((8, 8))).astype(np.uint8)
    image = np.repeat(mask[..., None].astype(np.float32), 13, axis=2)
    compose = build_policy(policy, 32, IGNORE, BAND_ID["B10"], b10_dropout=0.0)
    moved = 0
    for seed in range(20):
        compose.set_random_seed(seed)
        out = compose(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        assert img.shape == (32, 32, 13) and msk.shape == (32, 32)
        # away from class edges (5 x 5 uniform) and from the chip border (padding blends in)
        uniform = (ndimage.maximum_filter(msk, 5, mode="constant", cval=IGNORE) == ndimage.minimum_filter(msk, 5))
        uniform &= msk != IGNORE
        shown = np.rint(img[..., :10].mean(axis=-1))
        agreement = (shown[uniform] == msk[uniform]).mean()
        assert agreement == 1.0 if policy != "radiometric" else agreement > 0.95
        moved += not np.array_equal(msk, mask)
    assert (moved > 0) == (policy != "none")


def test_b10_dropout_replaces_the_band_by_its_fill():
    image = np.ones((32, 32, 13), np.float32)
    compose = build_policy("radiometric", 32, IGNORE, BAND_ID["B10"], b10_dropout=1.0)
    out = compose(image=image, mask=np.zeros((32, 32), np.uint8))["image"]
    assert (out[..., BAND_ID["B10"]] == 0).all() and (out[..., BAND_ID["B11"]] != 0).any()


def test_three_blocks_give_every_split_a_block(small_scenes):
    scenes = [str(small_scenes[s]) for s in ("epirus_L1C", "thessaly_L1C", "thrace_L2A")]
    dm = LandCoverData(tiny_config(small_scenes, data__block_size=96, data__scenes=scenes).data)
    dm.setup()  # default split 0.7/0.15/0.15 of 3 blocks
    assert all(len(chips) > 0 for chips in dm.split.chips.values())


def test_a_band_no_training_chip_has_passes_through_as_zero(small_scenes):
    dm = LandCoverData(tiny_config(small_scenes, data__scenes=[str(small_scenes["thrace_L2A"])]).data)
    dm.setup()  # L2A only: no B10 anywhere
    assert dm.norm.mean[BAND_ID["B10"]] == 0.0 and dm.norm.std[BAND_ID["B10"]] == 1.0


def test_validation_also_scores_the_twin_on_the_other_level(small_scenes):
    cfg = tiny_config(small_scenes, data__val_twins={str(small_scenes["thessaly_L1C"]): str(small_scenes["thessaly_L2A"])})
    dm = LandCoverData(cfg.data)
    dm.setup()
    val = dm.validation_dataset()
    own = [c for c in dm.split.chips["val"] if c.scene == 1]
    assert len(val) == len(dm.split.chips["val"]) + len(own)
    twin_chips = val.chips[len(dm.split.chips["val"]):]
    assert all(val.scenes[c.scene].path == small_scenes["thessaly_L2A"] for c in twin_chips)
    if twin_chips:
        x, _ = val[len(dm.split.chips["val"])]
        assert (x[BAND_ID["B10"]] == 0).all()  # the L2A twin has no B10


def test_a_twin_on_another_grid_is_refused(small_scenes):
    cfg = tiny_config(small_scenes, data__val_twins={str(small_scenes["thessaly_L1C"]): str(small_scenes["epirus_L1C"])})
    with pytest.raises(ValueError, match="epirus_L1C is not on the grid of .*thessaly_L1C"):
        LandCoverData(cfg.data).setup()


def test_a_validation_area_is_scored_whole_and_never_trained_on(small_scenes):
    area = small_scenes["attica_L2A"]
    plain = LandCoverData(tiny_config(small_scenes).data)
    plain.setup()
    dm = LandCoverData(tiny_config(small_scenes, data__val_scenes=[str(area)]).data)
    dm.setup()
    val, own = dm.validation_dataset(), len(dm.split.chips["val"])
    extra = val.chips[own:]
    assert own == len(plain.split.chips["val"]) and len(extra) == 9  # every chip of the 96 px area, 32 px chips
    assert {val.scenes[c.scene].path for c in extra} == {area}
    _, mask = val[own]
    assert (mask != IGNORE).float().mean() > 0.9  # no block of the area belongs to another split
    assert area not in {s.path for s in dm.train_dataloader().dataset.scenes}
    np.testing.assert_array_equal(dm.norm.mean, plain.norm.mean)  # normalised with training chips only


def test_a_validation_area_on_training_ground_is_refused(small_scenes):
    cfg = tiny_config(small_scenes, data__val_scenes=[str(small_scenes["thessaly_L2A"])])
    with pytest.raises(ValueError, match="validation area .*thessaly_L2A overlaps training scene .*thessaly_L1C"):
        LandCoverData(cfg.data).setup()


def test_a_validation_area_on_training_ground_in_another_utm_zone_is_refused(small_scenes, tmp_path):
    import json
    import shutil

    from rasterio.warp import transform

    area = shutil.copytree(small_scenes["epirus_L1C"], tmp_path / "epirus_in_35N")  # the same ground, in UTM 35
    info = json.loads((area / "scene.json").read_text())
    res, _, west, _, _, north = info["transform"]
    (x,), (y,) = transform(info["crs"], "EPSG:32635", [west], [north])
    info |= {"crs": "EPSG:32635", "transform": [res, 0.0, round(x / res) * res, 0.0, -res, round(y / res) * res]}
    (area / "scene.json").write_text(json.dumps(info))
    assert load_scene(area).crs != load_scene(small_scenes["epirus_L1C"]).crs
    cfg = tiny_config(small_scenes, data__val_scenes=[str(area)])
    with pytest.raises(ValueError, match="validation area .*epirus_in_35N overlaps training scene .*epirus_L1C"):
        LandCoverData(cfg.data).setup()
    apart = tiny_config(small_scenes, data__val_scenes=[str(small_scenes["thrace_L2A"])])  # UTM 35, elsewhere
    LandCoverData(apart.data).setup()


def test_samples_per_epoch_draw_random_positions_inside_training_blocks(small_scenes):
    cfg = tiny_config(small_scenes, data__samples_per_epoch=40, data__block_size=64)
    dm = LandCoverData(cfg.data)
    dm.setup()
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 40 and len(loader) == 5  # 40 chips of batch 8, whatever the chip grid holds
    ds, c, b = loader.dataset, cfg.data.chip_size, cfg.data.block_size
    positions = {(ch.scene, *ds._window(ch)) for ch in ds.chips for _ in range(4)}
    assert len(positions) > len(ds.chips)  # the same chip is drawn again, elsewhere
    train_blocks = {(ch.scene, ch.row // b, ch.col // b) for ch in dm.split.chips["train"]}
    for i in range(len(ds)):
        chip = ds.chips[i % len(ds.chips)]
        row, col = ds._window(chip)
        assert (chip.scene, row // b, col // b) in train_blocks and (row + c - 1) // b == row // b


def test_training_on_twins_adds_the_twins_training_chips(small_scenes):
    twins = {str(small_scenes["thessaly_L1C"]): str(small_scenes["thessaly_L2A"])}
    dm = LandCoverData(tiny_config(small_scenes, data__val_twins=twins, data__train_on_twins=True).data)
    dm.setup()
    train = dm.train_dataloader().dataset
    own = [c for c in dm.split.chips["train"] if c.scene == 1]
    assert len(train.chips) == len(dm.split.chips["train"]) + len(own) > len(dm.split.chips["train"])
    assert {train.scenes[c.scene].path for c in train.chips[len(dm.split.chips["train"]):]} == {small_scenes["thessaly_L2A"]}
    alone = LandCoverData(tiny_config(small_scenes, data__val_twins=twins).data)
    alone.setup()
    assert len(alone.train_dataloader().dataset.chips) == len(dm.split.chips["train"])


def test_overlapping_scenes_put_the_same_ground_in_one_split(tmp_path):
    """Two products of one UTM zone that overlap on the same pixel grid (as MGRS tiles do)."""
    from lc.sentinel2.prepare import prepare
    from lc.synth.products import DEFAULT_PRODUCTS, Area
    from tests.helpers import make_products, variant

    base = DEFAULT_PRODUCTS[0]
    shifted = Area("epirus-east", base.area.tile, base.area.epsg, base.area.ulx + 10 * 40, base.area.uly - 10 * 24,
                   aridity=0.2, vigour=0.0, soil=0.0, aot=0.12)
    manifest = make_products(tmp_path / "raw", base, variant(base, area=shifted), size=96)
    scenes = [prepare(tmp_path / "raw" / p["path"], tmp_path / p["scene"], [tmp_path / "raw" / w for w in p["worldcover"]],
                      method="cubic") for p in manifest["products"]]
    cfg = tiny_config({"epirus_L1C": scenes[0], "thessaly_L1C": scenes[1]}, data__block_size=32, data__buffer=2,
                      data__max_nodata=0.99)
    dm = LandCoverData(cfg.data)
    dm.setup()
    owner = {}  # map-grid pixel -> the splits that label it
    for index, name in enumerate(SPLITS):
        ds = dm.dataset(name)
        for i, chip in enumerate(ds.chips):
            _, mask = ds[i]
            rows, cols = np.nonzero(mask.numpy() != IGNORE)
            origin = dm.scenes[chip.scene].origin
            for r, c in zip(rows + chip.row + origin[0], cols + chip.col + origin[1]):
                owner.setdefault((int(r), int(c)), set()).add(index)
    assert all(len(splits) == 1 for splits in owner.values()), "the same ground is labelled in two splits"
    first = {k for k, v in owner.items() if k[0] < dm.scenes[0].origin[0] + 96 and k[1] < dm.scenes[0].origin[1] + 96}
    second = {k for k in owner if k[0] >= dm.scenes[1].origin[0] and k[1] >= dm.scenes[1].origin[1]}
    assert len(first & second) > 500  # the test does look at shared ground
    split_of = {k: next(iter(v)) for k, v in owner.items()}
    for (r, c), split in split_of.items():
        for dr in (-2, 0, 2):
            for dc in (-2, 0, 2):
                assert split_of.get((r + dr, c + dc), split) == split, "neighbours within the buffer in two splits"


def test_scene_statistics_carry_level_and_angles_and_an_older_cache_is_rebuilt(small_scenes, tmp_path):
    import json
    import shutil

    scene = tmp_path / "thessaly_L1C"
    shutil.copytree(small_scenes["thessaly_L1C"], scene, ignore=shutil.ignore_patterns("cache"))
    first = load_scene(scene).stats
    info = json.loads((scene / "scene.json").read_text())
    assert first.level == "L1C" and first.sun_zenith == info["angles"]["sun_zenith"] > 0
    stats = json.loads((scene / "cache" / "stats.json").read_text())
    older = {k: v for k, v in stats.items() if k not in ("land_mean", "land_std")}
    (scene / "cache" / "stats.json").write_text(json.dumps(older))  # as written before land statistics
    assert load_scene(scene).stats == first
    assert json.loads((scene / "cache" / "stats.json").read_text()).keys() == stats.keys()


def test_window_statistics_harmonise_training_chips_with_other_class_mixes(small_scenes):
    """With data.window_statistics, training chips are harmonised with a random window's statistics (seeded,
    the same windows in every run); validation chips with the whole scene's."""
    cfg = tiny_config(small_scenes, data__window_statistics=1.0, data__augmentation="none").data
    dm = LandCoverData(cfg)
    dm.setup()
    windows = dm.scenes[0].window_statistics(8, seed=1)
    assert len({w.land_mean for w in windows}) == 8 and all(w.level == "L1C" for w in windows)
    assert windows == dm.scenes[0].window_statistics(8, seed=1)
    first = [dm.dataset("train", windows=True)[i][0] for i in range(16)]
    again = [dm.dataset("train", windows=True)[i][0] for i in range(16)]
    whole = [dm.dataset("train")[i][0] for i in range(16)]  # the same chips
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert sum(not torch.allclose(a, b) for a, b in zip(first, whole)) >= 12
    val = dm.dataset("val")
    chip = val.chips[0]
    scene = val.scenes[chip.scene]
    raw = np.asarray(scene.image[chip.row: chip.row + cfg.chip_size, chip.col: chip.col + cfg.chip_size])
    expected = model_input(raw, scene.bands, scene.stats, cfg.harmonisation, dm.norm)
    assert np.allclose(val[0][0].numpy(), expected.transpose(2, 0, 1))


def test_window_statistics_of_a_scene_mostly_without_data_end(small_scenes, tmp_path):
    """Where few windows hold mostly data (a swath's edge), the draw stops and falls back to the scene's own."""
    scene = load_scene(small_scenes["epirus_L1C"])
    sparse = np.zeros((scene.height, scene.width, len(scene.bands)), np.uint16)
    sparse[:8, :8] = np.asarray(scene.image[:8, :8])  # under 1% of the scene holds data
    np.save(tmp_path / "image.npy", sparse)
    scene.path, scene._maps = tmp_path / "sparse", {}
    (tmp_path / "sparse" / "cache").mkdir(parents=True)
    (tmp_path / "image.npy").rename(tmp_path / "sparse" / "cache" / "image.npy")
    assert scene.window_statistics(8, seed=0) == [scene.stats]
