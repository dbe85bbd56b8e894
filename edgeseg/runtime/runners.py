"""Running an edgeseg model: one runner abstraction over every backend.

Torch-free at import: numpy and the ONNX Runtime session builder (:mod:`edgeseg.runtime.ort_session`,
where providers are probed and :func:`~edgeseg.runtime.ort_session.create_session` lives); OpenVINO,
TensorRT, libedgeseg and PyTorch are imported only by the runner that needs them.

:func:`open_runner` loads a model on a backend described by a :class:`RunnerSpec` and
returns a :class:`Runner` (in the style of Polygraphy's runners): ``run(x)`` maps float32
raw intensities ``(N, 1, H, W)`` to the requested outputs, and ``label``/``precision``
say what really ran. ``edgeseg infer``, ``validate``, the int8 choice and ``edgeseg
bench`` all run models through it, so the benchmark times exactly what inference runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.artifacts import INPUT_NAME, engine_info, read_model_info
from edgeseg.errors import EdgesegError, describe
from edgeseg.runtime.ort_session import SessionLevers, create_session, default_trt_options

OV_SHAPES = 2  # compiled shapes an OpenVINO runner keeps: a volume's batch and its last, smaller one
PROBE_SHAPE = (1, 1, 16, 16)  # compiled at load to check the file and read what precision runs
BACKENDS = ("ort", "openvino", "c-openvino", "tensorrt-engine", "torch", "executorch")


@dataclass(frozen=True)
class RunnerSpec:
    """What to run a model on."""

    backend: str = "ort"  # one of BACKENDS
    device: str = "auto"  # ort: auto|cpu|cuda|tensorrt; the others run where they run
    precision: str = (
        "fp32"  # openvino: fp32|bf16|int8|default (edgeseg.runtime.openvino_backend); tensorrt: fp16 kernels
    )
    threads: int = 0  # intra-op threads; 0 = the backend's default (one per physical core)
    batch: int = 1  # largest batch that will be run (sizes the TensorRT profile)
    outputs: tuple[str, ...] = ("labels",)  # fetched by run(); labels only is the cheapest
    levers: SessionLevers = SessionLevers()  # ort only
    io_binding: bool = False  # ort only: bind a preallocated labels buffer per input shape
    hint: str = "latency"  # openvino only: latency (one request) | throughput (slices in parallel streams)
    streams: int = 0  # openvino throughput only: NUM_STREAMS; 0 = OpenVINO's choice
    shapes: str = "static"  # openvino, c-openvino: compile per input shape (static, faster) or once (dynamic)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunnerSpec:
        """The inverse of ``dataclasses.asdict`` (a spec sent to a child process as JSON)."""
        return cls(**{**d, "outputs": tuple(d["outputs"]), "levers": SessionLevers(**d["levers"])})


class Runner:
    """A loaded model. ``run(x)`` maps ``(N, 1, H, W)`` float32 to the spec's outputs.

    ``label`` says what really runs it (runtime, version, device, precision); ``precision``
    is the precision that really ran; ``create_s`` the seconds to load and compile.
    """

    label: str = ""
    precision: str = "fp32"
    create_s: float = 0.0
    outputs: tuple[str, ...] = ("labels",)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def labels(self, x: np.ndarray) -> np.ndarray:
        """``(N, H, W)`` uint8 labels; the argmax of the logits if labels were not fetched."""
        out = self.run(x)
        return out["labels"] if "labels" in out else out["logits"].argmax(1).astype(np.uint8)

    @property
    def label_so_far(self) -> str:
        """``label`` where it is known without running anything; else what was asked for.

        For a line printed before the first inference: an OpenVINO runner with static shapes
        knows what ran only once it has compiled a shape, and reading ``label`` earlier
        compiles a probe (~0.3 s).
        """
        return getattr(self, "provider", None) or self.label


def open_runner(path: str | Path, spec: RunnerSpec = RunnerSpec()) -> Runner:
    """Load ``path`` on the backend ``spec`` names and time the loading.

    Args:
        path: an edgeseg ONNX file; for ``torch`` a ``.pt`` checkpoint, for
            ``tensorrt-engine`` a native ``.engine`` (edgeseg.runtime.tensorrt).
        spec: backend, device, precision, threads, batch and outputs.

    Returns:
        The :class:`Runner`; its ``label`` names what really runs (never a silent fallback).

    Raises:
        EdgesegError: unknown backend, a model that is not edgeseg's, a backend that cannot
            run here (with the reason and the fix).
    """
    if spec.backend not in BACKENDS:
        raise EdgesegError(f"unknown backend {spec.backend!r}; choose one of {', '.join(BACKENDS)}")
    bad = set(spec.outputs) - {"logits", "labels"}
    if bad or not spec.outputs:
        raise EdgesegError(f"outputs {spec.outputs}: an edgeseg model has 'logits' and 'labels'")
    start = time.perf_counter()
    runner = _OPENERS[spec.backend](Path(path), spec)
    runner.outputs, runner.create_s = spec.outputs, time.perf_counter() - start
    return runner


class OrtRunner(Runner):
    """ONNX Runtime, through :func:`create_session` (the session ``edgeseg infer`` runs)."""

    def __init__(self, path: Path, spec: RunnerSpec) -> None:
        import onnxruntime as ort

        info = read_model_info(path)
        trt = {**default_trt_options(info, batch_size=max(spec.batch, 1)), "trt_fp16_enable": spec.precision == "fp16"}
        self.session, self.provider = create_session(path, spec.device, spec.threads or None, trt, spec.levers)
        self.info, self.names = info, list(spec.outputs)
        self.precision = info.precision
        self.label = f"onnxruntime {ort.__version__} {self.provider.removesuffix('ExecutionProvider')} {info.precision}"
        self._bound: dict[tuple[int, ...], tuple[Any, np.ndarray]] | None = {} if spec.io_binding else None

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._bound is not None and self.names == ["labels"]:
            return {"labels": self._run_bound(x)}
        return dict(zip(self.names, self.session.run(self.names, {INPUT_NAME: x}), strict=True))

    def _run_bound(self, x: np.ndarray) -> np.ndarray:
        """``labels`` into a preallocated buffer bound once per input shape."""
        import onnxruntime as ort

        assert self._bound is not None
        if x.shape not in self._bound:
            binding, labels = self.session.io_binding(), np.empty((x.shape[0], *x.shape[2:]), np.uint8)
            binding.bind_ortvalue_output("labels", ort.OrtValue.ortvalue_from_numpy(labels))
            self._bound[x.shape] = binding, labels
        binding, labels = self._bound[x.shape]
        binding.bind_cpu_input(INPUT_NAME, x)
        self.session.run_with_iobinding(binding)
        return labels


class OpenVinoRunner(Runner):
    """OpenVINO's CPU plugin on the same ONNX files.

    :func:`edgeseg.runtime.openvino_backend.openvino_config` turns ``spec.precision`` into an explicit
    precision hint (OpenVINO's CPU default is bf16 wherever the CPU has it) and refuses bf16 on
    a CPU without AVX512-BF16 or AMX; an int8 QDQ file runs its quantised convs in u8/i8.
    ``precision`` and ``label`` are read back from the compiled model's convolutions.

    ``spec.shapes``: ``static`` (the default) compiles the model for each input shape it meets
    (the last :data:`OV_SHAPES` kept), because OpenVINO's CPU plugin runs a fully static graph
    much faster than a dynamic one: on the 2-core Xeon, 394², batch 1, the int8 file took
    25.6 ms static against 40.8 ms dynamic, fp32 55.6 against 75.9 ms, at a lower peak RSS
    (dynamic batch with a static H x W gained nothing). A new shape costs one compile
    (~0.3 s), paid by its first inference, not by loading, and kept for later processes as a blob
    of ours (:mod:`edgeseg.runtime.openvino_blobs`: imported without reading the file) in OpenVINO's model
    cache folder (:func:`edgeseg.runtime.openvino_backend.model_cache_dir`). ``dynamic`` compiles once, at load,
    with the file's dynamic N, H, W.

    ``spec.hint``: ``latency`` runs each batch as one synchronous request; ``throughput`` runs
    a batch's slices as parallel asynchronous requests, one per stream OpenVINO compiled.
    """

    def __init__(self, path: Path, spec: RunnerSpec) -> None:
        from edgeseg.runtime.openvino_backend import import_openvino

        try:  # the defaults peer imports it as a user does, conversion tools and all
            ov = import_openvino() if spec.precision != "default" else __import__("openvino")
        except ImportError:
            raise EdgesegError("backend openvino: OpenVINO is not installed; pip install 'edgeseg[openvino]'") from None
        from collections import OrderedDict

        from edgeseg.machine import fingerprint
        from edgeseg.runtime.openvino_backend import model_cache_dir, openvino_config

        if spec.shapes not in ("static", "dynamic"):
            raise EdgesegError(f"OpenVINO shapes {spec.shapes!r}: choose static or dynamic")
        here, info = fingerprint(), read_model_info(path)
        self.config = openvino_config(
            spec.precision, spec.threads, info.precision, here.has_bf16, here.cpu, spec.hint, spec.streams
        )
        self.ov, self.path, self.spec = ov, Path(path), spec
        self.version = ov.__version__.split("-")[0]
        self.core = ov.Core()
        self.cache = model_cache_dir()  # compiled graphs kept across processes; None: off or read-only
        self._file = ""  # the file's key for our own blobs (edgeseg.runtime.openvino_blobs); "" when none are kept
        if self.cache is not None and spec.shapes == "static":  # our blobs, not OpenVINO's CACHE_DIR: a
            # graph it loaded from its cache exports a blob that import_model cannot read (OpenVINO 2026.4)
            from edgeseg.runtime.openvino_blobs import file_key, has_blobs

            self._file, self._machine = file_key(path), f"{here.arch} {here.cpu} {' '.join(here.flags)}"
        elif self.cache is not None:
            self.core.set_property({"CACHE_DIR": str(self.cache)})
        self.compiled: OrderedDict[tuple[int, ...] | None, Any] = OrderedDict()
        self._ran: tuple[str, str] | None = None  # (precision, detail) of the first compiled graph
        self._read: Any = None  # the model read here to check the file, kept for the first compile only
        if spec.shapes == "dynamic":
            self._compiled(None)
        elif not (self._file and has_blobs(self.cache, self._file)):  # a blob of it imported before: readable
            try:
                self._read = self.core.read_model(str(path))
            except Exception as exc:  # an op or IR this OpenVINO cannot read
                raise EdgesegError(
                    f"{path}: OpenVINO {self.version} cannot read it ({describe(exc)}); try --backend ort"
                ) from exc

    @property
    def precision(self) -> str:  # type: ignore[override]
        return self._what_ran()[0]

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"OpenVINO {self.version} CPU {self.precision} ({self._what_ran()[1]}; {self.spec.shapes} shapes)"

    @property
    def label_so_far(self) -> str:
        if self._ran is not None:
            return self.label
        return f"OpenVINO {self.version} CPU, {self.spec.precision} asked ({self.spec.shapes} shapes)"

    def _what_ran(self) -> tuple[str, str]:
        """Read back from the first compiled graph (a small probe shape if nothing ran yet)."""
        if self._ran is None:
            self._compiled(PROBE_SHAPE)
        assert self._ran is not None
        return self._ran

    def _compiled(self, shape: tuple[int, ...] | None) -> dict[str, Any]:
        """The model compiled for ``shape`` (None: dynamic), its ports and its request(s)."""
        if shape in self.compiled:
            self.compiled.move_to_end(shape)
            return self.compiled[shape]
        from edgeseg.runtime import openvino_blobs
        from edgeseg.runtime.openvino_backend import release_heap

        blob = None
        if self._file and shape is not None:  # our blob: no read, no reshape, no hashing of the graph
            blob = openvino_blobs.blob_path(self.cache, self._file, shape, self.config, self.version, self._machine)
        compiled = None if blob is None else openvino_blobs.load(self.core, blob, self.config)
        cached = "blob" if compiled is not None else ""
        try:  # read anew for each later shape: a kept ov.Model and its clones would cost RSS
            if compiled is None:
                model = self._read if self._read is not None else self.core.read_model(str(self.path))
                self._read = None
                if shape is not None:
                    model.reshape({INPUT_NAME: list(shape)})
                compiled = self._compile(model)
                del model
                release_heap()  # what reading and transforming the graph freed: 4-5 MB of peak RSS
                cached = "openvino" if self.cache is not None and compiled.get_property("LOADED_FROM_CACHE") else ""
                if blob is not None and self.cache is not None:
                    openvino_blobs.save(compiled, blob)
        except Exception as exc:
            what = "it" if shape is None else f"it for input shape {shape}"
            raise EdgesegError(
                f"{self.path}: OpenVINO {self.version} cannot compile {what} ({describe(exc)}); try --backend ort"
            ) from exc
        entry: dict[str, Any] = {"model": compiled, "ports": {n: compiled.output(n) for n in self.spec.outputs}}
        entry["cached"] = cached  # "blob" (ours), "openvino" (its CACHE_DIR) or "" (compiled here)
        if self.spec.hint == "throughput":
            entry["jobs"] = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            entry["queue"] = self.ov.AsyncInferQueue(compiled, entry["jobs"])
        else:
            entry["request"] = compiled.create_infer_request()
        if self._ran is None:
            from edgeseg.runtime.openvino_backend import ran_precision

            precision, detail = ran_precision(compiled)
            if self.spec.hint == "throughput":
                detail += f"; throughput: {compiled.get_property('NUM_STREAMS')} streams, {entry['jobs']} requests"
            self._ran = (precision, detail)
        self.compiled[shape] = entry
        while len(self.compiled) > OV_SHAPES:
            self.compiled.popitem(last=False)
        return entry

    def _compile(self, model: Any) -> Any:
        """``compile_model`` through the model cache; a cache that fails (a blob another process is
        still writing, a folder gone read-only) is turned off and the model compiled without it."""
        try:
            return self.core.compile_model(model, "CPU", self.config)
        except Exception:
            if self.cache is None:
                raise
            self.cache = None
            self.core.set_property({"CACHE_DIR": ""})
            return self.core.compile_model(model, "CPU", self.config)

    def _shape(self, x: np.ndarray) -> tuple[int, ...] | None:
        return None if self.spec.shapes == "dynamic" else tuple(int(d) for d in x.shape)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self.spec.hint == "throughput":
            return self._run_parallel(x)
        entry = self._compiled(self._shape(x))
        result = entry["request"].infer({INPUT_NAME: x})
        return {name: result[port] for name, port in entry["ports"].items()}

    def _run_parallel(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each slice of the batch as its own request; results gathered in the batch's order."""
        entry = self._compiled(self._shape(x[:1]))
        parts: list[dict[str, np.ndarray] | None] = [None] * len(x)

        def done(request: Any, i: int) -> None:
            parts[i] = {name: request.get_tensor(port).data.copy() for name, port in entry["ports"].items()}

        queue = entry["queue"]
        queue.set_callback(done)
        for i in range(len(x)):
            queue.start_async({INPUT_NAME: np.ascontiguousarray(x[i : i + 1])}, i)
        queue.wait_all()
        if any(p is None for p in parts):
            raise EdgesegError("OpenVINO: a throughput request finished without its outputs")
        return {name: np.concatenate([p[name] for p in parts]) for name in entry["ports"]}


class CRunner(Runner):
    """libedgeseg (edgeseg.runtime.cbackend): OpenVINO's C API behind our own C library."""

    def __init__(self, path: Path, spec: RunnerSpec) -> None:
        from edgeseg.runtime.cbackend import FILE_PRECISION, CModel

        if spec.outputs != ("labels",):
            raise EdgesegError("backend c-openvino returns labels only; ask for outputs=('labels',)")
        self.precision = read_model_info(path).precision  # parsed once: the file's own precision
        self.model = CModel(path, spec.threads, FILE_PRECISION[self.precision], shapes=spec.shapes)
        self.label = f"libedgeseg ({self.model.backend})"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"labels": self.model.segment(x)}


