"""``lc map REGION.yaml``: every product of a region mapped with one registered model, each
product a task on Dask distributed, then a mosaic per CRS and the region's agreement with
WorldCover.

- The model URI is resolved once, and every task maps with that version (a ``Production``
  that moves during the run changes nothing).
- A product whose map (``tiles/<product>.tif``) was written by the same model version is
  skipped. Maps are written atomically and their record (``<map>.json``) last, so a killed run
  started again redoes only what was not finished.
- A product that fails is recorded in ``region.json`` with its error; the others go on.
- By default a local cluster sized to the machine: one worker per GPU, else one per 8 cores
  (at least one, at most one per 4 GiB of memory), each mapping one product at a time with its
  share of the cores.
  ``--scheduler ADDRESS`` uses an existing cluster (its workers must see the same paths and
  MLflow store).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import Field

from lc.config import PredictConfig, Strict, read_settings
from lc.mapping.predict import record_path
from lc.raster import write_json_atomic

WORKER_MEMORY = 4 << 30  # a full 10980^2 tile peaks at 2.95 GiB in `lc predict`
# torch already spreads one product over the cores it is given: on 2 cores, two single-thread
# workers mapped at 0.92x the speed of one worker with both (bench_region.py). Beyond this many
# cores a worker is added (an assumption, not measured here: no machine with more cores).
CORES_PER_WORKER = 8


class RegionConfig(Strict):
    """A region to map: its products, where the maps go, the reference to compare them with."""

    name: str
    products: list[Path] = Field(default_factory=list, description="SAFE folders or zips")
    products_dir: Path | None = Field(None, description="map every *.SAFE and *.zip in this folder too")
    worldcover_dir: Path | None = Field(None, description="WorldCover tiles: each map's and the region's agreement")
    out: Path
    model: str = "models:/landcover/Production"
    predict: PredictConfig = PredictConfig()

    def all_products(self) -> list[Path]:
        found = sorted([*self.products_dir.glob("*.SAFE"), *self.products_dir.glob("*.zip")]) if self.products_dir else []
        products = [*self.products, *found]
        if not products:
            raise ValueError(f"region {self.name}: no product (give products or products_dir)")
        return list(dict.fromkeys(products))


def tile_map_path(out: Path, product: Path) -> Path:
    return out / "tiles" / (product.name.removesuffix(".zip").removesuffix(".SAFE") + ".tif")


def mapped_by(map_tif: Path) -> dict | None:
    """The record ``lc predict`` wrote once the map (and its evaluation) was finished, if any."""
    record = record_path(map_tif)
    if not (map_tif.exists() and record.exists()):
        return None
    return json.loads(record.read_text())


def same_model(record: dict | None, model: dict) -> bool:
    keys = [k for k in ("model_id", "model_version", "run_id") if k in model]
    return record is not None and bool(keys) and all(record.get(k) == model[k] for k in keys)


def default_workers() -> tuple[int, int]:
    """(workers, torch threads each) for a local cluster on this machine."""
    import psutil
    import torch

    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        return torch.cuda.device_count(), max(1, cores // torch.cuda.device_count())
    workers = max(1, min(cores // CORES_PER_WORKER, psutil.virtual_memory().total // WORKER_MEMORY))
    return workers, max(1, cores // workers)


def local_cluster(workers: int, threads: int):
    """A local Dask cluster of single-task workers whose processes start as ``lc`` itself does:
    glibc keeps the U-Net's large buffers (Dask's default trims them back to the kernel every
    step), the math libraries get the worker's share of the cores, progress bars stay off."""
    import dask
    from distributed import LocalCluster

    environ = {"MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", str(1 << 30)),
               "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", str(1 << 28)),
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
               "TQDM_DISABLE": "1"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def map_product(product: str, out_tif: str, model_uri: str, worldcover: list[str], settings: dict,
                threads: int) -> dict:
    """One task: map a product with ``lc predict``'s own function; what it took."""
    import torch

    from lc.mapping.predict import predict

    torch.set_num_threads(threads)
    device = "auto"
    try:
        from distributed import get_worker

        name = get_worker().name
        if torch.cuda.is_available() and isinstance(name, int):
            device = f"cuda:{name % torch.cuda.device_count()}"
    except ValueError:  # not on a Dask worker (a plain loop)
        pass
    start = time.perf_counter()
    summary = predict(model_uri, Path(product), Path(out_tif), worldcover=[Path(w) for w in worldcover] or None,
                      device=device, overwrite=True, tile=settings["chip_size"], overlap=settings["overlap"],
                      batch_size=settings["batch_size"], precision=settings["precision"])
    metrics = summary.get("metrics") or {}
    return {"status": "done", "map": out_tif, "seconds": round(time.perf_counter() - start, 1),
            "worker": f"{os.uname().nodename}/{os.getpid()}", "miou": metrics.get("miou"),
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> int:
    """This process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def map_region(region_yaml: Path, *, scheduler: str | None = None, workers: int | None = None,
               model: str | None = None, echo=print) -> dict:
    """Map every product of a region (skipping those done by this model version), then mosaic."""
    from distributed import Client, as_completed

    from lc.mapping.region_outputs import finish_region
    from lc.sources.worldcover import tiles_in
    from lc.tracking.models import resolve_model

    config = read_settings(region_yaml, RegionConfig)
    out = config.out
    model_uri = model or config.model
    resolved = resolve_model(model_uri)
    pinned = (f"models:/{resolved['registered_model']}/{resolved['model_version']}"
              if "model_version" in resolved else model_uri)
    worldcover = [str(p) for p in tiles_in(config.worldcover_dir)] if config.worldcover_dir else []
    state_path = out / "region.json"
    state = {"region": config.name, "model": model_uri, **resolved, "products": {}}
    todo = []
    for product in config.all_products():
        target = tile_map_path(out, product)
        if same_model(mapped_by(target), resolved):
            state["products"][product.name] = {"status": "done", "map": str(target), "skipped": True}
        else:
            todo.append((product, target))
    (out / "tiles").mkdir(parents=True, exist_ok=True)
    write_json_atomic(state, state_path)
    echo(f"region {config.name}: {len(state['products']) + len(todo)} products, {len(state['products'])} already "
         f"mapped by {pinned}, {len(todo)} to map")
    if todo:
        n, threads = (workers, max(1, (os.cpu_count() or 1) // workers)) if workers else default_workers()
        cluster = None if scheduler else local_cluster(n, threads)
        try:
            with Client(scheduler or cluster) as client:
                futures = {client.submit(map_product, str(p), str(t), pinned, worldcover,
                                         config.predict.model_dump(), threads, key=f"map-{p.name}", pure=False): p
                           for p, t in todo}
                for future in as_completed(futures):
                    product = futures[future]
                    try:
                        entry = future.result()
                    except Exception as exc:  # noqa: BLE001 - one product's failure is recorded, the rest go on
                        entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
                    state["products"][product.name] = entry
                    write_json_atomic(state, state_path)
                    echo(f"  {entry['status']:>6}  {product.name}" + (f"  {entry['seconds']} s" if "seconds" in entry
                                                                     else f"  {entry.get('error', '')}"))
        finally:
            if cluster is not None:
                cluster.close()
    state |= finish_region(out, [Path(e["map"]) for e in state["products"].values() if e["status"] == "done"],
                           bool(worldcover))
    write_json_atomic(state, state_path)
    return state
