"""Parity reports for people: the console table, ``edgeseg validate``, and the model card.

* :func:`run_validate` is ``edgeseg validate``: it prints the table (:func:`parity_table`),
  the skipped providers, the independent-executor and fp16 checks, writes ``parity.json``
  and raises EdgesegError naming every failed check.
* :func:`score_formats` measures each exported file's per-class IoU on *all* held-out
  slices at their native size, and :func:`write_model_card` renders ``README.md`` (the
  shipped model's card) from the checkpoint and ``parity.json``, so every number in the card
  comes from a file that ``tests/export/test_shipped_model.py`` recomputes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg.artifacts import PRECISIONS, ArtifactPaths
from edgeseg.data.split import HeldOut
from edgeseg.errors import EdgesegError
from edgeseg.export.parity import ParityConfig, ParityReport, validate
from edgeseg.files import write_json, write_text

if TYPE_CHECKING:
    from edgeseg.export.quantize_fp16 import Fp16Check


def wide_console() -> Any:
    """A rich Console; 132 columns when not a terminal, so the table is not squeezed in logs."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=132)


def _fmt(value: float | None, signed: bool = False) -> str:
    return "—" if value is None else (f"{value:+.4f}" if signed else f"{value:.4f}")


def parity_table(report: ParityReport) -> Any:
    """A rich Table, one line per row; the failed checks are in ``report.failures``."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"parity vs PyTorch fp32 ({Path(report.checkpoint).name})", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in (
        "model",
        "EP",
        "size",
        "N",
        "max|Δ|",
        "mean|Δ|",
        "min atol",
        "agree %",
        "mIoU ref",
        "mIoU",
        "ΔmIoU",
        "gate",
    ):
        table.add_column(col, justify="left" if col in ("model", "EP") else "right", no_wrap=True)
    for r in report.rows:
        table.add_row(
            r.model,
            r.provider.replace("ExecutionProvider", ""),
            r.size,
            str(r.batch),
            f"{r.max_abs:.1e}",
            f"{r.mean_abs:.1e}",
            f"{r.min_atol:.1e}",
            f"{100 * r.agreement:.3f}",
            _fmt(r.miou_ref),
            _fmt(r.miou_cand),
            _fmt(r.d_miou, signed=True),
            "[green]pass[/]" if not r.failures else "[red]FAIL[/]",
        )
    return table


def parse_providers(text: str) -> tuple[str, ...]:
    """``"cpu,cuda"`` -> ``("cpu", "cuda")``; EdgesegError on an unknown name."""
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in ("cpu", "cuda", "tensorrt")]
    if unknown or not names:
        raise EdgesegError(
            f"--providers {text!r}: unknown {unknown or 'empty list'}; give a comma-separated"
            " list of cpu, cuda, tensorrt"
        )
    return names


def print_report(console: Any, report: ParityReport) -> None:
    """The table and the lines that go with it (skipped providers, extra checks)."""
    console.print(f"{len(report.rows)} comparisons on {report.data}")
    console.print(parity_table(report))
    for provider, reason in report.skipped.items():
        console.print(f"not run: {provider}: {reason}")
    for name, check in report.reference_evaluator.items():
        console.print(f"onnx.reference vs ORT on {name}: {_describe_reference(check)}")
    if report.fp16_activations:
        console.print(_describe_fp16(report.fp16_activations))


def run_validate(
    models: list[Path],
    ckpt: Path | None = None,
    data: Path | None = None,
    config: ParityConfig | None = None,
    json_path: Path | None = None,
) -> ParityReport:
    """``edgeseg validate``: print the parity table, write parity.json, raise on a failed gate."""
    console = wide_console()
    report = validate(list(models), ckpt, data, config)
    print_report(console, report)
    out = report.write(json_path or Path(models[0]).with_name("parity.json"), merge=True)
    if not report.passed:
        raise EdgesegError(f"{models[0]}: parity gate failed: {'; '.join(report.failures)} (see {out})")
    console.print(f"[green]all gates passed[/] -> {out}")
    return report


def _describe_reference(check: dict[str, Any]) -> str:
    if "skipped" in check:
        return f"not run ({check['skipped']})"
    return f"max|Δlogit| {check['max_abs']:.2e}, labels equal {100 * check['labels_equal']:.2f}%"


def _describe_fp16(check: Fp16Check) -> str:
    return (
        f"PyTorch float16 on CPU ({check.slices} slices 394²): max|activation|"
        f" {check.max_activation:.1f} ({check.max_activation_layer}; {check.headroom:.0f}x"
        f" below 65504), max|Δlogit| {check.max_abs_logit_diff:.2e}, agreement"
        f" {100 * check.agreement:.4f}%, {'finite' if check.finite else 'OVERFLOW (inf/NaN)'}"
    )


# ----------------------------------------------------------------------------- model card


def score_formats(files: dict[str, Path], data: HeldOut, threads: int | None = None) -> dict[str, Any]:
    """Per exported file: size, SHA-256 and per-class IoU on all held-out slices (ORT CPU)."""
    from edgeseg.artifacts import read_model_info
    from edgeseg.files import sha256_file
    from edgeseg.metrics import score
    from edgeseg.runtime.runners import RunnerSpec, open_runner

    scores = {}
    for precision, path in files.items():
        runner = open_runner(path, RunnerSpec("ort", "cpu", threads=threads or 0))
        scores[precision] = {
            "file": path.name,
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "slices": len(data.images),
            **score(runner.labels, data.images, data.masks, read_model_info(path).class_names),
        }
    return scores


def render_model_card(ckpt: dict[str, Any], parity: dict[str, Any], commands: list[str]) -> str:
    """Markdown model card from a checkpoint dict and a parity.json that holds ``formats``."""
    from edgeseg.model import UNet, checkpoint_model_config, count_parameters
    from edgeseg.model_contract import ModelConfig

    config = ModelConfig(**checkpoint_model_config(ckpt))
    formats, train = parity["formats"], ckpt.get("train_config") or {}
    lines = [
        "# edgeseg default model",
        "",
        f"U-Net {list(config.widths)} ({count_parameters(UNet(config)):,} parameters): raw MRI"
        f" intensities `image` float32 (N, 1, H, W), any H, W >= {config.min_size} ->"
        " `logits` float32 (N, C, H, W) and `labels` uint8 (N, H, W).",
        f"Classes: {', '.join(f'{i} {n}' for i, n in enumerate(config.class_names))}.",
        "",
        "## Data and provenance",
        "",
        "Trained on the edgeseg demo set: the MNI152 ICBM 2009a template shipped with nilearn"
        " (`edgeseg data demo`), sliced in three planes, gray/white matter labels from its"
        " tissue probability maps (see its provenance.json for the licence notice and"
        f" citations), plus oblique planes resampled from the template. Held out:"
        f" {(ckpt.get('data') or {}).get('split_note') or 'contiguous slabs'}"
        f" ({next(iter(formats.values()))['slices']} slices scored); held-out voxels supervise"
        " no training pixel in any plane or orientation.",
        f"Checkpoint SHA-256 `{parity['checkpoint_sha256']}`, the epoch of the run's"
        f" {(ckpt.get('train_config') or {}).get('epochs') or len(ckpt.get('history') or []) or '?'} with the best"
        f" held-out mIoU: epoch {int(ckpt.get('epoch', -2)) + 1} (chosen on the held-out slices it is scored on,"
        " so its figure is slightly optimistic; the history gives every epoch's).",
        *_reframed_line(ckpt),
        f"Normalisation contract {config.contract}.",
        "",
        "## Recipe",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in train.items() if k not in ("data", "runs_dir", "name")],
        "",
        "## Reproduce every file",
        "",
        "```",
        *commands,
        "```",
        "",
        "## Held-out accuracy per file (all held-out slices, 394x394, ONNX Runtime CPU)",
        "",
        f"| file | MB | {' | '.join(f'IoU {n}' for n in config.class_names)} | mIoU (fg) |",
        "|---|---|" + "---|" * (len(config.class_names) + 1),
        *[
            f"| {f['file']} | {f['bytes'] / 1e6:.2f} | "
            + " | ".join(_fmt(f["iou"][n]) for n in config.class_names)
            + f" | {_fmt(f['miou_fg'])} |"
            for f in formats.values()
        ],
        f"| model.pt (PyTorch, from training) | {parity.get('checkpoint_bytes', 0) / 1e6:.2f} | "
        + " | ".join(_fmt((ckpt.get("metrics") or {}).get("iou", {}).get(n)) for n in config.class_names)
        + f" | {_fmt((ckpt.get('metrics') or {}).get('miou_fg'))} |",
        "",
        "## Parity with the PyTorch checkpoint (`edgeseg validate`)",
        "",
        f"Gates passed: **{'yes' if parity['passed'] else 'NO'}**. Each row: real held-out"
        " slices cropped or edge-padded to the size.",
        "",
        "| file | EP | size | N | max abs Δlogit | agree % | mIoU ref | mIoU | ΔmIoU | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['provider'].replace('ExecutionProvider', '')} | {r['size']} |"
            f" {r['batch']} | {r['max_abs']:.1e} | {100 * r['agreement']:.3f} | {_fmt(r['miou_ref'])}"
            f" | {_fmt(r['miou_cand'])} | {_fmt(r['d_miou'], True)} |"
            f" {'pass' if not r['failures'] else 'FAIL'} |"
            for r in parity["rows"]
        ],
        "",
        *_split_section(parity.get("splits")),
        *_robustness_section(parity.get("robustness")),
    ]
    return "\n".join(lines)


def _reframed_line(ckpt: dict[str, Any]) -> list[str]:
    """A line saying the weights come from a contract-2 run (evaluate.reframe_checkpoint), if so."""
    reframed = ckpt.get("reframed")
    if not reframed:
        return []
    before = (reframed.get("metrics_contract_2") or {}).get("miou_fg")
    return [
        f"The weights are those of a contract-{reframed['from_contract']} run (SHA-256"
        f" `{reframed['checkpoint_sha256']}`, held-out mIoU {_fmt(before)} under that contract), framed"
        " on the pooling grid by contract 3 without retraining; every figure here is contract 3's.",
    ]


def _split_section(splits: dict[str, Any] | None) -> list[str]:
    """The checkpoint's mIoU under each split (``edgeseg evaluate export/model.pt --split S``)."""
    if not splits:
        return []
    return [
        "## Held-out accuracy under each split (PyTorch, `edgeseg evaluate export/model.pt --split S`)",
        "",
        "Only the regions split is held out from this model in every plane; the slabs and tutorial"
        " slices are held out from training runs *with those splits*, and this model trained on"
        " most of their pixels (through other planes, or directly), so its figures there are not"
        " held-out figures.",
        "",
        "| split | scored | mIoU (GM, WM) | IoU GM | IoU WM |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | not applicable: {s['skipped']} | — | — | — |"
            if "skipped" in s
            else f"| {name} | {s['slices']} slices | {_fmt(s['miou_fg'])} | {_fmt(s['iou'].get('gray_matter'))}"
            f" | {_fmt(s['iou'].get('white_matter'))} |"
            for name, s in splits.items()
        ],
        "",
    ]


