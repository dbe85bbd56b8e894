"""The speed work: what each ONNX Runtime CPU lever gives, every figure a ratio in one run.

    pytest bench/bench_levers.py --benchmark-only [--benchmark-json levers.json]

* ``levers-session-fp32``: the fp32 model at batch 1 under each session setting. Baseline:
  the session ``edgeseg.runtime.ort_session.create_session`` builds (ORT_ENABLE_ALL, default threads).
  Variants: explicit/1 thread(s), lower optimisation levels, no NCHWc, no spinning, no
  arena, no memory pattern, I/O binding with a preallocated output, fetching both outputs.
  Also the unfused export (``edgeseg export --no-fuse``: BatchNorm and the decoder concat as
  trained) against the shipped fused one.
* ``levers-int8``: int8 recipes, each quantised here from ``X.onnx`` on 32 demo training
  slices (QDQ, MinMax; the normalisation and the first and last Conv kept float, exactly as
  ``edgeseg export --int8`` does, which tests/test_quantize.py checks), plus the
  shipped ``X_int8.onnx``. Baseline: ORT fp32. Each records ΔmIoU against fp32 on the demo
  test slices and the share of pixels whose label differs from fp32's (``extra_info``).

The model is the shipped ``export/model.onnx`` or ``$EDGESEG_BENCH_MODEL``. Plain ``pytest``
runs every case once, small (64x64 inputs, 2 calibration and 4 test slices), and checks its
answer: a session lever must not change the labels, a recipe must stay near fp32. Quantised
recipes are cached under ``$EDGESEG_HOME/bench-int8/<model sha256>/``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytest

from edgeseg import SHIPPED_MODEL
from edgeseg.artifacts import read_model_info
from edgeseg.data.split import SplitRecord, held_out, pick
from edgeseg.files import cache_dir
from edgeseg.runtime.measure import synthetic_batch
from edgeseg.runtime.ort_session import SessionLevers
from edgeseg.runtime.runners import RunnerSpec, open_runner

MODEL = Path(os.environ.get("EDGESEG_BENCH_MODEL", SHIPPED_MODEL))
THREADS = int(os.environ.get("EDGESEG_BENCH_THREADS", os.cpu_count() or 1))
SIZE, ROUNDS = 394, 15
SMOKE_SIZE, SMOKE_CALIB, SMOKE_TEST = 64, 2, 4  # plain pytest: one small round per case
CALIB_SLICES = 32  # demo training slices for calibration, as edgeseg export uses
MAX_DISAGREE, MAX_D_MIOU = 0.05, 0.03  # a recipe further than this from fp32 is broken, not fast


@dataclass(frozen=True)
class Int8Recipe:
    """One way to quantise; the fields map onto onnxruntime's quantize_static."""

    activations: str = "u8"  # u8 | s8
    weights: str = "s8"  # u8 | s8
    per_channel: bool = True  # one scale per output channel of each conv
    reduce_range: bool = False  # 7-bit weights: avoids VPMADDUBSW saturation on AVX2 (no VNNI)
    float_convs: bool = True  # first and last Conv kept float, as edgeseg export does
    ops: tuple[str, ...] = ()  # op types to quantise; () = quantize_static's default set
    upsample_as_conv: bool = False  # ConvTranspose 2x2/2 -> Conv 1x1 + DepthToSpace first
    unfused: bool = False  # start from X.pt's `--no-fuse` export instead of X.onnx


SESSION_CASES = [
    # id, runner spec (threads 0 = onnxruntime's default: one pinned thread per physical core)
    ("tuned (SessionLevers defaults)", RunnerSpec("ort", "cpu")),
    (f"threads={THREADS} explicit", RunnerSpec("ort", "cpu", threads=THREADS)),
    ("threads=1", RunnerSpec("ort", "cpu", threads=1)),
    ("level=DISABLE_ALL", RunnerSpec("ort", "cpu", levers=SessionLevers(level="ORT_DISABLE_ALL"))),
    ("level=BASIC", RunnerSpec("ort", "cpu", levers=SessionLevers(level="ORT_ENABLE_BASIC"))),
    ("level=EXTENDED", RunnerSpec("ort", "cpu", levers=SessionLevers(level="ORT_ENABLE_EXTENDED"))),
    ("ALL without NCHWc", RunnerSpec("ort", "cpu", levers=SessionLevers(nchwc=False))),
    ("spinning on", RunnerSpec("ort", "cpu", levers=SessionLevers(spinning=True))),
    ("arena off", RunnerSpec("ort", "cpu", levers=SessionLevers(arena=False))),
    ("mem pattern on", RunnerSpec("ort", "cpu", levers=SessionLevers(mem_pattern=True))),
    ("io binding, preallocated labels", RunnerSpec("ort", "cpu", io_binding=True)),
    ("fetch logits and labels", RunnerSpec("ort", "cpu", outputs=("logits", "labels"))),
]

