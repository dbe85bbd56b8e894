"""Cluster benchmark: scans per second through `edgeseg infer --cluster local:2` against one process.

    pytest bench/bench_cluster.py --benchmark-only

Group ``cluster-scans``: the same scans (NIfTI volumes of 4 real demo slices, 394x394 at the
model's 0.5 mm) segmented end to end (read, model, write .nii.gz, records, summary) by the
real ``run_inference``:

* ``single-process`` (baseline): this process, ONNX Runtime on every core, reads and writes
  overlapped in its thread pool;
* ``dask-local-2``: a LocalCluster of 2 worker processes, one scan at a time each, one ORT
  thread each (cores // workers). The cluster is started once per module, as a cluster
  is in use (its start-up, a few seconds, is in ``extra_info``); each round connects a
  client and runs. Paired (bench/conftest.py): the single-process run goes before every
  timed round, so the ratio is taken under the same load.

The model is the shipped ``export/model.onnx`` or ``$EDGESEG_BENCH_MODEL``. Plain ``pytest``
runs each case once on 2 scans of 64x64 as a smoke test.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL
from edgeseg.infer.run import InferConfig, run_inference

MODEL = Path(os.environ.get("EDGESEG_BENCH_MODEL", SHIPPED_MODEL))
SCANS, SLICES, FULL = 12, 4, 394  # per round when timed
SMOKE_SCANS, SMOKE = 2, 64
ROUNDS = 3


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[Path, int]:
    """``(folder, count)``: NIfTI volumes of real demo slices (0.5 mm pixels, no resampling)."""
    import nibabel as nib

    from edgeseg.data.dataset import load_slices
    from edgeseg.data.demo import build_demo

    if not MODEL.is_file():
        pytest.skip(f"{MODEL} not found: export the shipped model, or set EDGESEG_BENCH_MODEL")
    smoke = request.config.getoption("benchmark_disable", False)
    count, size = (SMOKE_SCANS, SMOKE) if smoke else (SCANS, FULL)
    images = load_slices(build_demo()).images
    root = tmp_path_factory.mktemp("cluster_scans")
    for i in range(count):
        stack = np.stack([images[(i * SLICES + k) % len(images)][:size, :size] for k in range(SLICES)], -1)
        nib.save(nib.Nifti1Image(stack.astype(np.int16), np.diag([0.5, 0.5, 1.0, 1.0])), root / f"scan{i:03d}.nii.gz")
    return root, count


@pytest.fixture(scope="module")
def cluster() -> tuple[str, float]:
    """``(scheduler address, start-up seconds)`` of the library's LocalCluster of 2 workers."""
    pytest.importorskip("distributed", reason="the cluster extra is not installed")
    from edgeseg.infer.cluster_connect import local_cluster

    start = time.perf_counter()
    with local_cluster(2) as lc:
        yield lc.scheduler_address, time.perf_counter() - start


def _run(src: Path, out: Path, cluster: str | None = None) -> None:
    report = run_inference([src], InferConfig(model=MODEL, out=out, overwrite=True, quiet=True, cluster=cluster))
    assert report.failed == 0 and report.done > 0


def test_single_process(benchmark, scans: tuple[Path, int], tmp_path: Path) -> None:
    src, count = scans
    benchmark.group = "cluster-scans"
    benchmark.extra_info.update(items=count, unit="scans", baseline=True, slices_per_scan=SLICES)
    benchmark.pedantic(
        _run,
        args=(src, tmp_path / "out"),
        rounds=1 if benchmark.disabled else ROUNDS,
        warmup_rounds=0 if benchmark.disabled else 1,
        iterations=1,
    )


def test_dask_local_2(benchmark, paired, scans: tuple[Path, int], cluster: tuple[str, float], tmp_path: Path) -> None:
    (src, count), (address, startup) = scans, cluster
    benchmark.group = "cluster-scans"
    benchmark.extra_info.update(items=count, unit="scans", slices_per_scan=SLICES, cluster_startup_s=round(startup, 2))
    paired(benchmark, lambda: _run(src, tmp_path / "out", address), lambda: _run(src, tmp_path / "single"), (), ROUNDS)
    assert len(list((tmp_path / "out").glob("*_seg.nii.gz"))) == count
