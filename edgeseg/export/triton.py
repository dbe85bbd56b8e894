"""Serving stage: a Triton Inference Server model repository for an exported edgeseg model.

    edgeseg triton export/model.onnx --out models/        # an already exported file
    edgeseg export CKPT --triton models/                   # right after an export

:func:`write_model_repository` writes, for ``X.onnx``:

* ``DIR/X/config.pbtxt`` + ``DIR/X/1/model.onnx``: the ``onnxruntime_onnx`` platform, the
  batch dimension implicit (``max_batch_size``), the other dims from the ONNX graph
  (``image`` ``[1, -1, -1]``, ``logits`` ``[C, -1, -1]``, ``labels`` ``[-1, -1]``), dynamic
  batching and one instance group (KIND_AUTO: the GPU where the server has one, else CPU);
  an int8 model is served one slice per run instead (see :data:`UNBATCHED`);
* ``DIR/X_trt/config.pbtxt`` + ``DIR/X_trt/1/model.plan`` when ``X.engine`` and its sidecar
  ``X.engine.json`` (``edgeseg export --trt``) lie beside ``X.onnx``: the ``tensorrt_plan``
  platform with ``max_batch_size`` = the profile's max N, H and W fixed where the profile
  fixes them, and the instance group bound to profile 0.

Each ``config.pbtxt`` is built as tritonclient's ``ModelConfig`` protobuf (the schema the
server parses), printed with protobuf's ``text_format`` and parsed back before it is
written; tritonclient is the optional extra ``edgeseg[triton]``, imported lazily. Each
model folder is built beside its target and renamed into place, and only a folder whose
``config.pbtxt`` starts with :data:`MARKER` is ever replaced. Nothing here has run against a
real Triton server in this project.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError

MARKER = "# edgeseg-triton-v1"  # first line of every config.pbtxt we write; we replace only those
VERSION = "1"  # the one model version folder we write
KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
ONNX_TO_TRITON = {  # onnx.TensorProto element type name -> Triton DataType
    "FLOAT": "TYPE_FP32",
    "FLOAT16": "TYPE_FP16",
    "BFLOAT16": "TYPE_BF16",
    "DOUBLE": "TYPE_FP64",
    "UINT8": "TYPE_UINT8",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
}
EXTRA_HINT = "pip install 'edgeseg[triton]' (tritonclient[grpc])"
# Precisions whose labels change with the batch a slice runs in: served one slice per run
# (max_batch_size 1, no dynamic batching), so a slice's labels never depend on other requests.
# int8: the per-image normalisation's sums come out a few ulp apart at N=1 and N>1 (ONNX Runtime
# sums in another order), and the quantisation steps after it turn that into whole steps: the
# shipped model_int8.onnx gives 132 other labels in 23 of 32 slices for one batch of 32 than for
# 32 batches of 1 (ONNX Runtime CPU). fp32 and fp16 labels are equal at both.
UNBATCHED = {"int8": "its labels change with the batch (ulp-level normalisation differences re-quantised)"}


@dataclass
class TritonConfig:
    """How ``edgeseg triton`` / ``edgeseg export --triton`` configure the served model."""

    name: str | None = None  # model name (its folder); None = the ONNX file's stem
    max_batch_size: int = 32  # ONNX Runtime model; the TensorRT plan takes its profile's max N
    instances: int = 1  # model instances per GPU (or on the CPU)
    kind: str = "auto"  # auto (GPU where there is one, else CPU) | gpu | cpu; the plan is always gpu
    max_queue_delay_us: int = 100  # how long the dynamic batcher waits to fill a batch
    engine: bool = True  # also serve X.engine (+ sidecar) beside X.onnx as <name>_trt


@dataclass(frozen=True)
class TritonModel:
    """One model written into the repository."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan
    folder: Path  # DIR/<name>
    config: Path  # DIR/<name>/config.pbtxt
    model_file: Path  # DIR/<name>/1/model.onnx or model.plan
    note: str = ""  # why it is served otherwise than asked (an int8 model: one slice per run)