class EngineRunner(Runner):
    """A native TensorRT engine built by ``edgeseg export --trt`` (edgeseg.runtime.tensorrt)."""

    def __init__(self, path: Path, spec: RunnerSpec) -> None:
        from edgeseg.runtime.tensorrt import EngineSession

        self.engine, self.names = EngineSession(path), list(spec.outputs)
        self.precision = engine_info(path).precision
        self.label = f"TensorRT engine {self.precision}"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.engine.run(self.names, {INPUT_NAME: x}), strict=True))


class TorchRunner(Runner):
    """PyTorch eager on the checkpoint, the tutorial's way: NCHW float32 under no_grad."""

    def __init__(self, path: Path, spec: RunnerSpec) -> None:
        import torch

        from edgeseg.model import load_checkpoint

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.model, _ = load_checkpoint(path)
        self.label = f"PyTorch {torch.__version__} eager fp32"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.no_grad():
            logits = self.model(torch.from_numpy(x))
        out = {"logits": logits.numpy(), "labels": logits.argmax(1).to(torch.uint8).numpy()}
        return {name: out[name] for name in self.outputs}


class ExecuTorchRunner(Runner):
    """An ``X.pte`` (``edgeseg export --executorch``) through ExecuTorch's Python runtime.

    That runtime imports torch, so this runner serves export-time parity only; deployments
    run the file from C++ (README, ExecuTorch files). The file is planned for batch 1: a
    batch runs one slice at a time.
    """

    def __init__(self, path: Path, spec: RunnerSpec) -> None:
        try:
            from executorch.runtime import Runtime
            from executorch.version import __version__
        except ImportError:
            raise EdgesegError(
                "backend executorch: ExecuTorch is not installed; pip install 'edgeseg[executorch]'"
            ) from None
        try:
            self.method = Runtime.get().load_program(Path(path)).load_method("forward")
        except Exception as exc:  # not a .pte, or one of a newer schema
            raise EdgesegError(
                f"{path}: ExecuTorch {__version__} cannot load it ({describe(exc)}); re-export it"
            ) from exc
        self.precision = "int8" if Path(path).stem.endswith("_int8") else "fp32"
        self.label = f"ExecuTorch {__version__} XNNPACK {self.precision}"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        outs = [self.method.execute([torch.from_numpy(np.ascontiguousarray(one[None]))]) for one in x]
        both = {
            "logits": np.concatenate([o[0].numpy() for o in outs]),
            "labels": np.concatenate([o[1].numpy() for o in outs]),
        }
        return {name: both[name] for name in self.outputs}


def run_batches(runner: Runner, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(logits, labels)`` of a runner (fetching both) for each batch."""
    outs = [runner.run(x) for x in inputs]
    return [o["logits"].astype(np.float32) for o in outs], [o["labels"] for o in outs]


_OPENERS = {
    "ort": OrtRunner,
    "openvino": OpenVinoRunner,
    "c-openvino": CRunner,
    "tensorrt-engine": EngineRunner,
    "torch": TorchRunner,
    "executorch": ExecuTorchRunner,
}
