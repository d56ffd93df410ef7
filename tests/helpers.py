"""Small real products for tests, generated on the fly."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

from lc.synth.products import DEFAULT_PRODUCTS, ProductSpec, synthesize

TINY = 60  # px at 10 m: 30 px at 20 m, 10 px at 60 m


def make_products(out: Path, *specs: ProductSpec, size: int = TINY, seed: int = 0) -> dict:
    """Synthesize ``specs`` (default: the standard set) at a tiny size."""
    return synthesize(out, seed=seed, size=size, products=specs or DEFAULT_PRODUCTS)


def variant(spec: ProductSpec, **changes) -> ProductSpec:
    return replace(spec, **changes)


@contextmanager
def mlflow_store_in(folder: Path) -> Iterator[str]:
    """A fresh real MLflow store (SQLite + artifacts) in ``folder``, also the working directory."""
    patch = pytest.MonkeyPatch()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    patch.chdir(folder)
    mlflow.set_tracking_uri(uri)  # earlier tests in this process may have set another store...
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(experiment_id="0")  # ...and an active experiment that this one does not hold
    try:
        yield uri
    finally:
        patch.undo()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    """Return once ``url`` answers 200 while ``server`` runs; fail the test otherwise."""
    deadline = time.time() + seconds
    while time.time() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the MLflow UI did not answer on {url}")