INT8_CASES = [
    # id, recipe (None = the shipped X_int8.onnx), intra-op spinning
    ("shipped X_int8.onnx", None, True),
    ("u8s8 per-channel", Int8Recipe(), True),
    ("u8s8 per-channel, spinning off", Int8Recipe(), False),
    ("u8s8 per-channel reduce_range", Int8Recipe(reduce_range=True), True),
    ("u8u8 per-channel", Int8Recipe(weights="u8"), True),
    ("s8s8 per-channel", Int8Recipe(activations="s8"), True),
    ("u8s8 per-tensor", Int8Recipe(per_channel=False), True),
    ("u8s8 per-channel, Conv only", Int8Recipe(ops=("Conv",)), True),
    ("u8s8 per-channel, no ConvTranspose", Int8Recipe(ops=("Conv", "Concat", "MaxPool")), True),
    ("u8s8 per-channel, upsample as Conv+DepthToSpace", Int8Recipe(upsample_as_conv=True), True),
    ("u8s8 per-channel, upsample as Conv+DepthToSpace, spinning off", Int8Recipe(upsample_as_conv=True), False),
    ("u8s8 per-channel, unfused export (--no-fuse)", Int8Recipe(unfused=True), True),
]


@pytest.fixture(autouse=True, scope="module")
def _model_present() -> None:
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} not found: export the shipped model, or set EDGESEG_BENCH_MODEL")


@pytest.fixture(scope="module")
def smoke(request: pytest.FixtureRequest) -> bool:
    """True under plain pytest: each case runs once, small, and checks its answer."""
    return bool(request.config.getoption("benchmark_disable", False))


@pytest.fixture(scope="module")
def runtime_default() -> Callable[[np.ndarray], np.ndarray]:
    """The baseline: the fp32 runner `edgeseg infer --provider cpu` runs (edgeseg.runtime.runners)."""
    return open_runner(MODEL, RunnerSpec("ort", "cpu")).labels


