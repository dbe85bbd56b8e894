"""The record of issue 26's move: the flat ``edgeseg/`` into one subpackage per stage, ``tests/`` mirrored.

Run on a flat tree (every module at ``edgeseg/<name>.py``, every test at ``tests/test_<name>.py``)::

    python tools/move_layout.py --apply     # git mv + rewrite every reference, in the working tree
    python tools/move_layout.py --table     # what moved where (the table below)

It stops, listing them, on a module or a test file that it has no place for: a new module gets its
row in MOVES (or in TOP) first. Subpackages, bottom-up; each imports only the ones before it:

    (top level) < io < data < runtime < infer < node < train < export < bench < cli

What the imports said against the first proposal (issue 26, LAYOUT26.md): ``onnx_header`` stays at the
top level because ``artifacts`` (top level) reads its header; ``tensorrt`` is runtime's, not
export's, because ``runtime`` builds its runner; ``tune`` is bench's, not runtime's, because it
imports ``bench``; ``bench`` sits above ``export`` because ``bench_report`` prints parity's gates.

Old import paths work for one release: ``edgeseg/_moved.py`` aliases each moved module's old name to
the module itself (a DeprecationWarning names the new path), and the subpackages that took an old
module's name (``edgeseg.train``, ``.data``, ``.runtime``, ``.infer``, ``.node``, ``.export``,
``.bench``) forward that module's public names lazily, with the same warning.

What moved (``--table`` prints it; ``--fill-table`` rewrites it here after MOVES changes):

| old | new |
|---|---|
| `edgeseg.scan_files` | `edgeseg.io.scan_files` |
| `edgeseg.scan_readers` | `edgeseg.io.scan_readers` |
| `edgeseg.scans` | `edgeseg.io.scans` |
| `edgeseg.scan_rows` | `edgeseg.io.scan_rows` |
| `edgeseg.dicom` | `edgeseg.io.dicom` |
| `edgeseg.dicom_seg` | `edgeseg.io.dicom_seg` |
| `edgeseg.dicom_sr` | `edgeseg.io.dicom_sr` |
| `edgeseg.dicom_results` | `edgeseg.io.dicom_results` |
| `edgeseg.mosaic` | `edgeseg.io.mosaic` |
| `edgeseg.outputs` | `edgeseg.io.outputs` |
| `edgeseg.records` | `edgeseg.io.records` |
| `edgeseg.triage` | `edgeseg.io.triage` |
| `edgeseg.qc` | `edgeseg.io.qc` |
| `edgeseg.qc_anatomy` | `edgeseg.io.qc_anatomy` |
| `edgeseg.skullstrip` | `edgeseg.io.skullstrip` |
| `edgeseg.demo` | `edgeseg.data.demo` |
| `edgeseg.data` | `edgeseg.data.dataset` |
| `edgeseg.volume` | `edgeseg.data.volume` |
| `edgeseg.split` | `edgeseg.data.split` |
| `edgeseg.augment` | `edgeseg.data.augment` |
| `edgeseg.synth` | `edgeseg.data.synth` |
| `edgeseg.raw_head` | `edgeseg.data.raw_head` |
| `edgeseg.synth_planes` | `edgeseg.data.synth_planes` |
| `edgeseg.runtime` | `edgeseg.runtime.runners` |
| `edgeseg.ort_session` | `edgeseg.runtime.ort_session` |
| `edgeseg.openvino_backend` | `edgeseg.runtime.openvino_backend` |
| `edgeseg.openvino_blobs` | `edgeseg.runtime.openvino_blobs` |
| `edgeseg.cbackend` | `edgeseg.runtime.cbackend` |
| `edgeseg.cbuild` | `edgeseg.runtime.cbuild` |
| `edgeseg.tensorrt` | `edgeseg.runtime.tensorrt` |
| `edgeseg.deploy` | `edgeseg.runtime.deploy` |
| `edgeseg.measure` | `edgeseg.runtime.measure` |
| `edgeseg.crop` | `edgeseg.infer.crop` |
| `edgeseg.infer_config` | `edgeseg.infer.config` |
| `edgeseg.scan_writer` | `edgeseg.infer.scan_writer` |
| `edgeseg.segment` | `edgeseg.infer.segment` |
| `edgeseg.cluster_connect` | `edgeseg.infer.cluster_connect` |
| `edgeseg.cluster_tasks` | `edgeseg.infer.cluster_tasks` |
| `edgeseg.cluster` | `edgeseg.infer.cluster` |
| `edgeseg.infer` | `edgeseg.infer.run` |
| `edgeseg.node_config` | `edgeseg.node.config` |
| `edgeseg.node_queue` | `edgeseg.node.queue` |
| `edgeseg.node_send` | `edgeseg.node.send` |
| `edgeseg.node_watch` | `edgeseg.node.watch` |
| `edgeseg.node_stow` | `edgeseg.node.stow` |
| `edgeseg.node` | `edgeseg.node.server` |
| `edgeseg.train_config` | `edgeseg.train.config` |
| `edgeseg.losses` | `edgeseg.train.losses` |
| `edgeseg.evaluate` | `edgeseg.train.evaluate` |
| `edgeseg.train_report` | `edgeseg.train.report` |
| `edgeseg.distributed` | `edgeseg.train.distributed` |
| `edgeseg.train_data` | `edgeseg.train.data` |
| `edgeseg.train` | `edgeseg.train.loop` |
| `edgeseg.robustness` | `edgeseg.train.robustness` |
| `edgeseg.robustness_heads` | `edgeseg.train.robustness_heads` |
| `edgeseg.export` | `edgeseg.export.onnx` |
| `edgeseg.quantize_nodes` | `edgeseg.export.quantize_nodes` |
| `edgeseg.quantize_fp16` | `edgeseg.export.quantize_fp16` |
| `edgeseg.quantize` | `edgeseg.export.quantize` |
| `edgeseg.parity` | `edgeseg.export.parity` |
| `edgeseg.parity_report` | `edgeseg.export.parity_report` |
| `edgeseg.executorch_export` | `edgeseg.export.executorch` |
| `edgeseg.triton` | `edgeseg.export.triton` |
| `edgeseg.bench_targets` | `edgeseg.bench.targets` |
| `edgeseg.bench` | `edgeseg.bench.suite` |
| `edgeseg.bench_report` | `edgeseg.bench.report` |
| `edgeseg.crop_bench` | `edgeseg.bench.crop_bench` |
| `edgeseg.tune` | `edgeseg.bench.tune` |
| `edgeseg.tune_report` | `edgeseg.bench.tune_report` |
| `tests/test_dicom.py` | `tests/io/test_dicom.py` |
| `tests/test_dicom_seg.py` | `tests/io/test_dicom_seg.py` |
| `tests/test_dicom_sr.py` | `tests/io/test_dicom_sr.py` |
| `tests/test_mosaic.py` | `tests/io/test_mosaic.py` |
| `tests/test_outputs.py` | `tests/io/test_outputs.py` |
| `tests/test_qc.py` | `tests/io/test_qc.py` |
| `tests/test_qc_verdicts.py` | `tests/io/test_qc_verdicts.py` |
| `tests/test_scans.py` | `tests/io/test_scans.py` |
| `tests/test_seg_resend.py` | `tests/io/test_seg_resend.py` |
| `tests/test_skullstrip.py` | `tests/io/test_skullstrip.py` |
| `tests/test_triage.py` | `tests/io/test_triage.py` |
| `tests/test_rerun_records.py` | `tests/io/test_rerun_records.py` |
| `tests/test_augment.py` | `tests/data/test_augment.py` |
| `tests/test_data.py` | `tests/data/test_data.py` |
| `tests/test_demo.py` | `tests/data/test_demo.py` |
| `tests/test_synth.py` | `tests/data/test_synth.py` |
| `tests/test_volume.py` | `tests/data/test_volume.py` |
| `tests/test_runtime.py` | `tests/runtime/test_runtime.py` |
| `tests/test_openvino_backend.py` | `tests/runtime/test_openvino_backend.py` |
| `tests/test_clib.py` | `tests/runtime/test_clib.py` |
| `tests/test_tensorrt.py` | `tests/runtime/test_tensorrt.py` |
| `tests/test_deploy_fallbacks.py` | `tests/runtime/test_deploy_fallbacks.py` |
| `tests/test_infer.py` | `tests/infer/test_infer.py` |
| `tests/test_crop.py` | `tests/infer/test_crop.py` |
| `tests/test_cluster.py` | `tests/infer/test_cluster.py` |
| `tests/test_cluster_faults.py` | `tests/infer/test_cluster_faults.py` |
| `tests/test_node.py` | `tests/node/test_node.py` |
| `tests/test_node_queue.py` | `tests/node/test_node_queue.py` |
| `tests/test_train.py` | `tests/train/test_train.py` |
| `tests/test_distributed.py` | `tests/train/test_distributed.py` |
| `tests/test_evaluate.py` | `tests/train/test_evaluate.py` |
| `tests/test_robustness.py` | `tests/train/test_robustness.py` |
| `tests/test_export.py` | `tests/export/test_export.py` |
| `tests/test_parity.py` | `tests/export/test_parity.py` |
| `tests/test_parity_report.py` | `tests/export/test_parity_report.py` |
| `tests/test_executorch_export.py` | `tests/export/test_executorch_export.py` |
| `tests/test_triton.py` | `tests/export/test_triton.py` |
| `tests/test_shipped_model.py` | `tests/export/test_shipped_model.py` |
| `tests/test_metamorphic.py` | `tests/export/test_metamorphic.py` |
| `tests/test_bench.py` | `tests/bench/test_bench.py` |
| `tests/test_bench_view.py` | `tests/bench/test_bench_view.py` |
| `tests/test_tune.py` | `tests/bench/test_tune.py` |
| `tests/test_gpu_check.py` | `tests/bench/test_gpu_check.py` |
| `tests/test_cli.py` | `tests/cli/test_cli.py` |
| `tests/test_install_profile.py` | `tests/cli/test_install_profile.py` |
| `tests/test_faults.py` | `tests/cli/test_faults.py` |
| `tests/test_faults2.py` | `tests/cli/test_faults2.py` |
| `tests/test_bounds.py` | `tests/cli/test_bounds.py` |
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

# Modules that stay at the top level of edgeseg/: what every stage uses.
TOP = [
    *("__init__", "__main__", "_moved", "errors", "files", "signals", "machine", "sizes"),
    *("onnx_header", "artifacts", "metrics", "names", "model_contract", "model"),
    "cli",  # the flat cli.py, if it is not the package edgeseg/cli/ yet
]
# old module -> (subpackage, new module name)
MOVES: dict[str, tuple[str, str]] = {
    # io: reading scans and writing results, torch-free
    "scan_files": ("io", "scan_files"),
    "scan_readers": ("io", "scan_readers"),
    "scans": ("io", "scans"),
    "scan_rows": ("io", "scan_rows"),
    "dicom": ("io", "dicom"),
    "dicom_seg": ("io", "dicom_seg"),
    "dicom_sr": ("io", "dicom_sr"),
    "dicom_results": ("io", "dicom_results"),
    "mosaic": ("io", "mosaic"),
    "outputs": ("io", "outputs"),
    "records": ("io", "records"),
    "triage": ("io", "triage"),
    "qc": ("io", "qc"),
    "qc_anatomy": ("io", "qc_anatomy"),
    "skullstrip": ("io", "skullstrip"),
    # data: what training reads
    "demo": ("data", "demo"),
    "data": ("data", "dataset"),
    "volume": ("data", "volume"),
    "split": ("data", "split"),
    "augment": ("data", "augment"),
    "synth": ("data", "synth"),
    "raw_head": ("data", "raw_head"),
    "synth_planes": ("data", "synth_planes"),
    # runtime: running an exported model
    "runtime": ("runtime", "runners"),
    "ort_session": ("runtime", "ort_session"),
    "openvino_backend": ("runtime", "openvino_backend"),
    "openvino_blobs": ("runtime", "openvino_blobs"),
    "cbackend": ("runtime", "cbackend"),
    "cbuild": ("runtime", "cbuild"),
    "tensorrt": ("runtime", "tensorrt"),
    "deploy": ("runtime", "deploy"),
    "measure": ("runtime", "measure"),
    # infer: the infer command's work
    "crop": ("infer", "crop"),
    "infer_config": ("infer", "config"),
    "scan_writer": ("infer", "scan_writer"),
    "segment": ("infer", "segment"),
    "cluster_connect": ("infer", "cluster_connect"),
    "cluster_tasks": ("infer", "cluster_tasks"),
    "cluster": ("infer", "cluster"),
    "infer": ("infer", "run"),
    # node: the DICOM node
    "node_config": ("node", "config"),
    "node_queue": ("node", "queue"),
    "node_send": ("node", "send"),
    "node_watch": ("node", "watch"),
    "node_stow": ("node", "stow"),
    "node": ("node", "server"),
    # train
    "train_config": ("train", "config"),
    "losses": ("train", "losses"),
    "evaluate": ("train", "evaluate"),
    "train_report": ("train", "report"),
    "distributed": ("train", "distributed"),
    "train_data": ("train", "data"),
    "train": ("train", "loop"),
    "robustness": ("train", "robustness"),
    "robustness_heads": ("train", "robustness_heads"),
    # export
    "export": ("export", "onnx"),
    "quantize_nodes": ("export", "quantize_nodes"),
    "quantize_fp16": ("export", "quantize_fp16"),
    "quantize": ("export", "quantize"),
    "parity": ("export", "parity"),
    "parity_report": ("export", "parity_report"),
    "executorch_export": ("export", "executorch"),
    "triton": ("export", "triton"),
    # bench
    "bench_targets": ("bench", "targets"),
    "bench": ("bench", "suite"),
    "bench_report": ("bench", "report"),
    "crop_bench": ("bench", "crop_bench"),
    "tune": ("bench", "tune"),
    "tune_report": ("bench", "tune_report"),
}
SUBPACKAGES = ["io", "data", "runtime", "infer", "node", "train", "export", "bench", "cli"]
# Each subpackage's __init__.py: what it holds, what it may import (tests/test_architecture.py checks the order).
DOCSTRINGS = {
    "io": "Scans in, results out, torch-free: the scan readers (NumPy, PNG, NIfTI, DICOM series and their "
    "triage), skull stripping, the QC verdicts, and what a run writes (label maps, the QC mosaic, DICOM SEG "
    "and SR, summary.csv and the run records). May import the top level of edgeseg only; an edge box "
    "installs this half without torch.",
    "data": "What training reads: the MNI152 demo set, the dataset reader of the tutorial layout, the 3-D "
    "template volume and its leakage-free split, the training patches and the synthetic heads. May import "
    "the top level of edgeseg only (torch and nilearn lazily, where a tensor or the template is needed).",
    "runtime": "Running an exported model, torch-free: the runners (ONNX Runtime, OpenVINO, the C library "
    "and its build, TensorRT engines), the deploy file that edgeseg tune writes, and the timed child "
    "processes. May import the top level of edgeseg only; the eager PyTorch runner imports torch lazily.",
    "infer": "The work of `edgeseg infer`, torch-free: crop to the brain, segment a volume slice by slice "
    "with QC, the run over a folder, and the same run spread over a Dask cluster. May import the top level, "
    "io and runtime.",
    "node": "The DICOM node of `edgeseg listen`, torch-free: its settings, the durable queue, C-STORE/STOW-RS "
    "sending, the watcher and the server that runs infer on each complete series. May import the top "
    "level, io, runtime and infer.",
    "train": "Training and judging a checkpoint: the loop and its config, losses, multi-process training, "
    "evaluation, the run report and the robustness report. May import the top level, data and runtime "
    "(the robustness report scores ONNX files too); torch is imported where a tensor is needed.",
    "export": "From a checkpoint to deployable files: ONNX export, fp16/int8 quantisation, the parity checks "
    "and their model card, ExecuTorch and the Triton model repository. May import every stage below it: "
    "the top level, io, data, runtime and train (evaluation and robustness go into the model card).",
    "bench": "Timing and choosing: the benchmark suites and their report, the crop benchmark, and edgeseg "
    "tune with its table. May import the top level, data, runtime, infer and export (parity's gates); "
    "benchmarking ONNX files imports no torch.",
}
# old test file -> subpackage of tests/ ("" stays in tests/); mirrors the module each file tests.
TEST_MOVES: dict[str, str] = {
    **dict.fromkeys(["test_architecture", "test_machine", "test_metrics", "test_model", "test_onnx_header"], ""),
    **dict.fromkeys(["test_packaging", "test_moved", "test_docs"], ""),
    **dict.fromkeys(["test_dicom", "test_dicom_seg", "test_dicom_sr", "test_mosaic", "test_outputs"], "io"),
    **dict.fromkeys(["test_qc", "test_qc_verdicts", "test_scans", "test_seg_resend", "test_skullstrip"], "io"),
    **dict.fromkeys(["test_triage", "test_rerun_records"], "io"),
    **dict.fromkeys(["test_augment", "test_data", "test_demo", "test_synth", "test_volume"], "data"),
    **dict.fromkeys(["test_runtime", "test_openvino_backend", "test_clib", "test_tensorrt"], "runtime"),
    **dict.fromkeys(["test_deploy_fallbacks"], "runtime"),
    **dict.fromkeys(["test_infer", "test_crop", "test_cluster", "test_cluster_faults"], "infer"),
    **dict.fromkeys(["test_node", "test_node_queue"], "node"),
    **dict.fromkeys(["test_train", "test_distributed", "test_evaluate", "test_robustness"], "train"),
    **dict.fromkeys(["test_export", "test_parity", "test_parity_report", "test_executorch_export"], "export"),
    **dict.fromkeys(["test_triton", "test_shipped_model", "test_metamorphic"], "export"),
    **dict.fromkeys(["test_bench", "test_bench_view", "test_tune", "test_gpu_check"], "bench"),
    **dict.fromkeys(["test_cli", "test_install_profile", "test_faults", "test_faults2", "test_bounds"], "cli"),
}
# Where references are rewritten: (folder, glob). export/ is not: its files are the shipped model's.
REWRITE = [
    ("edgeseg", "**/*.py"),
    ("tests", "**/*.py"),
    ("bench", "*.py"),
    ("bench", "*.toml"),
    (".ci", "*"),
    ("csrc", "**/*.txt"),
    ("csrc", "**/*.[ch]"),
    ("", "pyproject.toml"),
]


# Lines the rewrite made longer than ruff's 120 characters: (file after the move, old text, new text).
FIXUPS = [
    (
        "tests/data/test_synth.py",
        '"""Synthetic heads (edgeseg.data.synth, synth_planes): non-brain tissue is background, held-out anatomy never',
        '"""Synthetic heads (edgeseg.data.synth, synth_planes): non-brain tissue is background, held-out anatomy\nnever',
    ),
    (
        "edgeseg/cli/__init__.py",
        "``main`` (the console script ``edgeseg``, ``python -m edgeseg`` and ``python -m edgeseg.cli``).\n",
        "``main`` (the console script ``edgeseg``, ``python -m edgeseg`` and ``python -m edgeseg.cli``).\n"
        "It sits above every stage and may import any of them, inside the command bodies.\n",
    ),
    (  # one paragraph, as each subpackage's docstring is (tests/test_architecture.py)
        "edgeseg/cli/__init__.py",
        "one module per command group.\n\nEach command",
        "one module per command group.\nEach command",
    ),
    (
        "edgeseg/infer/segment.py",
        '        """``session``: the :class:`edgeseg.runtime.runners.Runner` fetching logits (a Dask client for a cluster run)."""',
        '        """``session``: the :class:`edgeseg.runtime.runners.Runner` fetching logits (a Dask client for a\n'
        '        cluster run)."""',
    ),
    (
        "tests/bench/test_bench.py",
        '"""Tests for the bench stage: edgeseg.bench.suite, edgeseg.runtime.measure, edgeseg.runtime.runners runners, '
        "edgeseg.bench.report.",
        '"""Tests for the bench stage: edgeseg.bench.suite, edgeseg.runtime.measure, edgeseg.runtime.runners\'s runners,\n'
        "edgeseg.bench.report.",
    ),
    (
        "tests/cli/test_install_profile.py",
        "        \"for m in ('edgeseg.cli', 'edgeseg.infer.run', 'edgeseg.bench.suite', 'edgeseg.infer.segment', "
        "'edgeseg.io.scans'):\\n\"\n",
        "        \"for m in ('edgeseg.cli', 'edgeseg.infer.run', 'edgeseg.bench.suite', 'edgeseg.infer.segment',\"\n"
        "        \" 'edgeseg.io.scans'):\\n\"\n",
    ),
]


