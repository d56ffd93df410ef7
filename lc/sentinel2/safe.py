"""ESA SAFE products: discovery (folder or zip) and metadata (L1C/L2A, every baseline).

Everything comes from the metadata files — the level, processing baseline, quantification
value, per-band offsets, no-data value, band files and tile geocoding — never from file
names or dates. ``Reflectance = (DN + add_offset) / quantification_value``.
"""

from __future__ import annotations

import hashlib
import math
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lc.sentinel2.bands import BANDS, BY_NAME, LEVEL_BANDS

PRODUCT_TYPES = {"S2MSI1C": "L1C", "S2MSI2A": "L2A"}
_PRODUCT_MTD = re.compile(r"MTD_MSIL(1C|2A)\.xml$", re.IGNORECASE)
_BAND_IN_NAME = re.compile(r"_(B0[1-9]|B1[0-2]|B8A)(?:_(10|20|60)m)?$")


class ProductError(ValueError):
    """A product (or one of its files) that cannot be read; the message names the file."""


@dataclass(frozen=True)
class ProductMetadata:
    """What ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` says about the product."""

    level: str
    product_uri: str
    processing_baseline: str
    sensing_time: str
    spacecraft: str
    quantification_value: float
    nodata: int
    saturated: int
    add_offset: dict[str, int] | None  # ESA band name (B1..B12, B8A) -> offset; None before 04.00
    image_files: tuple[str, ...]  # paths relative to the SAFE root, without extension

    def offset(self, band: str) -> int:
        """The additive offset of band ``band`` (our name, e.g. ``B02``); 0 when none."""
        if self.add_offset is None:
            return 0
        return self.add_offset[BY_NAME[band].esa_name]


@dataclass(frozen=True)
class TileGeocoding:
    """What ``MTD_TL.xml`` says about the tile grid and the mean sun and viewing angles."""

    crs: str
    geoposition: dict[int, tuple[float, float]]  # resolution -> (ulx, uly)
    size: dict[int, tuple[int, int]]  # resolution -> (rows, cols)
    tile_id: str = ""
    sun_zenith: float | None = None  # degrees, the tile's mean (Tile_Angles); None where not given
    view_zenith: float | None = None  # degrees, mean over the bands' mean viewing incidence angles


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if _local(e.tag) == name]


def _text(root: ET.Element, name: str, source: str) -> str:
    found = _find_all(root, name)
    if not found or found[0].text is None:
        raise ProductError(f"{source}: element <{name}> is missing")
    return found[0].text.strip()