def _time(benchmark, paired, predict, baseline, group: str, **info) -> None:  # noqa: ANN001
    """Time ``predict`` at batch 1, the baseline interleaved with every round (see conftest)."""
    x = synthetic_batch(1, SMOKE_SIZE if benchmark.disabled else SIZE)
    benchmark.group = group
    benchmark.extra_info.update(items=1, unit="slices", baseline=predict is baseline, threads=THREADS, **info)
    if predict is baseline:
        predict(x)
        benchmark.pedantic(predict, args=(x,), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    else:
        paired(benchmark, predict, baseline, (x,), ROUNDS)


def test_runtime_default_session(benchmark, paired, runtime_default) -> None:  # noqa: ANN001
    _time(benchmark, paired, runtime_default, runtime_default, "levers-session-fp32")


@pytest.mark.parametrize("name,spec", SESSION_CASES, ids=[c[0] for c in SESSION_CASES])
def test_session_lever(benchmark, paired, runtime_default, name: str, spec: RunnerSpec) -> None:  # noqa: ANN001
    predict = open_runner(MODEL, spec).labels
    _time(benchmark, paired, predict, runtime_default, "levers-session-fp32", runner=asdict(spec))
    # A lever changes speed, never the answer (float reassociation may move a rare tie).
    x = synthetic_batch(1, SMOKE_SIZE)
    assert np.mean(predict(x) == runtime_default(x)) >= 0.999, name


def unfused_model(folder: Path) -> Path:
    """``X.pt`` exported with ``fuse=False`` into ``folder`` (cached); skips without ``X.pt``."""
    from edgeseg.export.onnx import export_onnx

    checkpoint = MODEL.with_suffix(".pt")
    if not checkpoint.is_file():
        pytest.skip(f"{checkpoint} not found: the unfused export needs the checkpoint")
    path = folder / "unfused.onnx"
    if not path.is_file():
        export_onnx(checkpoint, path, fuse=False)
    return path


def test_unfused_export(benchmark, paired, runtime_default, study: _Int8Study) -> None:  # noqa: ANN001
    predict = open_runner(unfused_model(study.cache), RunnerSpec("ort", "cpu")).labels
    _time(benchmark, paired, predict, runtime_default, "levers-session-fp32", graph="unfused")
    x = synthetic_batch(1, SMOKE_SIZE)
    assert np.mean(predict(x) == runtime_default(x)) >= 0.999, "the unfused graph computes another model"


# ----------------------------------------------------------------------------- int8 recipes


def quantize_recipe(src: Path, dst: Path, recipe: Int8Recipe, calib: list[np.ndarray]) -> Path:
    """Static QDQ int8 model of ``src`` by ``recipe`` (edgeseg.export.quantize's flow, parametrised)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgeseg.export.quantize import SliceReader
    from edgeseg.export.quantize_nodes import float_nodes, normalization_nodes

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    pre = dst.with_suffix(".pre.onnx")
    if recipe.upsample_as_conv:
        rewritten = dst.with_suffix(".upsample.onnx")
        onnx.save(upsample_as_conv(onnx.load(str(src))), str(rewritten))
        _check_same_logits(src, rewritten, calib[0])
        src = rewritten
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(dst),
        SliceReader(calib),
        quant_format=QuantFormat.QDQ,
        activation_type=types[recipe.activations],
        weight_type=types[recipe.weights],
        per_channel=recipe.per_channel,
        reduce_range=recipe.reduce_range,
        op_types_to_quantize=list(recipe.ops) or None,
        nodes_to_exclude=(float_nodes if recipe.float_convs else normalization_nodes)(onnx.load(str(pre))),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"CalibStridedMinMax": 1, "WeightSymmetric": True},
    )
    for temp in (pre, dst.with_suffix(".upsample.onnx")):
        temp.unlink(missing_ok=True)
    return dst


def _check_same_logits(a: Path, b: Path, image: np.ndarray) -> None:
    """The rewrite must not change the fp32 model: logits equal to 1e-4 at two sizes."""
    import onnxruntime as ort

    for crop in (image, image[:131, :97]):  # the slice and an odd, non-square crop
        x = crop[None, None].astype(np.float32)
        la, lb = (ort.InferenceSession(str(p)).run(["logits"], {"image": x})[0] for p in (a, b))
        assert np.abs(la - lb).max() <= 1e-4 * max(1.0, np.abs(la).max()), "rewrite changed logits"


def upsample_as_conv(proto):  # noqa: ANN001, ANN201  (onnx.ModelProto, imported lazily)
    """Rewrite every ConvTranspose 2x2 stride 2 as Conv 1x1 (4x channels) + DepthToSpace(CRD).

    Exact (the same products and sums): ``out[co, 2i+a, 2j+b] = sum_ci x[ci, i, j] W[ci, co,
    a, b]`` is a 1x1 conv to channel ``4 co + 2 a + b`` followed by DepthToSpace. ORT has no
    int8 ConvTranspose (onnxruntime#8988), so this lets the upsampling run as QLinearConv.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not (
            node.op_type == "ConvTranspose"
            and node.input[1] in inits
            and list(attrs.get("kernel_shape", [])) == [2, 2]
            and list(attrs.get("strides", [])) == [2, 2]
            and not any(attrs.get("pads", []))
            and attrs.get("group", 1) == 1
            and not any(attrs.get("output_padding", []))
        ):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])  # (Cin, Cout, 2, 2)
        cin, cout = weight.shape[:2]
        conv_w = weight.transpose(1, 2, 3, 0).reshape(cout * 4, cin, 1, 1)  # (co, a, b) x ci
        names = [node.input[0], f"{node.input[1]}_1x1"]
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(conv_w), names[1]))
        if len(node.input) > 2 and node.input[2]:
            bias = np.repeat(numpy_helper.to_array(inits[node.input[2]]), 4)
            names.append(f"{node.input[2]}_1x1")
            graph.initializer.append(numpy_helper.from_array(bias, names[2]))
        mid = f"{node.output[0]}_depth"
        nodes.append(helper.make_node("Conv", names, [mid], f"{node.name}_1x1", kernel_shape=[1, 1]))
        nodes.append(
            helper.make_node("DepthToSpace", [mid], list(node.output), f"{node.name}_d2s", blocksize=2, mode="CRD")
        )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