def new_name(old: str) -> str:
    """``scans`` -> ``io.scans`` (dotted, below ``edgeseg``)."""
    sub, name = MOVES[old]
    return f"{sub}.{name}"


def table() -> str:
    rows = ["| old | new |", "|---|---|"]
    rows += [f"| `edgeseg.{old}` | `edgeseg.{new_name(old)}` |" for old in MOVES]
    rows += [f"| `tests/{t}.py` | `tests/{sub}/{t}.py` |" for t, sub in TEST_MOVES.items() if sub]
    return "\n".join(rows)


def unplaced(repo: Path) -> tuple[list[str], list[str]]:
    """Modules and test files of a flat tree that neither MOVES/TOP nor TEST_MOVES places."""
    modules = sorted(p.stem for p in (repo / "edgeseg").glob("*.py") if p.stem not in TOP and p.stem not in MOVES)
    tests = sorted(p.stem for p in (repo / "tests").glob("test_*.py") if p.stem not in TEST_MOVES)
    return modules, tests


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


# --- rewriting references -------------------------------------------------------------------------------


def _old_pattern() -> re.Pattern[str]:
    names = "|".join(sorted(MOVES, key=len, reverse=True))
    # edgeseg.scans / edgeseg.scans.read / "edgeseg.tune" / -m edgeseg.tune; not edgeseg.qc_ranges (\b)
    return re.compile(rf"(?<![\w./])edgeseg\.({names})\b(?![\w])")


