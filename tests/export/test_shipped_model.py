"""The shipped default model in export/: every claim of export/README.md, recomputed from the files.

The card (edgeseg.export.parity_report.render_model_card) is rendered from export/parity.json, whose
``formats`` hold each file's size, SHA-256 and held-out IoU. These tests check that the card
says what parity.json says, that parity.json describes these exact files, that the gates
passed, and (slow) recompute each file's mIoU on the demo test split and the parity itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgeseg import SHIPPED_MODEL, SHIPPED_MODEL_DIR

pytestmark = pytest.mark.skipif(
    not SHIPPED_MODEL.is_file() or not (SHIPPED_MODEL_DIR / "parity.json").is_file(),
    reason="export/model.onnx and export/parity.json are not built yet (the lead trains the"
    " default model and runs `edgeseg export ... --out export --fp16 --int8`)",
)
TOLERANCE = 0.005  # 0.5 mIoU points between the card and a recomputation


@pytest.fixture(scope="module")
def parity() -> dict:
    return json.loads((SHIPPED_MODEL_DIR / "parity.json").read_text())


@pytest.fixture(scope="module")
def card() -> str:
    readme = SHIPPED_MODEL_DIR / "README.md"
    if not readme.is_file():
        pytest.fail("export/README.md is missing: render it with edgeseg.export.parity_report.write_model_card")
    return readme.read_text()


def card_rows(card: str) -> dict[str, list[str]]:
    """``{file: [cells...]}`` of the card's per-file accuracy table."""
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"model(_fp16|_int8)?\.onnx", cells[0]) and len(cells) >= 6:
            rows.setdefault(cells[0], cells)  # the first table: accuracy per file
    return rows


def test_every_format_is_shipped_and_described(parity: dict) -> None:
    from edgeseg.files import sha256_file

    assert set(parity["formats"]) == {"fp32", "fp16", "int8"}
    assert (SHIPPED_MODEL_DIR / "model.pt").is_file()
    for entry in parity["formats"].values():
        path = SHIPPED_MODEL_DIR / entry["file"]
        assert path.stat().st_size == entry["bytes"] and sha256_file(path) == entry["sha256"]


def test_the_gates_passed_for_every_file_and_size(parity: dict) -> None:
    assert parity["passed"] and not parity["failures"]
    files = {r["model"] for r in parity["rows"]}
    assert files == {"model.onnx", "model_fp16.onnx", "model_int8.onnx"}
    for name in files:
        sizes = {r["size"] for r in parity["rows"] if r["model"] == name}
        assert sizes >= {"394x394", "393x395", "394x300", "300x394", "256x257", "64x64"}


def test_card_numbers_are_parity_json_numbers(card: str, parity: dict) -> None:
    rows = card_rows(card)
    for entry in parity["formats"].values():
        cells = rows[entry["file"]]
        assert float(cells[1]) == pytest.approx(entry["bytes"] / 1e6, abs=0.006)
        assert float(cells[-1]) == pytest.approx(entry["miou_fg"], abs=5e-5)
    assert parity["checkpoint_sha256"] in card
    assert "edgeseg export" in card and "edgeseg train" in card  # the reproduce commands


def test_onnx_metadata_points_at_the_shipped_checkpoint(parity: dict) -> None:
    from edgeseg.artifacts import read_model_info
    from edgeseg.files import sha256_file

    sha = sha256_file(SHIPPED_MODEL_DIR / "model.pt")
    assert sha == parity["checkpoint_sha256"]
    for entry in parity["formats"].values():
        assert read_model_info(SHIPPED_MODEL_DIR / entry["file"]).checkpoint_sha256 == sha


@pytest.mark.slow
def test_recomputed_miou_matches_the_card(parity: dict) -> None:
    from edgeseg.export.parity import load_eval_data
    from edgeseg.export.parity_report import score_formats
    from edgeseg.model import load_checkpoint

    _, ckpt = load_checkpoint(SHIPPED_MODEL_DIR / "model.pt")
    files = {p: SHIPPED_MODEL_DIR / e["file"] for p, e in parity["formats"].items()}
    fresh = score_formats(files, load_eval_data(ckpt))
    for precision, entry in parity["formats"].items():
        assert fresh[precision]["slices"] == entry["slices"]
        assert fresh[precision]["miou_fg"] == pytest.approx(entry["miou_fg"], abs=TOLERANCE)


@pytest.mark.slow
def test_shipped_files_still_pass_parity(tmp_path: Path) -> None:
    from edgeseg.export.parity import ParityConfig, validate

    files = [SHIPPED_MODEL_DIR / n for n in ("model.onnx", "model_fp16.onnx", "model_int8.onnx")]
    report = validate(files, SHIPPED_MODEL_DIR / "model.pt", config=ParityConfig(providers=("cpu",)))
    assert report.passed, report.failures
