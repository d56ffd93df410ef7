"""Write Sentinel-2 products in ESA's SAFE format (L1C and L2A, any processing baseline).

The layout, file names and metadata element names are ESA's (PSD 14/15, compact naming):
``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` at the root, one granule with ``MTD_TL.xml`` and
lossless JPEG 2000 bands at their native 10/20/60 m, ``DATASTRIP``, ``AUX_DATA``, ``HTML``,
``rep_info``, ``manifest.safe``. Baselines from 04.00 carry the -1000 radiometric offsets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from lc.sentinel2.bands import BANDS, BY_NAME, LEVEL_BANDS
from lc.synth.safe_metadata import QUANTIFICATION, ProductInfo, manifest_xml, product_metadata_xml, tile_metadata_xml

JP2_OPTIONS = {"QUALITY": 100, "REVERSIBLE": "YES", "RESOLUTIONS": 1}


def dn_from_reflectance(reflectance: np.ndarray, info: ProductInfo, valid: np.ndarray | None = None) -> np.ndarray:
    """Digital numbers as ESA writes them: DN = reflectance * Q - offset, 0 = no data."""
    dn = np.rint(reflectance.astype(np.float64) * QUANTIFICATION) - info.add_offset  # quantise, then shift: baselines agree
    dn = np.clip(dn, 1, 65534).astype(np.uint16)
    if valid is not None:
        dn[~valid] = 0
    return dn


L2A_FOLDERS: dict[int, tuple[str, ...]] = {
    10: ("B02", "B03", "B04", "B08", "TCI", "AOT", "WVP"),
    20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "TCI", "AOT", "WVP", "SCL"),
    60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "TCI", "AOT", "WVP", "SCL"),
}


def _image_files(info: ProductInfo) -> list[tuple[str, str, int]]:
    """(relative path without extension, layer, resolution) of every image file, in ESA's order."""
    img = f"GRANULE/{info.granule}/IMG_DATA"
    if info.level == "L1C":
        layers = [(b.name, b.resolution) for b in BANDS] + [("TCI", 10)]
        return [(f"{img}/{info.image_stem(name)}", name, res) for name, res in layers]
    return [
        (f"{img}/R{res}m/{info.image_stem(name, res)}", name, res)
        for res, names in L2A_FOLDERS.items()
        for name in names
    ]


