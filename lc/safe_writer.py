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
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from lc.bands import BANDS, BY_NAME, LEVEL_BANDS

QUANTIFICATION = 10000
OFFSET_SINCE_BASELINE = "04.00"
SOLAR_IRRADIANCE = (1874.3, 1959.75, 1824.93, 1512.79, 1425.78, 1291.13, 1175.57, 1041.28, 953.93, 817.58, 365.41, 247.08, 87.75)
BANDWIDTH_NM = (45, 66, 36, 31, 15, 15, 20, 106, 21, 20, 31, 91, 175)
JP2_OPTIONS = {"QUALITY": 100, "REVERSIBLE": "YES", "RESOLUTIONS": 1}


@dataclass(frozen=True)
class ProductInfo:
    """Identity of a product: what ESA encodes in its names and metadata."""

    level: str  # L1C | L2A
    baseline: str  # e.g. "03.01", "05.10"
    tile: str  # MGRS id without the T, e.g. "34SEJ"
    epsg: int
    ulx: float
    uly: float
    sensing: datetime
    spacecraft: str = "Sentinel-2B"
    relative_orbit: int = 93
    absolute_orbit: int = 23912
    sun_zenith: float = 40.0
    sun_azimuth: float = 155.0
    cloud_cover: float = 0.0

    @property
    def has_offset(self) -> bool:
        return tuple(map(int, self.baseline.split("."))) >= (4, 0)

    @property
    def add_offset(self) -> int:
        return -1000 if self.has_offset else 0

    @property
    def generation(self) -> datetime:
        return self.sensing + timedelta(hours=2, minutes=17, seconds=48)

    @property
    def name(self) -> str:
        unit = "S2A" if self.spacecraft.endswith("A") else "S2B"
        return (
            f"{unit}_MSI{self.level}_{self.sensing:%Y%m%dT%H%M%S}_N{self.baseline.replace('.', '')}"
            f"_R{self.relative_orbit:03d}_T{self.tile}_{self.generation:%Y%m%dT%H%M%S}"
        )

    @property
    def granule(self) -> str:
        return f"{self.level}_T{self.tile}_A{self.absolute_orbit:06d}_{self.sensing + timedelta(seconds=195):%Y%m%dT%H%M%S}"

    def image_stem(self, band: str, resolution: int | None = None) -> str:
        stem = f"T{self.tile}_{self.sensing:%Y%m%dT%H%M%S}_{band}"
        return stem if resolution is None else f"{stem}_{resolution}m"


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


def _footprint(info: ProductInfo, shape_10m: tuple[int, int]) -> str:
    h, w = shape_10m
    xs = [info.ulx, info.ulx + w * 10, info.ulx + w * 10, info.ulx, info.ulx]
    ys = [info.uly, info.uly, info.uly - h * 10, info.uly - h * 10, info.uly]
    lons, lats = warp_transform(CRS.from_epsg(info.epsg), CRS.from_epsg(4326), xs, ys)
    return " ".join(f"{lat:.10f} {lon:.10f}" for lat, lon in zip(lats, lons))


def _spectral_information() -> str:
    rows = []
    for i, b in enumerate(BANDS):
        half = BANDWIDTH_NM[i] / 2
        rows.append(
            f'        <Spectral_Information bandId="{i}" physicalBand="{b.esa_name}">\n'
            f"          <RESOLUTION>{b.resolution}</RESOLUTION>\n"
            f"          <Wavelength>\n"
            f'            <MIN unit="nm">{round(b.wavelength - half)}</MIN>\n'
            f'            <MAX unit="nm">{round(b.wavelength + half)}</MAX>\n'
            f'            <CENTRAL unit="nm">{b.wavelength}</CENTRAL>\n'
            f"          </Wavelength>\n"
            f"        </Spectral_Information>"
        )
    return "\n".join(rows)


def _offsets(info: ProductInfo) -> str:
    if not info.has_offset:
        return ""
    tag, wrapper = ("RADIO_ADD_OFFSET", "Radiometric_Offset_List") if info.level == "L1C" else ("BOA_ADD_OFFSET", "BOA_ADD_OFFSET_VALUES_LIST")
    lines = "\n".join(f'        <{tag} band_id="{i}">{info.add_offset}</{tag}>' for i in range(len(BANDS)))
    return f"            <{wrapper}>\n{lines}\n            </{wrapper}>\n"


