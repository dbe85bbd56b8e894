"""The import graph follows the pipeline, and the inference path never loads torch.

Every ``edgeseg`` import counts, the lazy ones inside functions too: a lazy import that runs
back up the pipeline is still a cycle, only a later one. ORDER lists the modules bottom-up;
a module may import only modules listed before it. A new module goes at its stage.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edgeseg

PACKAGE = Path(edgeseg.__file__).parent
ORDER = [
    # foundations: no edgeseg import but these
    "errors",
    "__init__",
    "files",
    "signals",
    "machine",
    "sizes",
    "onnx_header",
    "artifacts",
    "metrics",
    # reading and writing scans (torch-free)
    "names",
    "qc_anatomy",
    "qc",
    "skullstrip",
    "triage",
    "dicom",
    "scan_files",
    "scan_readers",
    "scans",
    "records",
    "dicom_seg",
    "dicom_sr",
    "mosaic",
    "outputs",
    "dicom_results",
    # data and the model
    "demo",
    "data",
    "volume",
    "synth",
    "synth_planes",
    "raw_head",
    "split",
    "model_contract",
    "model",
    "augment",
    "train_config",
    "losses",
    # running a model
    "tensorrt",
    "cbuild",
    "cbackend",
    "openvino_backend",
    "openvino_blobs",
    "deploy",
    "ort_session",
    "runtime",
    "measure",
    "crop",
    "crop_bench",
    "infer_config",
    "scan_rows",
    "scan_writer",
    "segment",
    "cluster_connect",
    "cluster_tasks",
    "cluster",
    "infer",
    # the DICOM node: receives series, runs infer on them, sends the results
    "node_config",
    "node_queue",
    "node_send",
    "node_watch",
    "node_stow",
    "node",
    # training, export, validation
    "evaluate",
    "train_report",
    "distributed",
    "train_data",
    "train",
    "quantize_nodes",
    "quantize_fp16",
    "quantize",
    "executorch_export",
    "parity",
    "robustness_heads",
    "robustness",
    "parity_report",
    "triton",
    "export",
    # benchmarking and the command line
    "bench_report",
    "bench_targets",
    "bench",
    "tune_report",
    "tune",
    "cli",
    "__main__",
]
# What `edgeseg infer` and `edgeseg bench` of ONNX files import: never torch, never training.
INFERENCE = [
    *("runtime", "artifacts", "scans", "dicom", "outputs", "segment", "infer", "metrics", "bench", "split"),
    "bench_targets",  # what bench and tune read the targets with
    *("machine", "openvino_backend", "openvino_blobs", "deploy", "tune"),  # tune's children time torch-free runtimes
    "crop",
    *("triage", "dicom_seg", "dicom_sr", "dicom_results"),  # what a DICOM series gets: skip, SEG, SR
    "mosaic",
    *("ort_session", "scan_files", "scan_readers"),  # split from runtime and scans
    *("infer_config", "scan_rows", "scan_writer"),  # split from segment
    *("cluster_connect", "cluster_tasks", "cluster"),  # --cluster: infer's torch-free work on Dask workers
    *("crop_bench", "tune_report"),  # what bench and tune time on the brain box, and tune's table
    *("node_config", "node_queue", "node_send", "node_watch", "node_stow", "node"),  # listen runs infer: torch-free
]


def edgeseg_imports(path: Path) -> set[str]:
    """The edgeseg modules ``path`` imports anywhere in its body (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "edgeseg":
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from edgeseg import X: a module, or a name of the package's __init__
                found.update(a.name if (PACKAGE / f"{a.name}.py").is_file() else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("edgeseg."))
    return found - {path.stem if path.parent == PACKAGE else path.parent.name}  # cli/*: its own imports aside


def graph() -> dict[str, set[str]]:
    """One node per flat module, and one, "cli", for the command-line package (its modules' imports together)."""
    modules = {p.stem: edgeseg_imports(p) for p in sorted(PACKAGE.glob("*.py"))}
    modules["cli"] = set().union(*(edgeseg_imports(p) for p in sorted((PACKAGE / "cli").glob("*.py"))))
    return modules


def test_every_module_has_a_place_in_the_pipeline() -> None:
    missing = sorted(set(graph()) - set(ORDER))
    assert not missing, f"add {missing} to ORDER at their stage of the pipeline"


def test_imports_only_point_down_the_pipeline() -> None:
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = [
        f"{module} -> {dep}"
        for module, deps in graph().items()
        for dep in sorted(deps)
        if module in rank and dep in rank and rank[dep] >= rank[module]
    ]
    assert not upward, "imports that run up the pipeline (or a cycle): " + ", ".join(upward)


def test_the_checker_sees_lazy_and_package_imports(tmp_path: Path) -> None:
    """The graph reader itself: a lazy import inside a function counts, and so does `from edgeseg import x`."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from edgeseg import SHIPPED_MODEL, files\n"
        "def f():\n    from edgeseg.train import train\n    import edgeseg.model\n"
    )
    assert edgeseg_imports(source) == {"__init__", "files", "train", "model"}


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_modules_import_without_torch(module: str) -> None:
    code = (
        "import sys, importlib\n"
        f"importlib.import_module('edgeseg.{module}')\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'edgeseg.train')\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"importing edgeseg.{module} loaded {proc.stdout.strip()}"