class _Int8Study:
    """Calibration and test slices, the fp32 reference labels, and the recipe cache."""

    def __init__(self, smoke: bool) -> None:
        # The model's own split: calibrate on its training slices, score on its held-out ones.
        record = SplitRecord.from_metadata(read_model_info(MODEL).metadata, MODEL)
        held = held_out(record)
        self.calib = pick(held.train_images, SMOKE_CALIB if smoke else CALIB_SLICES)
        self.test = held.limited(SMOKE_TEST if smoke else None)
        sha = hashlib.sha256(MODEL.read_bytes()).hexdigest()[:16]
        self.cache = cache_dir() / "bench-int8" / (f"{sha}-smoke" if smoke else sha)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.reference = self.labels(MODEL)
        self.reference_miou = self.miou(self.reference)

    def labels(self, path: Path) -> list[np.ndarray]:
        predict = open_runner(path, RunnerSpec("ort", "cpu", threads=THREADS)).labels
        return [predict(img[None, None])[0] for img in self.test.images]

    def miou(self, labels: list[np.ndarray]) -> float:
        from edgeseg.metrics import evaluate_arrays

        return float(evaluate_arrays(labels, self.test.masks, 3)["miou_fg"])

    def model(self, recipe: Int8Recipe | None) -> Path:
        if recipe is None:
            return MODEL.with_name(f"{MODEL.stem}_int8.onnx")
        key = hashlib.sha256(repr(asdict(recipe)).encode()).hexdigest()[:12]
        path = self.cache / f"{key}.onnx"
        if not path.is_file():
            src = unfused_model(self.cache) if recipe.unfused else MODEL
            quantize_recipe(src, path.with_suffix(".tmp.onnx"), recipe, self.calib)
            os.replace(path.with_suffix(".tmp.onnx"), path)
        return path


@pytest.fixture(scope="module")
def study(smoke: bool) -> _Int8Study:
    return _Int8Study(smoke)


def test_int8_baseline_fp32(benchmark, paired, runtime_default, study: _Int8Study) -> None:  # noqa: ANN001
    _time(
        benchmark,
        paired,
        runtime_default,
        runtime_default,
        "levers-int8",
        miou_fg=study.reference_miou,
        delta_miou_pt=0.0,
        disagree_pct=0.0,
    )


@pytest.mark.parametrize("name,recipe,spinning", INT8_CASES, ids=[c[0] for c in INT8_CASES])
def test_int8_recipe(
    benchmark,
    paired,
    runtime_default,
    study: _Int8Study,
    name: str,  # noqa: ANN001
    recipe: Int8Recipe | None,
    spinning: bool,
) -> None:
    path = study.model(recipe)
    if not path.is_file():
        pytest.skip(f"{path} not found: run `edgeseg export --int8`")
    labels = study.labels(path)
    miou = study.miou(labels)
    disagree = float(np.mean([np.mean(a != b) for a, b in zip(labels, study.reference, strict=True)]))
    spec = RunnerSpec("ort", "cpu", levers=SessionLevers(spinning=spinning))
    _time(
        benchmark,
        paired,
        open_runner(path, spec).labels,
        runtime_default,
        "levers-int8",
        miou_fg=miou,
        delta_miou_pt=100 * (miou - study.reference_miou),
        disagree_pct=100 * disagree,
        recipe=asdict(recipe) if recipe else "shipped",
    )
    # Fast because it computes something else is not a lever: every recipe stays near fp32.
    assert disagree <= MAX_DISAGREE and abs(miou - study.reference_miou) <= MAX_D_MIOU, (name, disagree, miou)
