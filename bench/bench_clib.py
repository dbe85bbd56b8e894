"""What Python costs against C on one OpenVINO model: libedgeseg (ctypes) vs OpenVINO's Python API.

    edgeseg build-c && pytest bench/bench_clib.py --benchmark-only

* ``c-vs-python-openvino``: one 394x394 slice per call, f32, 2 threads, LATENCY hint, the same
  file. Baseline: ``openvino.InferRequest.infer``. ``c-openvino`` is timed with the baseline run
  before every round (``paired`` in bench/conftest.py), so the ratio is taken under the same
  load on a shared machine.

Needs the library: ``edgeseg build-c`` (or ``$EDGESEG_CLIB``); skipped with the reason otherwise.
The model is the shipped ``export/model.onnx`` or ``$EDGESEG_BENCH_MODEL``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL
from edgeseg.runtime.measure import synthetic_batch
from edgeseg.runtime.runners import RunnerSpec, open_runner

MODEL = Path(os.environ.get("EDGESEG_BENCH_MODEL", SHIPPED_MODEL))
THREADS, SIZE, ROUNDS = 2, 394, 30


@pytest.fixture(scope="module")
def runners() -> dict:
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    from edgeseg.runtime.cbackend import why_unavailable

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    # both compile the input's static shape (each runner's default): the same graph on both sides
    spec = RunnerSpec("openvino", "cpu", "fp32", THREADS, shapes="static")
    return {
        "openvino": open_runner(MODEL, spec),
        "c-openvino": open_runner(MODEL, RunnerSpec("c-openvino", threads=THREADS)),
    }


@pytest.mark.parametrize("provider", ["openvino", "c-openvino"])
def test_c_vs_python_openvino(benchmark, paired, runners: dict, provider: str) -> None:  # noqa: ANN001
    x = synthetic_batch(1, SIZE)
    benchmark.group = "c-vs-python-openvino"
    benchmark.extra_info.update(
        items=1, unit="slices", baseline=provider == "openvino", backend=runners[provider].label, threads=THREADS
    )
    if provider == "openvino":
        benchmark.pedantic(
            runners[provider].labels,
            args=(x,),
            rounds=1 if benchmark.disabled else ROUNDS,
            warmup_rounds=0 if benchmark.disabled else 2,
            iterations=1,
        )
    else:
        paired(benchmark, runners[provider].labels, runners["openvino"].labels, (x,), ROUNDS)
    # The C library computes what OpenVINO's Python API computes, label for label.
    np.testing.assert_array_equal(runners[provider].labels(x), runners["openvino"].labels(x))