def _robustness_section(rows: list[dict[str, Any]] | None) -> list[str]:
    """The robustness table (``edgeseg evaluate --robustness``) of each file it was run on."""
    if not rows:
        return []
    from edgeseg.train.robustness import RobustnessRow, format_robustness

    out = ["## Robustness on the held-out 3-D regions (`edgeseg evaluate --robustness export/model.onnx`)", ""]
    by_file: dict[str, list[RobustnessRow]] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(RobustnessRow(**{k: v for k, v in r.items() if k != "file"}))
    for name, table in by_file.items():
        out += [f"`{name}`:", "", format_robustness(table), ""]
    return out


SHIPPED_RECIPE = [  # how export/ is made; the last line is what regenerates this card
    "edgeseg train --name default            # 14 epochs on the demo set, 3-D regions split; runs/default/best.pt",
    "cp runs/default/best.pt export/model.pt",
    "cp runs/default/curves.png runs/default/predictions.png runs/default/history.json export/",
    "edgeseg export export/model.pt --out export --fp16 --int8 --calib 32 --calib-method percentile",
    "python -c 'from pathlib import Path; from edgeseg.model import load_checkpoint;"
    " from edgeseg.export.parity import load_eval_data; from edgeseg.export.parity_report import write_model_card;"
    ' c = load_checkpoint(Path("export/model.pt"))[1];'
    ' write_model_card(Path("export"), Path("export/model.pt"), None, load_eval_data(c))\'',
]