def _path_pattern() -> re.Pattern[str]:
    names = "|".join(sorted(MOVES, key=len, reverse=True))
    return re.compile(rf"(?<![\w])edgeseg/({names})\.py\b")


def _test_path_pattern() -> re.Pattern[str]:
    names = "|".join(sorted((t for t, s in TEST_MOVES.items() if s), key=len, reverse=True))
    return re.compile(rf"(?<![\w/])tests/({names})\.py\b")


def rewrite_from_edgeseg(text: str) -> str:
    """``from edgeseg import files, scans, train_config`` -> one statement per package, local names kept."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    lines = text.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.module == "edgeseg" and node.level == 0):
            continue
        if not any(a.name in MOVES for a in node.names):
            continue
        groups: dict[str, list[str]] = {}
        for a in node.names:
            if a.name in MOVES:
                sub, name = MOVES[a.name]
                local = a.asname or a.name
                groups.setdefault(f"edgeseg.{sub}", []).append(name if local == name else f"{name} as {local}")
            else:
                groups.setdefault("edgeseg", []).append(a.name if not a.asname else f"{a.name} as {a.asname}")
        indent = lines[node.lineno - 1][: node.col_offset]
        new = "".join(f"{indent}from {pkg} import {', '.join(names)}\n" for pkg, names in groups.items())
        edits.append((node.lineno, node.end_lineno, new))
    for start, end, new in sorted(edits, reverse=True):
        last = lines[end - 1]
        if start == end and "#" in last:  # a one-line import's trailing comment stays on it
            new = new.rstrip("\n") + "  " + last[last.index("#") :].rstrip("\n") + "\n"
        lines[start - 1 : end] = [new]
    return "".join(lines)


_FILE_CHAIN = re.compile(
    r"Path\(__file__\)(\.resolve\(\))?(?:(?P<parents>(?:\.parent(?![s\w]))+)|\.parents\[(?P<n>\d+)\]|\.with_name\((?P<name>[^)]*)\))"
)


def deepen_file_paths(text: str, where: str) -> str:
    """A module one folder deeper: ``Path(__file__).parent.parent`` -> ``Path(__file__).parents[2]``."""

    def one(m: re.Match[str]) -> str:
        base = "Path(__file__)" + (m.group(1) or "")
        if m.group("name"):
            return f"({base}.parents[1] / {m.group('name')})"
        steps = m.group("parents").count(".parent") if m.group("parents") else int(m.group("n")) + 1
        return f"{base}.parents[{steps}]"

    new = _FILE_CHAIN.sub(one, text)
    # Left alone: a search up the parents (test_docs' REPO), the same at any depth.
    known = re.compile(r"Path\(__file__\)(\.resolve\(\))?(\.parents\[\d+\]|\.parents(?!\[)|\.parent\b)|\w\.__file__")
    left = [line.strip() for line in new.splitlines() if "__file__" in known.sub("", line)]
    if left:
        sys.exit(f"{where}: a __file__ use the move does not know how to deepen: {left}")
    return new


def rewrite(text: str) -> str:
    """Every reference to an old module path, in code, strings and prose, to its new one."""
    # Each old name is rewritten once: the dotted names first, then `from edgeseg import ...`, whose
    # new statements (from edgeseg.train import distributed) the dotted pass would take for old names.
    text = _old_pattern().sub(lambda m: f"edgeseg.{new_name(m.group(1))}", text)
    text = _path_pattern().sub(lambda m: f"edgeseg/{new_name(m.group(1)).replace('.', '/')}.py", text)
    text = _test_path_pattern().sub(lambda m: f"tests/{TEST_MOVES[m.group(1)]}/{m.group(1)}.py", text)
    return rewrite_from_edgeseg(text)


# --- the files the move writes --------------------------------------------------------------------------


def public_names(path: Path, reexports: bool = True) -> dict[str, str]:
    """The names a user could import from a module -> the module (new path) that holds each now.

    Its public top-level definitions, and (``reexports``) what it imported from other edgeseg modules:
    ``from edgeseg.train import UNet`` worked, so it keeps working, pointed at ``edgeseg.model``."""
    stem = path.stem
    home = f"edgeseg.{new_name(stem)}" if stem in MOVES else f"edgeseg.{stem}"
    names: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = home
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id: home for t in targets if isinstance(t, ast.Name)}
        elif reexports and isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeseg."):
            old = node.module.removeprefix("edgeseg.")
            source = f"edgeseg.{new_name(old)}" if old in MOVES else node.module
            names |= {a.asname or a.name: source for a in node.names if (a.asname or a.name) == a.name}
    return {n: m for n, m in sorted(names.items()) if not n.startswith("_")}


def subpackage_init(sub: str, forwards: dict[str, str]) -> str:
    import textwrap

    doc = textwrap.fill(DOCSTRINGS[sub], width=110)
    body = f'"""{doc}\n"""\n\nfrom __future__ import annotations\n'
    if not forwards:
        return body
    module = f"edgeseg.{new_name(sub)}"
    lines = "".join(f'    "{n}": "{m}",\n' for n, m in sorted(forwards.items()))
    return body + (
        "\nfrom edgeseg._moved import forwarder\n\n"
        f"# `edgeseg.{sub}` was a module until issue 26 (now `{module}`): its public names, for one release,\n"
        "# each from the module that holds it now.\n"
        f"_MOVED_NAMES = {{\n{lines}}}\n\n"
        "__getattr__ = forwarder(__name__, _MOVED_NAMES)\n"
    )


TEMPLATES = Path(__file__).resolve().parent / "move_templates"


def moved_module(moved: list[str]) -> str:
    """edgeseg/_moved.py: the template with one alias per moved module (not the ones a subpackage took)."""
    aliases = "".join(f'    "edgeseg.{old}": "edgeseg.{new_name(old)}",\n' for old in moved if old != MOVES[old][0])
    return (TEMPLATES / "_moved.py").read_text().replace("    # ALIASES\n", aliases)


def _old_list(test: Path, name: str) -> list[str]:
    """A list of strings assigned to ``name`` in the flat tree's tests/test_architecture.py."""
    for node in ast.parse(test.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return [e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    sys.exit(f"{test}: no {name} list")


def _package_order(folder: Path) -> list[str]:
    """A package's own modules bottom-up by their imports of each other (the CLI's, which the flat ORDER kept as one)."""
    mods = {p.stem: p.read_text() for p in folder.glob("*.py")}
    deps = {
        m: {o for o in mods if o != m and re.search(rf"(from \.{o}\b|from \. import .*\b{o}\b|edgeseg\.cli\.{o}\b|from edgeseg\.cli import .*\b{o}\b)", text)}
        for m, text in mods.items()
    }
    order: list[str] = []
    last = [m for m in ("__main__",) if deps.pop(m, None) is not None]  # `python -m`: the package's entry
    while deps:
        ready = sorted(m for m, d in deps.items() if d <= set(order))
        if not ready:
            sys.exit(f"{folder}: its modules import each other in a cycle: {deps}")
        order += ready
        for m in ready:
            del deps[m]
    return order + last


def architecture_test(repo: Path) -> str:
    """tests/test_architecture.py for the new layout: the flat ORDER regrouped by subpackage, in its order."""
    test = repo / "tests" / "test_architecture.py"
    flat, inference = _old_list(test, "ORDER"), _old_list(test, "INFERENCE")
    groups: dict[str, list[str]] = {"": ["errors", "_moved"]} | {s: ["__init__"] for s in SUBPACKAGES}
    for old in flat:
        if old in MOVES:
            groups[MOVES[old][0]].append(MOVES[old][1])
        elif old == "cli" or old.startswith("cli."):
            groups["cli"] = _package_order(repo / "edgeseg" / "cli") if (repo / "edgeseg" / "cli").is_dir() else ["cli"]
        elif old not in ("errors", "__main__"):
            groups[""].append(old)
    entries = ["__main__"]
    if groups["cli"] == ["cli"]:  # still a flat cli.py: an entry point, like __main__
        entries.insert(0, groups.pop("cli").pop())
        SUBPACKAGES.remove("cli")
    comments = {"": "the top level of edgeseg/: what every stage uses"}
    lines = []
    for sub, modules in groups.items():
        lines.append(f"    # {comments.get(sub, DOCSTRINGS.get(sub, 'the command line').split(':')[0])}")
        lines.append(f'    "{sub}": [{", ".join(repr(m).replace(chr(39), chr(34)) for m in modules)}],')
    inference_new = [new_name(m) if m in MOVES else m for m in inference]
    text = (TEMPLATES / "test_architecture.py").read_text()
    text = text.replace("$ORDER", "\n".join(lines)).replace("$ENTRIES", repr(entries).replace("'", '"')).replace("$TRAINING_LOOP", f"edgeseg.{new_name('train')}")
    return text.replace("$INFERENCE", "".join(f'    "{m}",\n' for m in inference_new).rstrip("\n"))


def apply(repo: Path) -> None:
    modules, tests = unplaced(repo)
    if modules or tests:
        sys.exit(
            "no place for these yet; add them to MOVES/TOP or TEST_MOVES and rerun:\n"
            + "".join(f"  edgeseg/{m}.py\n" for m in modules)
            + "".join(f"  tests/{t}.py\n" for t in tests)
        )
    pkg = repo / "edgeseg"
    forwards = {
        MOVES[old][0]: public_names(pkg / f"{old}.py")
        for old in MOVES
        if MOVES[old][0] == old and (pkg / f"{old}.py").is_file()
    }
    for sub, names in forwards.items():
        # A name the old module only imported (train.py's `evaluate`, from edgeseg.evaluate) yields to
        # the submodule of that name; a name it defined must not.
        clash = sorted(set(names) & {MOVES[o][1] for o in MOVES if MOVES[o][0] == sub})
        defined = set(public_names(pkg / f"{sub}.py", reexports=False))
        if set(clash) & defined:
            sys.exit(f"edgeseg.{sub}: its old public names {sorted(set(clash) & defined)} are now submodule names")
        for name in clash:
            print(f"edgeseg.{sub}.{name}: the submodule now (the old module only imported the name)")
            del names[name]
    arch = architecture_test(repo)
    # Every file that moves must be one the move can follow (its __file__ paths), before anything moves.
    for rel in [f"edgeseg/{o}.py" for o in MOVES] + [f"tests/{t}.py" for t, sub in TEST_MOVES.items() if sub]:
        if (repo / rel).is_file():
            deepen_file_paths((repo / rel).read_text(), rel)
    moved_files, moved = [], []
    for old, (sub, name) in MOVES.items():
        if not (pkg / f"{old}.py").is_file():
            print(f"edgeseg/{old}.py: not in this tree (a row of MOVES for a module still to come)")
        else:
            moved.append(old)
            (pkg / sub).mkdir(exist_ok=True)
            git(repo, "mv", f"edgeseg/{old}.py", f"edgeseg/{sub}/{name}.py")
            moved_files.append(pkg / sub / f"{name}.py")
    for test, sub in TEST_MOVES.items():
        if sub and (repo / "tests" / f"{test}.py").is_file():
            (repo / "tests" / sub).mkdir(exist_ok=True)
            git(repo, "mv", f"tests/{test}.py", f"tests/{sub}/{test}.py")
            moved_files.append(repo / "tests" / sub / f"{test}.py")
    for path in moved_files:
        path.write_text(deepen_file_paths(path.read_text(), str(path.relative_to(repo))))
    for folder, pattern in REWRITE:
        for path in sorted((repo / folder).glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                old = path.read_text()
                if (new := rewrite(old)) != old:
                    path.write_text(new)
    # What the move writes itself (after the rewrite, which would take its new paths for old ones).
    written = [pkg / "_moved.py", repo / "tests" / "test_moved.py", repo / "tests" / "test_architecture.py"]
    written[0].write_text(moved_module(moved))
    written[1].write_text((TEMPLATES / "test_moved.py").read_text())
    written[2].write_text(arch)
    for sub in DOCSTRINGS:
        written.append(pkg / sub / "__init__.py")
        written[-1].write_text(subpackage_init(sub, forwards.get(sub, {})))
    init = pkg / "__init__.py"
    marker = "from edgeseg.errors import EdgesegError\n"
    install = "\n_moved.install()  # the old module paths (issue 26's move), for one release\n"
    init.write_text(init.read_text().replace(marker, "from edgeseg import _moved\n" + marker, 1) + install)
    git(repo, "add", *(str(p.relative_to(repo)) for p in written))
    pyproject = repo / "pyproject.toml"
    text = pyproject.read_text()
    listed = re.search(r"^packages = \[(.*)\]$", text, re.M)
    packages = [p.strip().strip('"') for p in listed.group(1).split(",")]
    packages[1:1] = [f"edgeseg.{s}" for s in SUBPACKAGES if f"edgeseg.{s}" not in packages and (pkg / s).is_dir()]
    one_a_line = "".join(f'    "{p}",\n' for p in packages)
    pyproject.write_text(text.replace(listed.group(0), f"packages = [\n{one_a_line}]"))
    for rel, old, new in FIXUPS:
        path = repo / rel
        if path.is_file() and old in path.read_text():
            path.write_text(path.read_text().replace(old, new))
        else:
            print(f"fixup not applied (the text changed?): {rel}: {old[:60]!r}")
    subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "I", "--fix", "-q", "edgeseg", "tests", "bench"], cwd=repo)
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", "edgeseg", "tests", "bench"], cwd=repo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print what moved where")
    parser.add_argument("--apply", action="store_true", help="move a flat tree (the repository of this script)")
    parser.add_argument("--check", action="store_true", help="list what a flat tree has that the move cannot place")
    parser.add_argument("--fill-table", action="store_true", help="write the table into this docstring")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1], help="the flat tree")
    args = parser.parse_args()
    repo = args.repo.resolve()
    if args.table:
        print(table())
    elif args.fill_table:
        me = Path(__file__)
        text = me.read_text()
        start = text.index("| old | new |")
        me.write_text(text[:start] + table() + "\n" + text[text.index('"""', start) :])
    elif args.check:
        modules, tests = unplaced(repo)
        print("unplaced modules:", modules, "\nunplaced tests:", tests)
        sys.exit(1 if modules or tests else 0)
    elif args.apply:
        apply(repo)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
