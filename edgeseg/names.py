"""The names of what `edgeseg infer` writes for a scan: one home for every output suffix.

Torch-free, no imports from the pipeline. Each scan has a *stem*, ``dir/x`` relative to
``--out``, and every file written for it is the stem plus one suffix: its labels
(``x_seg.npy``, ``x_seg.png``, ``x_seg.nii.gz`` or the DICOM SEG ``x_seg.dcm``), the DICOM
SR volume report ``x_sr.dcm`` beside a SEG, its
statistics ``x_stats.json``, its QC mosaic ``x_overlay.png`` and, with ``--skull-strip``,
``x_brainmask.nii.gz``. No suffix is the end of another, so two scans whose stems differ
never share a file (:func:`edgeseg.io.scan_files.discover_scans` keeps stems apart), and these
suffixes mark files that edgeseg wrote, which are never taken as input.
"""

from __future__ import annotations

from pathlib import Path

# Labels by input kind: a .npy stays .npy, an image becomes a palette PNG, a volume NIfTI.
LABEL_SUFFIXES = {"npy": "_seg.npy", "image": "_seg.png", "nifti": "_seg.nii.gz", "dicom": "_seg.nii.gz"}
SEG_SUFFIX = "_seg.dcm"  # the DICOM SEG of a DICOM series
SR_SUFFIX = "_sr.dcm"  # the DICOM SR volume report beside it
STATS_SUFFIX = "_stats.json"
OVERLAY_SUFFIX = "_overlay.png"
MASK_SUFFIX = "_brainmask.nii.gz"
OUTPUT_SUFFIXES = (
    *dict.fromkeys(LABEL_SUFFIXES.values()),
    SEG_SUFFIX,
    SR_SUFFIX,
    STATS_SUFFIX,
    OVERLAY_SUFFIX,
    MASK_SUFFIX,
)


def label_suffix(rel: Path) -> str:
    """The labels suffix ``rel`` ends with (``_seg.npy``, ...)."""
    for suffix in (*LABEL_SUFFIXES.values(), SEG_SUFFIX):
        if rel.name.endswith(suffix):
            return suffix
    raise AssertionError(f"{rel} is not a labels file name")


def stem(rel: Path) -> str:
    """``x`` for the labels file ``dir/x_seg.<ext>``."""
    return rel.name.removesuffix(label_suffix(rel))


def with_stem(rel: Path, new: str) -> Path:
    """The labels file ``dir/<new>_seg.<ext>`` in place of ``dir/x_seg.<ext>``."""
    return rel.with_name(new + label_suffix(rel))


def stats_rel(rel: Path) -> Path:
    """``dir/x_stats.json`` for the labels file ``dir/x_seg.<ext>``."""
    return rel.with_name(stem(rel) + STATS_SUFFIX)


def overlay_rel(rel: Path) -> Path:
    """``dir/x_overlay.png`` for the labels file ``dir/x_seg.<ext>``."""
    return rel.with_name(stem(rel) + OVERLAY_SUFFIX)


def mask_rel(rel: Path) -> Path:
    """``dir/x_brainmask.nii.gz`` for the labels file ``dir/x_seg.nii.gz`` (or ``x_seg.dcm``)."""
    return rel.with_name(stem(rel) + MASK_SUFFIX)


def seg_rel(rel: Path) -> Path:
    """``dir/x_seg.dcm``, the DICOM SEG, for the labels file ``dir/x_seg.nii.gz``."""
    return rel.with_name(stem(rel) + SEG_SUFFIX)


def sr_rel(rel: Path) -> Path:
    """``dir/x_sr.dcm``, the DICOM SR volume report, for the labels file ``dir/x_seg.<ext>``."""
    return rel.with_name(stem(rel) + SR_SUFFIX)


def written_by_edgeseg(name: str) -> str | None:
    """The output suffix a file name ends with (a file edgeseg writes), else None."""
    return next((s for s in OUTPUT_SUFFIXES if name.lower().endswith(s)), None)