def _quantification(info: ProductInfo) -> str:
    if info.level == "L1C":
        return f'            <QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</QUANTIFICATION_VALUE>\n'
    return (
        "            <QUANTIFICATION_VALUES_LIST>\n"
        f'                <BOA_QUANTIFICATION_VALUE unit="none">{QUANTIFICATION}</BOA_QUANTIFICATION_VALUE>\n'
        '                <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
        '                <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
        "            </QUANTIFICATION_VALUES_LIST>\n"
    )


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def product_metadata_xml(info: ProductInfo, image_files: list[str], shape_10m: tuple[int, int]) -> str:
    """``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` with ESA's element names."""
    lvl = "1C" if info.level == "L1C" else "2A"
    unit = "S2A" if info.spacecraft.endswith("A") else "S2B"
    gen = f"{info.generation:%Y%m%dT%H%M%S}"
    ds = f"{unit}_OPER_MSI_{info.level}_DS_2BPS_{gen}_S{info.sensing:%Y%m%dT%H%M%S}_N{info.baseline}"
    tl = f"{unit}_OPER_MSI_{info.level}_TL_2BPS_{gen}_A{info.absolute_orbit:06d}_T{info.tile}_N{info.baseline}"
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    irradiance = "\n".join(
        f'          <SOLAR_IRRADIANCE bandId="{i}" unit="W/m²/µm">{v}</SOLAR_IRRADIANCE>' for i, v in enumerate(SOLAR_IRRADIANCE)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{lvl}_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{lvl}.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{lvl}.xsd">
    <n1:General_Info>
        <Product_Info>
            <PRODUCT_START_TIME>{_iso(info.sensing)}</PRODUCT_START_TIME>
            <PRODUCT_STOP_TIME>{_iso(info.sensing)}</PRODUCT_STOP_TIME>
            <PRODUCT_URI>{info.name}.SAFE</PRODUCT_URI>
            <PROCESSING_LEVEL>Level-{lvl}</PROCESSING_LEVEL>
            <PRODUCT_TYPE>S2MSI{lvl}</PRODUCT_TYPE>
            <PROCESSING_BASELINE>{info.baseline}</PROCESSING_BASELINE>
            <PRODUCT_DOI>https://doi.org/10.5270/S2_-{'742ikth' if lvl == '1C' else 'znk9xsj'}</PRODUCT_DOI>
            <GENERATION_TIME>{info.generation:%Y-%m-%dT%H:%M:%S}.000000Z</GENERATION_TIME>
            <PREVIEW_IMAGE_URL>Not applicable</PREVIEW_IMAGE_URL>
            <PREVIEW_GEO_INFO>Not applicable</PREVIEW_GEO_INFO>
            <Datatake datatakeIdentifier="G{unit}_{info.sensing:%Y%m%dT%H%M%S}_{info.absolute_orbit:06d}_N{info.baseline}">
                <SPACECRAFT_NAME>{info.spacecraft}</SPACECRAFT_NAME>
                <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
                <DATATAKE_SENSING_START>{_iso(info.sensing)}</DATATAKE_SENSING_START>
                <SENSING_ORBIT_NUMBER>{info.relative_orbit}</SENSING_ORBIT_NUMBER>
                <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
            </Datatake>
            <Query_Options completeSingleTile="true">
                <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
            </Query_Options>
            <Product_Organisation>
                <Granule_List>
                    <Granule datastripIdentifier="{ds}" granuleIdentifier="{tl}" imageFormat="JPEG2000">
{files}
                    </Granule>
                </Granule_List>
            </Product_Organisation>
        </Product_Info>
        <Product_Image_Characteristics>
            <Special_Values>
                <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
                <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
            </Special_Values>
            <Special_Values>
                <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
                <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
            </Special_Values>
            <Image_Display_Order>
                <RED_CHANNEL>3</RED_CHANNEL>
                <GREEN_CHANNEL>2</GREEN_CHANNEL>
                <BLUE_CHANNEL>1</BLUE_CHANNEL>
            </Image_Display_Order>
{_quantification(info)}{_offsets(info)}            <Reflectance_Conversion>
                <U>1.00552207036312</U>
                <Solar_Irradiance_List>
{irradiance}
                </Solar_Irradiance_List>
            </Reflectance_Conversion>
            <Spectral_Information_List>
{_spectral_information()}
            </Spectral_Information_List>
        </Product_Image_Characteristics>
    </n1:General_Info>
    <n1:Geometric_Info>
        <Product_Footprint>
            <Product_Footprint>
                <Global_Footprint>
                    <EXT_POS_LIST>{_footprint(info, shape_10m)}</EXT_POS_LIST>
                </Global_Footprint>
            </Product_Footprint>
            <RASTER_CS_TYPE>POINT</RASTER_CS_TYPE>
            <PIXEL_ORIGIN>1</PIXEL_ORIGIN>
        </Product_Footprint>
        <Coordinate_Reference_System>
            <GEO_TABLES version="1">EPSG</GEO_TABLES>
            <HORIZONTAL_CS_TYPE>GEOGRAPHIC</HORIZONTAL_CS_TYPE>
        </Coordinate_Reference_System>
    </n1:Geometric_Info>
    <n1:Quality_Indicators_Info>
        <Cloud_Coverage_Assessment>{info.cloud_cover}</Cloud_Coverage_Assessment>
    </n1:Quality_Indicators_Info>
</n1:Level-{lvl}_User_Product>
"""


def tile_metadata_xml(info: ProductInfo, shape_10m: tuple[int, int]) -> str:
    """The granule's ``MTD_TL.xml`` with its ``Tile_Geocoding``."""
    lvl = "1C" if info.level == "L1C" else "2A"
    unit = "S2A" if info.spacecraft.endswith("A") else "S2B"
    gen = f"{info.generation:%Y%m%dT%H%M%S}"
    h, w = shape_10m
    zone, hemisphere = info.epsg % 100, "N" if info.epsg // 100 == 326 else "S"
    sizes = "\n".join(
        f'      <Size resolution="{r}">\n        <NROWS>{h * 10 // r}</NROWS>\n        <NCOLS>{w * 10 // r}</NCOLS>\n      </Size>'
        for r in (10, 20, 60)
    )
    positions = "\n".join(
        f'      <Geoposition resolution="{r}">\n        <ULX>{info.ulx:g}</ULX>\n        <ULY>{info.uly:g}</ULY>\n'
        f"        <XDIM>{r}</XDIM>\n        <YDIM>-{r}</YDIM>\n      </Geoposition>"
        for r in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-{lvl}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-{lvl}_Tile_Metadata.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">{unit}_OPER_MSI_{info.level}_TL_2BPS_{gen}_A{info.absolute_orbit:06d}_T{info.tile}_N{info.baseline}</TILE_ID>
    <DATASTRIP_ID metadataLevel="Standard">{unit}_OPER_MSI_{info.level}_DS_2BPS_{gen}_S{info.sensing:%Y%m%dT%H%M%S}_N{info.baseline}</DATASTRIP_ID>
    <DOWNLINK_PRIORITY metadataLevel="Standard">NOMINAL</DOWNLINK_PRIORITY>
    <SENSING_TIME metadataLevel="Standard">{info.sensing:%Y-%m-%dT%H:%M:%S.%f}Z</SENSING_TIME>
    <Archiving_Info metadataLevel="Expertise">
      <ARCHIVING_CENTRE>2BPS</ARCHIVING_CENTRE>
      <ARCHIVING_TIME>{info.generation:%Y-%m-%dT%H:%M:%S}.000000Z</ARCHIVING_TIME>
    </Archiving_Info>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone {zone}{hemisphere}</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{info.epsg}</HORIZONTAL_CS_CODE>
{sizes}
{positions}
    </Tile_Geocoding>
    <Tile_Angles metadataLevel="Standard">
      <Mean_Sun_Angle>
        <ZENITH_ANGLE unit="deg">{info.sun_zenith}</ZENITH_ANGLE>
        <AZIMUTH_ANGLE unit="deg">{info.sun_azimuth}</AZIMUTH_ANGLE>
      </Mean_Sun_Angle>
    </Tile_Angles>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info metadataLevel="Standard">
    <Image_Content_QI>
      <CLOUDY_PIXEL_PERCENTAGE>{info.cloud_cover}</CLOUDY_PIXEL_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
</n1:Level-{lvl}_Tile_ID>
"""


def _manifest_xml(info: ProductInfo, files: list[str]) -> str:
    objects = "\n".join(
        f'    <dataObject ID="{Path(f).name}"><byteStream mimeType="application/octet-stream">'
        f'<fileLocation locatorType="URL" href="./{f}"/></byteStream></dataObject>'
        for f in files
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" version="esa/safe/sentinel/1.1/sentinel-2/msi/archive_l{info.level[1:].lower()}_user_product">
  <informationPackageMap>
    <xfdu:contentUnit unitType="Product_Level-{info.level[1:]}" textInfo="SENTINEL-2 MSI Level-{info.level[1:]} User Product"/>
  </informationPackageMap>
  <dataObjectSection>
{objects}
  </dataObjectSection>
</xfdu:XFDU>
"""


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
        listed = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        (root / "manifest.safe").write_text(_manifest_xml(info, listed))
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
