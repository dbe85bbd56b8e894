"""Finding the scans of `edgeseg infer`: walking the inputs, one Scan per file or DICOM series.

Torch-free, and numpy-free too: only names and paths. Split from :mod:`edgeseg.io.scans`
(decoding) because finding work and reading it change for different reasons: this module
answers which files are scans, what their outputs are called (``a_seg.nii.gz`` beside
``a.nii.gz`` under ``--out``, never two scans on one name, compared ignoring case), and
which inputs are problems (missing, unsupported, a symbolic-link loop, an earlier run's
output). DICOM files are grouped into series by :func:`edgeseg.io.dicom.group_series`;
folders named on the command line are walked recursively, hidden names and ``--out`` pruned.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edgeseg.errors import EdgesegError
from edgeseg.names import LABEL_SUFFIXES, stem, with_stem, written_by_edgeseg

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_EXTS = (".dcm", ".ima")
SUPPORTED = ".npy, .png, .jpg, .tif, .nii, .nii.gz, .dcm (or a DICOM series folder)"


@dataclass(frozen=True)
class Scan:
    """One unit of work: a file, or a DICOM series folder with its files."""

    path: Path
    kind: str  # npy | image | nifti | dicom
    rel: Path  # labels file, relative to the output root
    files: tuple[Path, ...] = ()
    series: str = ""  # DICOM: which series of its folder (``series 3 'T1' echo 2``), for messages


def kind_of(path: Path) -> str | None:
    """``npy | image | nifti | dicom`` from the file name, None if unsupported."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = Path(name).suffix
    if suffix == ".npy":
        return "npy"
    if suffix in IMAGE_EXTS:
        return "image"
    return "dicom" if suffix in DICOM_EXTS else None