def model_config_pb2() -> Any:
    """tritonclient's ``model_config_pb2``, or the one-line error naming the extra."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise EdgesegError(
            f"a Triton model repository (edgeseg triton, export --triton) needs tritonclient's"
            f" model-config schema, which cannot be imported here ({exc}); {EXTRA_HINT}"
        ) from None
    return model_config_pb2


# ----------------------------------------------------------------------------- configs


def _tensors(onnx_path: Path) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
    """``(inputs, outputs)`` as ``(name, Triton type, dims without the batch)``; -1 = dynamic."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(vi: Any) -> tuple[str, str, list[int]]:
        tensor = vi.type.tensor_type
        elem = onnx.TensorProto.DataType.Name(tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if elem not in ONNX_TO_TRITON or not dims or dims[0] != -1:
            raise EdgesegError(
                f"{onnx_path}: tensor {vi.name!r} ({elem}, dims {dims}) cannot be served with an implicit"
                " batch dimension; re-export it with `edgeseg export` (symbolic N first)"
            )
        return vi.name, ONNX_TO_TRITON[elem], dims[1:]

    inputs = [describe(vi) for vi in graph.input if vi.name not in initializers]
    return inputs, [describe(vi) for vi in graph.output]


def _base_config(pb2: Any, name: str, platform: str, onnx_path: Path, max_batch: int, config: TritonConfig) -> Any:
    """A ModelConfig with the graph's I/O and dynamic batching (none at max batch 1); instance groups: the caller's."""
    inputs, outputs = _tensors(onnx_path)
    model = pb2.ModelConfig(name=name, platform=platform, max_batch_size=max_batch)
    for tensor_name, dtype, dims in inputs:
        model.input.add(name=tensor_name, data_type=pb2.DataType.Value(dtype), dims=dims)
    for tensor_name, dtype, dims in outputs:
        model.output.add(name=tensor_name, data_type=pb2.DataType.Value(dtype), dims=dims)
    if max_batch > 1:
        # Requests are batched only when their H and W agree (no ragged batches): the common case
        # of one scanner protocol; mixed sizes simply run one request per batch.
        model.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    return model


def onnx_config(onnx_path: Path, name: str, config: TritonConfig, precision: str = "fp32") -> Any:
    """The ``onnxruntime_onnx`` ModelConfig of an edgeseg ONNX file (max batch 1 for :data:`UNBATCHED` precisions)."""
    pb2 = model_config_pb2()
    max_batch = 1 if precision in UNBATCHED else config.max_batch_size
    model = _base_config(pb2, name, "onnxruntime_onnx", onnx_path, max_batch, config)
    model.instance_group.add(count=config.instances, kind=pb2.ModelInstanceGroup.Kind.Value(KINDS[config.kind]))
    return model


def check_engine_source(engine: Path, info: Any) -> None:
    """Refuse an engine whose sidecar names another checkpoint than the ONNX file beside it (a stale build)."""
    from edgeseg.artifacts import read_sidecar

    built_from = (read_sidecar(engine).get("metadata") or {}).get("edgeseg.checkpoint_sha256")
    if built_from != info.checkpoint_sha256:
        raise EdgesegError(
            f"{engine}: built from checkpoint {str(built_from)[:12]}..., but {info.path.name} comes from"
            f" {info.checkpoint_sha256[:12]}...; rebuild it with `edgeseg export --trt`, or remove it to serve"
            " the ONNX model alone"
        )


def engine_profile(engine: Path) -> dict[str, list[int]]:
    """The ``min``/``opt``/``max`` ``[N, H, W]`` of an engine's sidecar; EdgesegError if unusable."""
    from edgeseg.artifacts import read_sidecar

    profile = read_sidecar(engine).get("profile") or {}
    try:
        shapes = {k: [int(v) for v in profile[k]] for k in ("min", "opt", "max")}
    except (KeyError, TypeError, ValueError):
        shapes = {}
    if not shapes or any(len(v) != 3 or min(v) < 1 for v in shapes.values()):
        raise EdgesegError(
            f"{engine}.json: no valid TensorRT profile (min/opt/max as [N, H, W]); rebuild the engine"
            " with `edgeseg export --trt`"
        )
    return shapes


def plan_config(onnx_path: Path, engine: Path, name: str, config: TritonConfig) -> Any:
    """The ``tensorrt_plan`` ModelConfig of ``engine`` (built from ``onnx_path``), from its profile."""
    pb2 = model_config_pb2()
    profile = engine_profile(engine)
    model = _base_config(pb2, name, "tensorrt_plan", onnx_path, profile["max"][0], config)
    fixed = {axis: profile["min"][axis] for axis in (1, 2) if profile["min"][axis] == profile["max"][axis]}
    for tensor in [*model.input, *model.output]:  # H and W are the last two dims of every tensor
        for axis, size in fixed.items():
            tensor.dims[len(tensor.dims) - 3 + axis] = size
    if profile["opt"][0] > 1:
        model.dynamic_batching.preferred_batch_size.append(profile["opt"][0])
    model.instance_group.add(count=config.instances, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_GPU"), profile=["0"])
    return model


def render(model: Any, header: list[str]) -> str:
    """``config.pbtxt`` text: the marker and header comments, then the message, parsed back to check."""
    from google.protobuf import text_format

    body = text_format.MessageToString(model, use_short_repeated_primitives=True)
    text = "\n".join([MARKER, *(f"# {line}" for line in header), body])
    if parse_config(text) != model:  # the schema's own parser must read back what we meant
        raise RuntimeError(f"model {model.name}: config.pbtxt does not round-trip through the Triton schema")
    return text


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` text with Triton's ModelConfig schema (raises on unknown fields)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


# ----------------------------------------------------------------------------- repository


def check_repository(repo: Path, names: list[str]) -> None:
    """Fail before any work when tritonclient is missing or a target folder is not ours."""
    model_config_pb2()
    for name in names:
        _check_folder(Path(repo) / name)


def _check_folder(folder: Path) -> None:
    """Raise unless ``folder`` is absent or was written by edgeseg (its config starts with MARKER)."""
    if not folder.exists():
        return
    config = folder / "config.pbtxt"
    try:
        ours = folder.is_dir() and config.read_text(errors="replace").startswith(MARKER)
    except OSError:
        ours = False
    if not ours:
        raise EdgesegError(
            f"{folder}: exists and was not written by edgeseg (no config.pbtxt starting with"
            f" '{MARKER}'); refusing to replace it: pick another repository folder or --name, or remove it"
        )


def _replace_folder(folder: Path, files: dict[str, bytes | Path]) -> None:
    """Write ``files`` (relative path -> bytes or a file to copy) as ``folder``, swapped in by rename.

    The new folder is built as ``.<name>.edgeseg-tmp`` beside the target (a fixed name, so what
    a killed run left is cleared next time) and swapped in by :func:`edgeseg.io.outputs.replace_dir`,
    so a half-written model never stands under its real name.
    """
    from edgeseg.files import replace_dir

    tmp = folder.parent / f".{folder.name}.edgeseg-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, content in files.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    replace_dir(tmp, folder)


def _header(onnx_path: Path, info: Any, extra: list[str]) -> list[str]:
    from edgeseg import __version__
    from edgeseg.files import sha256_file

    return [
        f"written by edgeseg {__version__} from {onnx_path.name} (sha256 {sha256_file(onnx_path)[:16]}...);"
        " rerun `edgeseg triton` rather than editing it",
        f"input 'image': raw intensities (N, {info.in_channels}, H, W), H and W >= {info.min_size};"
        f" classes: {', '.join(info.class_names)}; precision {info.precision}",
        *extra,
    ]


def write_model_repository(onnx_path: Path, repo: Path, config: TritonConfig | None = None) -> list[TritonModel]:
    """Write a Triton model repository entry for an exported edgeseg ONNX file (and its engine).

    Args:
        onnx_path: an ``edgeseg-onnx-v1`` file (``edgeseg export``); ``X.engine`` with its
            sidecar beside it is served too (``config.engine``).
        repo: the model repository folder (``tritonserver --model-repository``); created if needed.
        config: name, batch size and instances; default :class:`TritonConfig`.

    Returns:
        The models written: the ONNX Runtime one first, then the TensorRT plan if any.

    Raises:
        EdgesegError: tritonclient missing (names the extra), not an edgeseg model, an unusable
            engine sidecar, or a target folder that edgeseg did not write.
    """
    from edgeseg.artifacts import ArtifactPaths, read_model_info

    config = config or TritonConfig()
    if config.kind not in KINDS or config.max_batch_size < 1 or config.instances < 1:
        raise EdgesegError(
            f"Triton settings kind={config.kind!r}, max_batch_size={config.max_batch_size},"
            f" instances={config.instances}: kind is one of {', '.join(KINDS)}, the others >= 1"
        )
    onnx_path, repo = Path(onnx_path), Path(repo)
    info = read_model_info(onnx_path)
    name = config.name or onnx_path.stem
    if Path(name).name != name or name.startswith("."):
        raise EdgesegError(f"--name {name!r}: a Triton model name is a plain folder name (no '/', not hidden)")
    engine = ArtifactPaths.of(onnx_path).engine
    serve_engine = config.engine and engine.is_file()
    jobs = [(name, "onnxruntime_onnx", "model.onnx", onnx_path)]
    if serve_engine:
        jobs.append((f"{name}_trt", "tensorrt_plan", "model.plan", engine))
    check_repository(repo, [job[0] for job in jobs])
    prepared = []  # every config is built and checked before anything is written
    for model_name, platform, filename, source in jobs:
        if platform == "tensorrt_plan":
            from edgeseg.artifacts import read_sidecar

            check_engine_source(engine, info)
            sidecar, profile = read_sidecar(engine), engine_profile(engine)
            limits = " ".join(f"{k} {'x'.join(map(str, v))}" for k, v in profile.items())
            message = plan_config(onnx_path, engine, model_name, config)
            extra = [
                f"TensorRT engine {engine.name}: profile NxHxW {limits}; built with TensorRT"
                f" {sidecar.get('tensorrt', '?')} on {sidecar.get('gpu', '?')}: the server must match"
            ]
        else:
            message, extra = onnx_config(onnx_path, model_name, config, info.precision), []
            if config.kind == "auto":  # the schema's default, so text_format leaves it out
                extra = [
                    "instance_group kind KIND_AUTO (not printed: the schema default): GPU where the"
                    " server has one, else CPU"
                ]
        note = _unbatched_note(info.precision) if platform == "onnxruntime_onnx" else ""
        header = _header(onnx_path, info, [*extra, *([note] if note else [])])
        prepared.append((model_name, platform, filename, source, render(message, header), note))
    models = []
    for model_name, platform, filename, source, text, note in prepared:
        folder = repo / model_name
        _replace_folder(folder, {"config.pbtxt": text.encode(), f"{VERSION}/{filename}": source})
        config_file, model_file = folder / "config.pbtxt", folder / VERSION / filename
        models.append(TritonModel(model_name, platform, folder, config_file, model_file, note))
    return models


def _unbatched_note(precision: str) -> str:
    """Why a model of ``precision`` is served one slice per run; empty for batchable precisions."""
    if precision not in UNBATCHED:
        return ""
    return f"{precision}: served one slice per run (max_batch_size 1, no dynamic batching): {UNBATCHED[precision]}"


def run_triton(onnx_path: Path, repo: Path, config: TritonConfig) -> list[TritonModel]:
    """``edgeseg triton``: write the repository and print the models and the serving commands."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    models = write_model_repository(onnx_path, repo, config)
    for model in models:
        console.print(f"{model.platform:>16}  {model.config}")
        if model.note:
            console.print(f"{'':>16}  {model.note}")
    console.print(
        "serve (unverified here: no Triton server in this project's CI):\n"
        + "\n".join(f"  {c}" for c in serving_commands(repo, models))
    )
    return models


def serving_commands(repo: Path, models: list[TritonModel]) -> list[str]:
    """The tritonserver and perf_analyzer commands for the written models."""
    first = models[0]
    return [
        f"tritonserver --model-repository {Path(repo).resolve()}",
        f"perf_analyzer -m {first.name} --shape image:1,394,394 --concurrency-range 1:4",
    ]