def _parse(xml: bytes, source: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ProductError(f"{source}: not valid XML ({exc})") from exc


def _special_value(root: ET.Element, text: str, source: str) -> int:
    for special in _find_all(root, "Special_Values"):
        if _text(special, "SPECIAL_VALUE_TEXT", source) == text:
            return int(_text(special, "SPECIAL_VALUE_INDEX", source))
    raise ProductError(f"{source}: no Special_Values entry for {text}")


def _offsets(root: ET.Element, element: str, source: str) -> dict[str, int] | None:
    entries = _find_all(root, element)
    if not entries:
        return None
    offsets = {}
    for entry in entries:
        band_id = int(entry.attrib["band_id"])
        if not 0 <= band_id < len(BANDS):
            raise ProductError(f"{source}: <{element}> has unknown band_id {band_id}")
        offsets[BANDS[band_id].esa_name] = int(float(entry.text or "0"))
    return offsets


def parse_product_metadata(xml: bytes, source: str = "MTD_MSIL*.xml") -> ProductMetadata:
    """Parse a product metadata file (``MTD_MSIL1C.xml`` or ``MTD_MSIL2A.xml``)."""
    root = _parse(xml, source)
    product_type = _text(root, "PRODUCT_TYPE", source)
    level = PRODUCT_TYPES.get(product_type)
    if level is None:
        raise ProductError(
            f"{source}: unknown product type {product_type!r}; expected one of {sorted(PRODUCT_TYPES)}"
        )
    quantification = "QUANTIFICATION_VALUE" if level == "L1C" else "BOA_QUANTIFICATION_VALUE"
    offset_element = "RADIO_ADD_OFFSET" if level == "L1C" else "BOA_ADD_OFFSET"
    datatake = _find_all(root, "SPACECRAFT_NAME")
    return ProductMetadata(
        level=level,
        product_uri=_text(root, "PRODUCT_URI", source),
        processing_baseline=_text(root, "PROCESSING_BASELINE", source),
        sensing_time=_text(root, "PRODUCT_START_TIME", source),
        spacecraft=(datatake[0].text or "").strip() if datatake else "",
        quantification_value=float(_text(root, quantification, source)),
        nodata=_special_value(root, "NODATA", source),
        saturated=_special_value(root, "SATURATED", source),
        add_offset=_offsets(root, offset_element, source),
        image_files=tuple((e.text or "").strip() for e in _find_all(root, "IMAGE_FILE")),
    )


def parse_tile_geocoding(xml: bytes, source: str = "MTD_TL.xml") -> TileGeocoding:
    """Parse the ``Tile_Geocoding`` of a granule's ``MTD_TL.xml``."""
    root = _parse(xml, source)
    geocoding = _find_all(root, "Tile_Geocoding")
    if not geocoding:
        raise ProductError(f"{source}: element <Tile_Geocoding> is missing")
    geo = geocoding[0]
    sizes = {
        int(s.attrib["resolution"]): (int(_text(s, "NROWS", source)), int(_text(s, "NCOLS", source)))
        for s in _find_all(geo, "Size")
    }
    positions = {
        int(p.attrib["resolution"]): (float(_text(p, "ULX", source)), float(_text(p, "ULY", source)))
        for p in _find_all(geo, "Geoposition")
    }
    tile_ids = _find_all(root, "TILE_ID")
    tile_id = ""
    if tile_ids and tile_ids[0].text:
        match = re.search(r"_T(\d{2}[A-Z]{3})_", tile_ids[0].text)
        tile_id = match.group(1) if match else ""
    return TileGeocoding(
        crs=_text(geo, "HORIZONTAL_CS_CODE", source),
        geoposition=positions,
        size=sizes,
        tile_id=tile_id,
        sun_zenith=_mean_zenith(root, "Mean_Sun_Angle", source),
        view_zenith=_mean_zenith(root, "Mean_Viewing_Incidence_Angle", source),
    )


def _mean_zenith(root: ET.Element, element: str, source: str) -> float | None:
    """The mean ``ZENITH_ANGLE`` (degrees) over every ``element``; None when none is given."""
    angles = [_text(e, "ZENITH_ANGLE", source) for e in _find_all(root, element)]
    try:
        values = [float(a) for a in angles]
    except ValueError as exc:
        raise ProductError(f"{source}: <{element}> has a ZENITH_ANGLE that is not a number ({exc})") from exc
    values = [v for v in values if not math.isnan(v)]  # real files write NaN where a band saw nothing
    if any(not 0 <= v < 90 for v in values):
        raise ProductError(f"{source}: <{element}> has a ZENITH_ANGLE outside [0, 90) degrees: {values}")
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Listed:
    """What ``manifest.safe`` says of one file: its size and, where given, its checksum."""

    size: int | None
    algorithm: str | None  # hashlib name: md5, sha3_256
    digest: str | None


CHECKSUMS = {"MD5": "md5", "SHA3-256": "sha3_256", "SHA-256": "sha256"}


def parse_manifest(xml: bytes, source: str = "manifest.safe") -> dict[str, Listed]:
    """Size and checksum of every data object a ``manifest.safe`` lists, by path in the product."""
    listed = {}
    for stream in _find_all(_parse(xml, source), "byteStream"):
        location = next(iter(_find_all(stream, "fileLocation")), None)
        if location is None or not location.get("href"):
            continue
        checksum = next(iter(_find_all(stream, "checksum")), None)
        algorithm = CHECKSUMS.get(checksum.get("checksumName", "").upper()) if checksum is not None else None
        size = stream.get("size")
        listed[location.get("href").removeprefix("./")] = Listed(
            int(size) if size else None, algorithm, (checksum.text or "").strip().lower() if algorithm else None)
    return listed


@dataclass
class SafeProduct:
    """A SAFE product on disk, as a ``.SAFE`` folder or a ``.zip`` holding one."""

    path: Path
    metadata: ProductMetadata
    tile: TileGeocoding
    band_files: dict[str, str]  # band name -> GDAL path of its native-resolution file
    listed: dict[str, Listed]  # band name -> what manifest.safe says of its file (bands it lists)

    @property
    def level(self) -> str:
        return self.metadata.level

    @property
    def bands(self) -> tuple[str, ...]:
        return LEVEL_BANDS[self.level]

    def check_band_file(self, band: str) -> None:
        """The band file has the size and checksum ``manifest.safe`` lists for it (ProductError if not)."""
        expected = self.listed.get(band)
        if expected is None:
            return
        container = _Container(self.path)
        try:
            name = container.name_of(self.band_files[band])
            size = container.size(name)
            if expected.size is not None and size != expected.size:
                raise ProductError(f"{self.band_files[band]}: {size} bytes, but manifest.safe lists {expected.size}: "
                                   "the file is truncated or corrupt (download the product again)")
            if expected.algorithm and container.digest(name, expected.algorithm) != expected.digest:
                raise ProductError(f"{self.band_files[band]}: its {expected.algorithm.upper()} differs from the one "
                                   "manifest.safe lists: the file is corrupt (download the product again)")
        finally:
            container.close()


class _Container:
    """Uniform read access to the files of a SAFE folder or zip."""

    def __init__(self, path: Path):
        self.path = path
        if path.is_dir():
            self.names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
            self._zip = None
        elif zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self.names = [n for n in self._zip.namelist() if not n.endswith("/")]
        elif path.exists():
            raise ProductError(f"{path}: neither a .SAFE folder nor a zip file")
        else:
            raise ProductError(f"{path}: no such product")

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def digest(self, name: str, algorithm: str) -> str:
        """The hex digest of a file, read in chunks."""
        with (self._zip.open(name) if self._zip is not None else (self.path / name).open("rb")) as f:
            return hashlib.file_digest(f, algorithm).hexdigest()

    def size(self, name: str) -> int:
        if self._zip is not None:
            return self._zip.getinfo(name).file_size
        return (self.path / name).stat().st_size

    def gdal_path(self, name: str) -> str:
        if self._zip is not None:
            return f"/vsizip/{self.path.resolve()}/{name}"
        return str(self.path / name)

    def name_of(self, gdal_path: str) -> str:
        """The container's name of a file from its GDAL path."""
        base = f"/vsizip/{self.path.resolve()}/" if self._zip is not None else f"{self.path}/"
        return gdal_path.removeprefix(base)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _product_mtd(container: _Container) -> str:
    candidates = sorted(
        (n for n in container.names if _PRODUCT_MTD.search(n) and n.count("/") <= 1),
        key=lambda n: n.count("/"),
    )
    if not candidates:
        raise ProductError(
            f"{container.path}: no MTD_MSIL1C.xml or MTD_MSIL2A.xml found — not a Sentinel-2 SAFE product"
        )
    return candidates[0]


def _band_files(meta: ProductMetadata, prefix: str, container: _Container) -> dict[str, str]:
    """Map each spectral band to its native-resolution file, from the IMAGE_FILE list."""
    by_band: dict[str, str] = {}
    for image in meta.image_files:
        match = _BAND_IN_NAME.search(PurePosixPath(image).name)
        if not match:
            continue  # TCI, AOT, WVP, SCL
        name, res = match.group(1), match.group(2)
        if res is not None and int(res) != BY_NAME[name].resolution:
            continue  # L2A's resampled copies at other resolutions
        by_band[name] = image
    missing_entries = [b for b in LEVEL_BANDS[meta.level] if b not in by_band]
    if missing_entries:
        raise ProductError(
            f"{container.path}: metadata lists no image file for band(s) {', '.join(missing_entries)}"
        )
    available = set(container.names)
    files = {}
    for band in LEVEL_BANDS[meta.level]:
        stem = prefix + by_band[band]
        found = next((stem + ext for ext in (".jp2", ".tif") if stem + ext in available), None)
        if found is None:
            raise ProductError(f"{container.path}: band file {by_band[band]}.jp2 is missing")
        files[band] = container.gdal_path(found)
    return files


def _granule_dir(meta: ProductMetadata, source: str) -> str:
    granules = {PurePosixPath(f).parts[1] for f in meta.image_files if f.startswith("GRANULE/")}
    if len(granules) != 1:
        raise ProductError(f"{source}: expected exactly one granule, found {len(granules)}")
    return f"GRANULE/{granules.pop()}"


def open_product(path: str | Path) -> SafeProduct:
    """Open a SAFE product (folder or zip) and read its metadata."""
    container = _Container(Path(path))
    try:
        mtd = _product_mtd(container)
        prefix = mtd.rsplit("/", 1)[0] + "/" if "/" in mtd else ""
        meta = parse_product_metadata(container.read(mtd), f"{path}: {mtd}")
        tl_name = f"{prefix}{_granule_dir(meta, f'{path}: {mtd}')}/MTD_TL.xml"
        if tl_name not in container.names:
            raise ProductError(f"{path}: tile metadata {tl_name} is missing")
        tile = parse_tile_geocoding(container.read(tl_name), f"{path}: {tl_name}")
        files = _band_files(meta, prefix, container)
        manifest = parse_manifest(container.read(prefix + "manifest.safe"), f"{path}: manifest.safe") \
            if prefix + "manifest.safe" in container.names else {}
        listed = {band: manifest[name] for band, file in files.items()
                  if (name := container.name_of(file).removeprefix(prefix)) in manifest}
    finally:
        container.close()
    return SafeProduct(path=Path(path), metadata=meta, tile=tile, band_files=files, listed=listed)