def is_dicom_file(path: Path) -> bool:
    """True for a file with the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def output_name(path: Path, kind: str) -> str:
    """File name of the labels for input ``path`` (a file, or a DICOM folder)."""
    return _base(path.name) + LABEL_SUFFIXES[kind]


def _base(name: str) -> str:
    """``name`` without its scan extension: ``x`` for ``x.nii.gz``, ``x.png``, ..."""
    for ext in (".nii.gz", ".nii", *IMAGE_EXTS, *DICOM_EXTS, ".npy"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def discover_scans(
    inputs: Sequence[Path], out: Path, series: str | None = None, force: bool = False
) -> tuple[list[Scan], list[tuple[Path, str]], list[Path], list[tuple[Path, str]]]:
    """Scans under ``inputs`` (recursively), never inside ``out``.

    Args:
        inputs, out: files and folders; the output root.
        series, force: DICOM selection, see :func:`edgeseg.io.dicom.group_series`.

    Returns:
        ``(scans, problems, ignored, skipped)``: problems are (path, reason) for inputs that
        are missing, unsupported, symbolic-link loops, collide on an output name or are
        damaged DICOM; ignored are the files of other types met inside folders; skipped are
        (path, reason) for DICOM files that hold no image to segment (a DICOMDIR, reports,
        SEG, ...), series not selected and series triaged out (:mod:`edgeseg.io.triage`): no failure.
    """
    out_root = _resolve(Path(out), "--out")
    scans, problems, ignored, skipped = [], [], [], []
    for given in inputs:
        path = Path(given)
        try:
            resolved = _resolve(path)
        except EdgesegError as exc:
            problems.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        if resolved == out_root:
            raise EdgesegError(f"{path}: --out is the input folder itself; choose another --out")
        if resolved.is_relative_to(out_root):
            raise EdgesegError(f"{path} is inside --out {out}; choose an --out outside the inputs")
        if path.is_dir():
            found, loops, other, dicom = _walk(path, out_root)
            scans.extend(found)
            problems.extend(loops)
            ignored.extend(other)
            for folder, rel, files in dicom:
                _dicom_scans(folder, rel, files, series, force, scans, problems, skipped, skipped)
        elif path.is_file() and (suffix := written_by_edgeseg(path.name)):
            problems.append((path, f"{WRITTEN_BY_EDGESEG} (its name ends in {suffix}); rename it if it is a scan"))
        elif path.is_file() and kind_of(path) not in (None, "dicom"):
            kind = kind_of(path)
            scans.append(Scan(path, kind, Path(output_name(path, kind)), (path,)))
        elif path.is_file() and (kind_of(path) or is_dicom_file(path)):
            # named: a file with no image is a failure, a series triaged out a skip
            _dicom_scans(
                path, Path(output_name(path, "dicom")), (path,), series, force, scans, problems, problems, skipped
            )
        else:
            problems.append(
                (path, "does not exist" if not path.exists() else f"unsupported file type; expected {SUPPORTED}")
            )
    kept, collisions = _unique_names(scans)
    return kept, problems + collisions, ignored, skipped


def _dicom_scans(
    where: Path,
    rel: Path,
    files: tuple[Path, ...],
    series: str | None,
    force: bool,
    scans: list[Scan],
    problems: list,
    skipped: list,
    triaged: list,
) -> None:
    """One Scan per image volume among ``files`` (a folder's, or one file); ``rel`` names the first.

    Files with no image go to ``skipped``, series triaged out (:mod:`edgeseg.io.triage`) to ``triaged``."""
    from edgeseg.io.dicom import group_series

    grouping = group_series(files, series, force)
    skipped.extend(grouping.skipped)
    problems.extend(grouping.failed)
    triaged.extend(grouping.triaged)
    several = len(grouping.groups) > 1
    numbers = [g.number for g in grouping.groups]
    for group in grouping.groups:
        name = rel.name
        if several:  # <folder>_S3_E2_seg.nii.gz; the UID's tail where SeriesNumbers do not tell apart
            tag = (
                f"S{group.number}"
                if group.number and numbers.count(group.number) == 1
                else ("S" + group.uid.replace(".", "")[-8:])
            )
            tag += "".join(f"_{k}{v}" for k, v in group.split)
            name = with_stem(rel, f"{stem(rel)}_{tag}").name
        scans.append(
            Scan(where, "dicom", rel.parent / name, group.files, group.describe() if several or series else "")
        )


LOOP = "a symbolic link that loops back on itself; fix or remove the link"
WRITTEN_BY_EDGESEG = "an output of edgeseg, not a scan: never segmented again"


def _resolve(path: Path, option: str = "") -> Path:
    """``path.resolve()``, with a symbolic-link loop as one EdgesegError line."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # "Symlink loop" (3.11/3.12), ELOOP (3.13+)
        raise EdgesegError(f"{option + ' ' if option else ''}{path}: {LOOP}") from None


def _walk(root: Path, out_root: Path) -> tuple[list[Scan], list[tuple[Path, str]], list[Path], list]:
    """Files by extension and DICOM folders under ``root``; hidden names and out pruned.

    Returns ``(scans, loops, ignored, dicom)``: symbolic-link loops among the files, files
    of other types, and ``(folder, rel, files)`` for each folder holding DICOM files (a
    DICOMDIR among them, to be skipped with its reason).
    """
    scans, loops, ignored, dicom_folders = [], [], [], []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != out_root)
        dicom = []
        for name in sorted(f for f in files if not f.startswith(".")):
            path, kind = here / name, kind_of(here / name)
            if os.path.islink(path) and not os.path.exists(path) and _is_loop(path):
                loops.append((path, LOOP))
            elif written_by_edgeseg(name):  # an earlier run's output in the tree: not a scan
                ignored.append(path)
            elif kind == "dicom" or (kind is None and (name == "DICOMDIR" or is_dicom_file(path))):
                dicom.append(path)
            elif kind:
                scans.append(Scan(path, kind, path.relative_to(root).parent / output_name(path, kind)))
            else:
                ignored.append(path)
        if dicom:
            rel = here.relative_to(root)
            name = output_name(here.resolve() if rel == Path(".") else here, "dicom")
            dicom_folders.append((here, rel.parent / name, tuple(dicom)))
    return scans, loops, ignored, dicom_folders


def _is_loop(path: Path) -> bool:
    try:
        path.resolve()
    except (RuntimeError, OSError):
        return True
    return False


def _unique_names(scans: list[Scan]) -> tuple[list[Scan], list[tuple[Path, str]]]:
    """Scans whose outputs share no name: where stems collide in a folder (``a.npy`` and
    ``a.png`` both write ``a_stats.json``), each keeps its input's extension (``a.npy_seg.npy``,
    ``a.png_seg.png``); scans that still collide are dropped and reported.

    Stems are compared ignoring case, so outputs stay apart on case-insensitive file systems.
    """
    counts = Counter(map(_stem_key, scans))
    seen: dict[str, Scan] = {}
    kept, problems = [], []
    for scan in scans:
        if counts[_stem_key(scan)] > 1:
            scan = replace(scan, rel=_with_extension(scan))
        key = _stem_key(scan)
        if key in seen:
            first = seen[key]
            why = f"its outputs would take the names of {first.path}'s ({first.rel}); rename one"
            problems.append((scan.path, why))
        else:
            seen[key] = scan
            kept.append(scan)
    return kept, problems


def _stem_key(scan: Scan) -> str:
    return str(scan.rel.parent / stem(scan.rel)).casefold()


def _with_extension(scan: Scan) -> Path:
    """``scan.rel`` with its input's extension kept: ``a.npy_seg.npy`` for ``a.npy``."""
    name = scan.path.name
    base, old = _base(name), stem(scan.rel)
    if base == name or not old.startswith(base):  # a folder, or one named otherwise: nothing to keep
        return scan.rel
    return with_stem(scan.rel, name + old[len(base) :])
