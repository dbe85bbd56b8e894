"""Tests for edgeseg.io.triage: which DICOM series `edgeseg infer` skips, and why, through the CLI.

The exam folder is what a scanner exports: two T1 series built from nilearn's MNI152 T1 as a
scanner writes them, a 3-plane localizer, a single-image "FAST LOCALIZER", a CT and a
structured report from pydicom's test files, a secondary capture and a shoulder series. The
T1 series are segmented; everything else is skipped with its reason and the run exits 0.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from edgeseg.io.triage import skip_reason

EDGESEG = Path(sys.executable).parent / "edgeseg"
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def edgeseg(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGESEG), *map(str, args)], capture_output=True, text=True, timeout=600)


def restamp(paths: list[Path], **attrs: object) -> list[Path]:
    """Set ``attrs`` on every file of ``paths`` (a new series made from an MNI-built one)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for name, value in attrs.items():
            setattr(ds, name, value)
        ds.save_as(path)
    return paths


def header(**attrs: object) -> pydicom.Dataset:
    """MR_small's header as an acquisition (ORIGINAL\\PRIMARY), with ``attrs`` set."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    for name, value in attrs.items():
        setattr(ds, name, value)
    return ds


SINGLE = [  # header attributes, words in the reason ("" = segmented)
    ({}, ""),
    ({"BodyPartExamined": "HEAD"}, ""),
    ({"BodyPartExamined": "BRAIN", "SeriesDescription": "t1_mprage_sag"}, ""),
    ({"Modality": "CT"}, "Modality is CT, not MR"),
    ({"SOPClassUID": SC_CLASS}, "secondary capture"),
    ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}, "a localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)"),
    ({"ImageType": ["DERIVED", "PRIMARY", "MPR"]}, "a derived image (ImageType DERIVED\\PRIMARY\\MPR)"),
    ({"ImageType": ["ORIGINAL", "SECONDARY"]}, "a secondary image"),
    ({"SeriesDescription": "FAST LOCALIZER"}, "a localizer (SeriesDescription 'FAST LOCALIZER')"),
    ({"ProtocolName": "AAHead_Scout_64ch"}, "a localizer (ProtocolName 'AAHead_Scout_64ch')"),
    ({"SeriesDescription": "Survey_32ch_HeadCoil"}, "a localizer"),
    ({"BodyPartExamined": "ABDOMEN"}, "BodyPartExamined is ABDOMEN, not the head"),
    ({"BodyPartExamined": "SHOULDER"}, "BodyPartExamined is SHOULDER, not the head"),
    ({"SeriesDescription": "t2_tse_cor_shoulder"}, "names another body part ('shoulder')"),
    ({"ProtocolName": "t1_vibe_abd_tra"}, "names another body part ('abd')"),
    ({"SeriesDescription": "T1 brain incl. cervical junction"}, ""),  # a head word wins
    ({"SeriesDescription": "3_plane loc"}, "a localizer"),
    ({"SeriesDescription": "3Dplane T1"}, ""),  # "3-plane" spelled with a separator only
    ({"SeriesDescription": "t2_blocade"}, ""),  # "loc" only as a word of its own
    ({"SeriesDescription": "t1_relocated_whip"}, ""),  # neither "loc" nor "hip" inside a word
]


@pytest.mark.parametrize(("attrs", "words"), SINGLE)
def test_skip_reason_of_one_header(attrs: dict, words: str) -> None:
    why = skip_reason([header(**attrs)])
    assert (words in why) if words else why == "", why


def test_several_orientations_are_a_localizer_and_one_is_not() -> None:
    three = [header(ImageOrientationPatient=iop) for iop in ([1.0, 0, 0, 0, 1.0, 0], SAGITTAL, CORONAL)]
    assert "3 orientations" in skip_reason(three)
    assert skip_reason([header(), header()]) == ""


def test_real_pydicom_files() -> None:
    """What the triage says of real files: a Siemens abdomen MPR, a CT, a US, an MR head."""
    reasons = {
        name: skip_reason([pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)])
        for name in ("MR-SIEMENS-DICOM-WithOverlays.dcm", "CT_small.dcm", "US1_UNCR.dcm", "emri_small.dcm")
    }
    assert reasons["MR-SIEMENS-DICOM-WithOverlays.dcm"].startswith("BodyPartExamined is ABDOMEN")
    assert reasons["CT_small.dcm"] == "Modality is CT, not MR"
    assert reasons["US1_UNCR.dcm"] == "Modality is US, not MR"
    assert reasons["emri_small.dcm"] == ""  # ORIGINAL\PRIMARY, BodyPartExamined HEAD, MR


def build_exam(root: Path, make_mni_dicom) -> dict[str, Path]:  # noqa: ANN001
    """The mixed exam folder (one folder, as a PACS export puts a study); each item's first file."""
    exam = root / "exam"
    study = "1.2.826.0.1.3680043.8.498.77"
    items = {
        "t1_a": make_mni_dicom(exam, range(84, 90), 2, "T1 MPRAGE", names="A{:03d}.dcm", study_uid=study)[0],
        "t1_b": make_mni_dicom(exam, range(95, 99), 3, "T1 SE", names="B{:03d}.dcm", study_uid=study)[0],
    }
    three = make_mni_dicom(exam, range(88, 91), 1, "FAST 3P", names="L{:03d}.dcm", study_uid=study)
    for path, iop in zip(three[1:], (SAGITTAL, CORONAL), strict=True):  # one axial, one sagittal, one coronal
        restamp([path], ImageOrientationPatient=iop)
    items["localizer_3plane"] = three[0]
    single = make_mni_dicom(exam, range(88, 89), 4, "FAST LOCALIZER", names="F{:03d}.dcm", study_uid=study)
    items["localizer_single"] = single[0]
    shoulder = make_mni_dicom(exam, range(88, 91), 5, "t1 cor", names="S{:03d}.dcm", study_uid=study)
    items["shoulder"] = restamp(shoulder, BodyPartExamined="SHOULDER")[0]
    capture = make_mni_dicom(exam, range(88, 89), 6, "screenshot", names="C{:03d}.dcm", study_uid=study)
    items["secondary_capture"] = restamp(capture, SOPClassUID=SC_CLASS, ImageType=["DERIVED", "SECONDARY"])[0]
    for name, key in (("CT_small.dcm", "ct"), ("test-SR.dcm", "sr")):
        items[key] = exam / name
        shutil.copy(get_testdata_file(name), items[key])
    return items


