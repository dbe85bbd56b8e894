"""The aligned frame's shift alone, as the ONNX graph does it and as it could (issue 24, item 4).

    python bench/bench_shift.py [--runs 200] [--threads 2]

:func:`edgeseg.model_contract._window` cuts ``x[..., start + shift : ... + length]`` with a per-image
``shift`` in ``[0, grid)`` as a sum of ``grid`` static slices, each times ``shift == k`` (8 Slice,
8 Mul and 7 Add a side in ONNX, each a pass over the tensor). :func:`window_select` gives the same
values with ``log2(grid)`` Where nodes a side: it starts from the static slice ``grid - 1`` longer
than the window and, for each bit of ``shift`` (4, 2, 1), keeps either the first or the later part
of it. Where copies one of its inputs, so the result is bitwise the old one (the old one is exact
too: one weight is 1, the others 0), with about 3 passes a side instead of 23.

This script exports both, as the model uses them (the 1-channel input framed, the 3-class logits
cut back, each along rows and columns), checks that they agree bit for bit with numpy slicing for
every one of the 64 (shift_y, shift_x) pairs, and times them with ONNX Runtime in one process,
alternating, with the shipped int8 model timed in the same run for scale. Timings on a shared
machine are noise: read the ratios. The model itself is unchanged: using window_select in
:func:`edgeseg.model_contract.aligned_frame` means re-exporting every shipped file and re-running the parity
and metamorphic suites (tests/export/test_parity.py, tests/export/test_metamorphic.py), not done here.

Seen on the shared 2-core AMD EPYC (AVX2; load about 12, so only the ratios mean anything), 394²,
2 threads, 30 rounds: the old shift 54.5 ms a slice, 11.9 % of the shipped int8 model's 459 ms in
the same run; the Where shift 25.2 ms, 5.5 %: 0.46x the old one, bitwise the same output.
"""

from __future__ import annotations

import argparse
import io
import time
from statistics import median

import numpy as np
import torch

from edgeseg import SHIPPED_MODEL_DIR
from edgeseg.model_contract import ALIGN_MARGIN, _window

GRID = 8


def window_select(x: torch.Tensor, start: int, shift: torch.Tensor, length: int, dim: int, grid: int) -> torch.Tensor:
    """``x[n, ..., start + shift[n] : ... + length, ...]`` along ``dim`` by one Where per bit of ``shift``."""
    span = length + grid - 1
    x = x.narrow(dim, start, span)
    rest, step = shift, grid // 2
    while step >= 1:
        bit = rest >= step  # (N,) this bit of the shift
        rest = rest - step * bit.to(rest.dtype)
        span -= step
        x = torch.where(bit.view(-1, 1, 1, 1), x.narrow(dim, step, span), x.narrow(dim, 0, span))
        step //= 2
    return x


class Shift(torch.nn.Module):
    """The frame's two cuts of the padded input (1 channel) and the logits' two (3 classes), one way or
    the other, at the model's geometry for a ``size``² slice (frame side ``frame``)."""

    def __init__(self, window: object, size: int, frame: int) -> None:
        super().__init__()
        self.window, self.size, self.frame = window, size, frame

    def forward(self, x: torch.Tensor, logits: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor) -> tuple:
        g, m, cut = GRID, ALIGN_MARGIN, self.window
        framed = cut(cut(x, 0, g - 1 - sy, self.frame, 2, g), 0, g - 1 - sx, self.frame, 3, g)
        back = cut(cut(logits, m, sy, self.size, 2, g), m, sx, self.size, 3, g)
        return framed, back


def session(module: torch.nn.Module, threads: int, example: tuple) -> object:
    """ONNX Runtime on ``module`` exported as the model is (TorchScript exporter, opset 17)."""
    import onnxruntime as ort

    buffer = io.BytesIO()
    names = ["x", "logits", "sy", "sx"]
    torch.onnx.export(module, example, buffer, input_names=names, opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> dict:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=394)
    args = parser.parse_args(argv)
    size, g, m = args.size, GRID, ALIGN_MARGIN
    frame = -(-(size + 2 * m + g - 1) // g) * g  # aligned_frame's side: room for any shift, on the grid
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 1, frame + g - 1, frame + g - 1)).astype(np.float32)  # the padded input
    logits = rng.normal(size=(1, 3, frame, frame)).astype(np.float32)
    example = (torch.from_numpy(x), torch.from_numpy(logits), torch.zeros(1), torch.zeros(1))
    old = session(Shift(_window, size, frame), args.threads, example)
    new = session(Shift(window_select, size, frame), args.threads, example)

    def feed(sy: int, sx: int) -> dict:
        shifts = {"sy": np.array([sy], np.float32), "sx": np.array([sx], np.float32)}
        return {"x": x, "logits": logits, **shifts}

    for sy in range(g):  # bitwise the same as numpy slicing, every shift pair
        for sx in range(g):
            want_framed = x[..., g - 1 - sy : g - 1 - sy + frame, g - 1 - sx : g - 1 - sx + frame]
            want_back = logits[..., m + sy : m + sy + size, m + sx : m + sx + size]
            for s in (old, new):
                framed, back = s.run(None, feed(sy, sx))
                assert np.array_equal(framed, want_framed) and np.array_equal(back, want_back), (sy, sx)
    print(f"bitwise equal to numpy slicing for all {g * g} shift pairs, old and new")

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    model = ort.InferenceSession(
        str(SHIPPED_MODEL_DIR / "model_int8.onnx"), options, providers=["CPUExecutionProvider"]
    )
    image = {"image": rng.normal(500, 300, (1, 1, size, size)).astype(np.float32)}
    runs = {
        "old shift (Slice/Mul/Add)": lambda: old.run(None, feed(3, 5)),
        "new shift (Where)": lambda: new.run(None, feed(3, 5)),
        "the shipped int8 model, whole": lambda: model.run(None, image),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(args.runs):  # alternating: a change of load falls on all three
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    p50 = {k: 1e3 * median(v) for k, v in times.items()}
    whole = p50["the shipped int8 model, whole"]
    for k, v in p50.items():
        print(f"{k:<34} p50 {v:7.2f} ms  ({100 * v / whole:5.1f} % of the int8 model)")
    return p50


if __name__ == "__main__":
    main()