def _resample(array: np.ndarray, from_res: int, to_res: int, categorical: bool = False) -> np.ndarray:
    """ESA's copies of a layer at another resolution: block mean down (no data where any
    input is; the central pixel for classes), pixel replication up."""
    if to_res < from_res:
        f = from_res // to_res
        return array.repeat(f, 0).repeat(f, 1)
    f = to_res // from_res
    if f == 1:
        return array
    if categorical:
        return array[f // 2 :: f, f // 2 :: f]
    h, w = array.shape
    blocks = array.reshape(h // f, f, w // f, f)
    out = np.rint(blocks.astype(np.float32).mean(axis=(1, 3))).astype(array.dtype)
    out[(blocks == 0).any(axis=(1, 3))] = 0
    return out


def _auxiliary_layers(native: dict[str, np.ndarray], info: ProductInfo, scl: np.ndarray | None) -> dict[str, np.ndarray]:
    """TCI (uint8 RGB as ESA scales it), AOT, WVP and SCL at 10 m; 0 = no data."""
    rgb = np.stack([_resample(native[b], BY_NAME[b].resolution, 10) for b in ("B04", "B03", "B02")])
    nodata = (rgb == 0).any(axis=0)
    tci = np.clip((rgb.astype(np.float32) + info.add_offset) / 2000 * 255, 1, 255).astype(np.uint8)
    tci[:, nodata] = 0
    layers = {"TCI": tci}
    if info.level == "L2A":
        layers["AOT"] = np.where(nodata, 0, 150).astype(np.uint16)  # AOT x 1000
        layers["WVP"] = np.where(nodata, 0, 1800).astype(np.uint16)  # water vapour, cm x 1000
        layers["SCL"] = scl if scl is not None else np.where(nodata, 0, 4).astype(np.uint8)
    return layers


def _write_jp2(path: Path, array: np.ndarray, info: ProductInfo, resolution: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = array if array.ndim == 3 else array[None]
    with rasterio.open(
        path, "w", driver="JP2OpenJPEG", width=stack.shape[2], height=stack.shape[1], count=stack.shape[0],
        dtype=stack.dtype, crs=CRS.from_epsg(info.epsg),
        transform=from_origin(info.ulx, info.uly, resolution, resolution), **JP2_OPTIONS,
    ) as dst:
        dst.write(stack)


def write_images(root: Path, info: ProductInfo, native: dict[str, np.ndarray], scl: np.ndarray | None) -> list[str]:
    """Write every image file of the product; return the IMAGE_FILE entries."""
    auxiliary = _auxiliary_layers(native, info, scl)
    entries = []
    for rel, layer, res in _image_files(info):
        if layer in auxiliary:
            source = auxiliary[layer]
            if layer == "TCI":
                array = np.stack([_resample(channel, 10, res) for channel in source])
            else:
                array = _resample(source, 10, res, categorical=layer == "SCL")
        else:
            array = _resample(native[layer], BY_NAME[layer].resolution, res)
        _write_jp2(root / f"{rel}.jp2", array, info, res)
        entries.append(rel)
    return entries


def write_product(
    out_dir: Path,
    info: ProductInfo,
    native: dict[str, np.ndarray],
    *,
    zipped: bool = False,
    scl: np.ndarray | None = None,
) -> Path:
    """Write a SAFE product from native-resolution DN arrays; atomic (temp, then rename).

    ``native`` maps each band of the level to its uint16 DN array at its native resolution.
    Returns the ``.SAFE`` folder or the ``.zip`` holding it.
    """
    missing = [b for b in LEVEL_BANDS[info.level] if b not in native]
    if missing:
        raise ValueError(f"no data for band(s) {missing}")
    shape_10m = tuple(s * BY_NAME["B01"].resolution // 10 for s in native["B01"].shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / (f"{info.name}.zip" if zipped else f"{info.name}.SAFE")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        root = Path(tmp) / f"{info.name}.SAFE"
        entries = write_images(root, info, native, scl)
        (root / f"MTD_MSIL{info.level[1:]}.xml").write_text(product_metadata_xml(info, entries, shape_10m))
        granule = root / "GRANULE" / info.granule
        (granule / "MTD_TL.xml").write_text(tile_metadata_xml(info, shape_10m))
        (granule / "QI_DATA").mkdir(exist_ok=True)
        (granule / "AUX_DATA").mkdir(exist_ok=True)
        datastrip = root / "DATASTRIP" / f"DS_2BPS_{info.generation:%Y%m%dT%H%M%S}_S{info.sensing:%Y%m%dT%H%M%S}"
        (datastrip / "QI_DATA").mkdir(parents=True)
        (datastrip / "MTD_DS.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-1C_DataStrip_ID/>\n')
        for folder in ("AUX_DATA", "HTML", "rep_info"):
            (root / folder).mkdir(exist_ok=True)
        (root / "INSPIRE.xml").write_text('<?xml version="1.0" encoding="UTF-8"?>\n<gmd:MD_Metadata xmlns:gmd="http://www.isotc211.org/2005/gmd"/>\n')
        listed = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        (root / "manifest.safe").write_text(manifest_xml(info, listed))
        staged = Path(tmp) / final.name
        if zipped:
            _zip_safe(root, staged)
        else:
            staged = root
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(staged, final)
    return final


def _zip_safe(root: Path, zip_path: Path) -> None:
    """Zip a SAFE folder as ESA distributes it: the ``.SAFE`` folder at the top."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root.parent).as_posix())