def skipped_lines(proc: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """``(path, reason)`` of each ``skipped <path>: <reason>`` line of a run."""
    lines = [line.removeprefix("skipped ") for line in proc.stdout.splitlines() if line.startswith("skipped ")]
    return [tuple(line.split(": ", 1)) for line in lines]


def test_mixed_exam_folder_exits_0_and_skips_with_reasons(tmp_path: Path, mni_dicom_factory, dciodvfy) -> None:
    items = build_exam(tmp_path, mni_dicom_factory)
    proc = edgeseg("infer", tmp_path / "exam", "--out", tmp_path / "out", "--backend", "ort")
    assert proc.returncode == 0, proc.stderr
    assert "2 done, 0 failed" in proc.stdout and "FAILED" not in proc.stdout + proc.stderr
    skipped = skipped_lines(proc)
    folder = str(tmp_path / "exam")
    reasons = {
        "localizer_3plane": "3 orientations",
        "localizer_single": "a localizer (SeriesDescription 'FAST LOCALIZER')",
        "shoulder": "BodyPartExamined is SHOULDER",
        "secondary_capture": "secondary capture",
        "ct": "Modality is CT, not MR",
    }
    series_skips = [why for path, why in skipped if path == folder]  # series of several files
    single_skips = {path: why for path, why in skipped if path != folder}
    found = series_skips + list(single_skips.values())
    for key, words in reasons.items():
        assert sum(words in why for why in found) == 1, (key, found)
    assert "structured report" in single_skips[str(items["sr"])]
    assert all("--force" in why for why in found if "report" not in why)
    assert sorted(p.name for p in (tmp_path / "out").glob("*_seg.dcm")) == ["exam_S2_seg.dcm", "exam_S3_seg.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*_sr.dcm")) == ["exam_S2_sr.dcm", "exam_S3_sr.dcm"]
    assert {p.name for p in (tmp_path / "out").glob("*_seg.nii.gz")} == {"exam_S2_seg.nii.gz", "exam_S3_seg.nii.gz"}
    for series, source in (("S2", items["t1_a"]), ("S3", items["t1_b"])):
        for kind in ("seg", "sr"):
            written = tmp_path / "out" / f"exam_{series}_{kind}.dcm"
            assert dciodvfy(written, source) == [], written.name


def test_force_runs_a_skipped_series(tmp_path: Path, mni_dicom_factory) -> None:
    shoulder = mni_dicom_factory(tmp_path / "sh", range(86, 89), 5, "t1 cor")
    restamp(shoulder, BodyPartExamined="SHOULDER")
    skipped = edgeseg("infer", tmp_path / "sh", "--out", tmp_path / "out", "--backend", "ort")
    assert skipped.returncode == 1 and "nothing to segment" in skipped.stderr  # nothing else was asked for
    assert "BodyPartExamined is SHOULDER" in skipped.stderr and "--force" in skipped.stderr
    assert skipped.stderr.count("\n") == 1 and "Traceback" not in skipped.stderr
    forced = edgeseg("infer", tmp_path / "sh", "--out", tmp_path / "out", "--backend", "ort", "--force")
    assert forced.returncode == 0 and "1 done, 0 failed" in forced.stdout, forced.stderr


def test_an_enhanced_file_with_frames_in_several_orientations_is_a_localizer() -> None:
    """Orientations are read per frame of an enhanced multi-frame file too."""
    ds = header()
    del ds.ImageOrientationPatient
    ds.PerFrameFunctionalGroupsSequence = []
    for iop in ([1.0, 0, 0, 0, 1.0, 0], SAGITTAL):
        plane = pydicom.Dataset()
        plane.ImageOrientationPatient = iop
        frame = pydicom.Dataset()
        frame.PlaneOrientationSequence = [plane]
        ds.PerFrameFunctionalGroupsSequence.append(frame)
    assert "2 orientations" in skip_reason([ds])
    one = copy.deepcopy(ds)
    one.PerFrameFunctionalGroupsSequence[1].PlaneOrientationSequence[0].ImageOrientationPatient = [1.0, 0, 0, 0, 1, 0]
    one.SOPInstanceUID = generate_uid()
    assert skip_reason([one]) == ""
