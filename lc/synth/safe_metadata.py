"""SAFE metadata as ESA writes it: product identity and names, ``MTD_MSIL1C.xml`` /
``MTD_MSIL2A.xml``, ``MTD_TL.xml`` and ``manifest.safe`` (PSD 14/15 element names).
Baselines from 04.00 carry the -1000 radiometric offsets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from lc.sentinel2.bands import BANDS

QUANTIFICATION = 10000
SOLAR_IRRADIANCE = (1874.3, 1959.75, 1824.93, 1512.79, 1425.78, 1291.13, 1175.57, 1041.28, 953.93, 817.58, 365.41, 247.08, 87.75)
BANDWIDTH_NM = (45, 66, 36, 31, 15, 15, 20, 106, 21, 20, 31, 91, 175)



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
    view_zenith: float = 0.0  # the generator's sensor looks straight down (spectra.top_of_atmosphere)
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
    viewing = "\n".join(
        f'        <Mean_Viewing_Incidence_Angle bandId="{i}">\n          <ZENITH_ANGLE unit="deg">{info.view_zenith}'
        f'</ZENITH_ANGLE>\n          <AZIMUTH_ANGLE unit="deg">0.0</AZIMUTH_ANGLE>\n        </Mean_Viewing_Incidence_Angle>'
        for i in range(13)
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
      <Mean_Viewing_Incidence_Angle_List>
{viewing}
      </Mean_Viewing_Incidence_Angle_List>
    </Tile_Angles>
  </n1:Geometric_Info>
  <n1:Quality_Indicators_Info metadataLevel="Standard">
    <Image_Content_QI>
      <CLOUDY_PIXEL_PERCENTAGE>{info.cloud_cover}</CLOUDY_PIXEL_PERCENTAGE>
    </Image_Content_QI>
  </n1:Quality_Indicators_Info>
</n1:Level-{lvl}_Tile_ID>
"""


def manifest_xml(info: ProductInfo, files: dict[str, bytes]) -> str:
    """``manifest.safe``: the product's data objects by relative path, with their size and MD5, as ESA lists them."""
    objects = "\n".join(
        f'    <dataObject ID="{PurePosixPath(f).name}"><byteStream mimeType="application/octet-stream" '
        f'size="{len(data)}"><fileLocation locatorType="URL" href="./{f}"/>'
        f'<checksum checksumName="MD5">{hashlib.md5(data).hexdigest()}</checksum></byteStream></dataObject>'
        for f, data in files.items()
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