def split_scores(checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's pooled metrics under each split of its data; a split that does not
    apply to that data (regions outside the demo set, tutorial under 100 slices) says why."""
    from edgeseg.data.split import SPLITS
    from edgeseg.train.evaluate import evaluate_checkpoint

    scores: dict[str, Any] = {}
    for name in SPLITS:
        try:
            report = evaluate_checkpoint(checkpoint, split=name)
        except EdgesegError as exc:
            scores[name] = {"skipped": str(exc)}
            continue
        scores[name] = {k: v for k, v in report.items() if k in ("slices", "miou_fg", "iou")}
    return scores


def write_model_card(
    folder: Path, checkpoint: Path, commands: list[str] | None, data: HeldOut, robustness_slices: int = 32
) -> Path:
    """Score every ONNX file in ``folder``, add the scores to its parity.json, write README.md.

    ``commands`` go under "Reproduce every file"; None = :data:`SHIPPED_RECIPE`.
    ``robustness_slices``: held-out demo slices the robustness table is measured on.
    """
    from edgeseg.model import load_checkpoint
    from edgeseg.train.robustness import run_robustness

    parity_path = Path(folder) / "parity.json"
    if not parity_path.is_file():
        raise EdgesegError(f"{parity_path}: missing; run `edgeseg export` into {folder} first")
    parity = json.loads(parity_path.read_text())
    paths = ArtifactPaths.of(checkpoint, folder)
    files = {p: paths.onnx(p) for p in PRECISIONS}
    parity["formats"] = score_formats({p: f for p, f in files.items() if f.is_file()}, data)
    parity["checkpoint_bytes"] = Path(checkpoint).stat().st_size
    parity["splits"] = split_scores(checkpoint)
    if files["fp32"].is_file():  # the file users run; `evaluate --robustness` gives any other's
        rows = run_robustness(files["fp32"], slices=robustness_slices)
        parity["robustness"] = [{"file": files["fp32"].name, **asdict(row)} for row in rows]
    write_json(parity_path, parity)
    text = render_model_card(load_checkpoint(checkpoint)[1], parity, SHIPPED_RECIPE if commands is None else commands)
    return write_text(Path(folder) / "README.md", text + "\n")
