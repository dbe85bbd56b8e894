"""The real-MRI demo set: the MNI152 template that ships inside nilearn, as tutorial-layout slices.

Label 1 = gray matter and 2 = white matter where that probability map is > 0.5 and larger
than the other, 0 otherwise. Slices from all three planes with >= 2 % brain, resampled x2
to 0.5 mm and padded to 394x394. No network; cached; built in seconds:

    edgeseg data demo --out DIR
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import replace_dir, sha256_file

DEMO_FORMAT = "edgeseg-demo"
DEMO_FORMAT_VERSION = 1  # bump when the files written change for the same parameters
DEMO_PLANES = ("axial", "coronal", "sagittal")  # sorted order of the written slices
DEMO_ZOOM = 2  # 1 mm template voxels -> 0.5 mm pixels, like the tutorial's in-plane spacing
DEMO_SOURCES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# nilearn's own description (datasets/description/icbm152_2009.rst) lists "License: unknown";
# this is the notice the MNI NIST lab publishes with the ICBM 2009 templates.
MNI152_NOTICE = (
    "Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal "
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute "
    "this software and its documentation for any purpose and without fee is hereby granted, "
    "provided that the above copyright notice appear in all copies. The authors and McGill "
    "University make no representations about the suitability of this software for any purpose. "
    'It is provided "as is" without express or implied warranty. The authors are not responsible '
    "for any data loss, equipment damage, property loss, or injury to subjects or patients "
    "resulting from the use or misuse of this software package."
)
MNI152_CITATIONS = (
    "VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG, Unbiased "
    "average age-appropriate atlases for pediatric studies, NeuroImage 54(1), 2011, "
    "doi:10.1016/j.neuroimage.2010.07.033",
    "VS Fonov, AC Evans, RC McKinstry, CR Almli and DL Collins, Unbiased nonlinear average "
    "age-appropriate brain templates from birth to adulthood, NeuroImage 47 Suppl 1, 2009, S102, "
    "doi:10.1016/S1053-8119(09)70884-5",
)


@dataclass(frozen=True)
class DemoConfig:
    """How the MNI152 demo set is cut; saved in provenance.json and part of the cache key."""

    step_mm: int = 1  # every 1 mm slice: ~457 slices over 3 planes, trainable on 2 CPU cores
    min_brain_fraction: float = 0.02  # keep slices whose brain (labels > 0) covers >= 2 % of the image
    size: int = 394  # output side in pixels, the tutorial's slice size
    prob_threshold: float = 0.5  # a tissue label needs probability above this and above the other


def default_demo_dir() -> Path:
    """Where the demo set is cached.

    Returns:
        ``$EDGESEG_HOME/demo-mni152`` if ``EDGESEG_HOME`` is set, else
        ``~/.cache/edgeseg/demo-mni152``.
    """
    home = os.environ.get("EDGESEG_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "edgeseg"
    return base / "demo-mni152"


def _demo_sources() -> dict[str, Path]:
    """The template files shipped inside the installed nilearn package."""
    try:
        import nilearn
    except ImportError:
        raise EdgesegError(
            "the demo set is cut from the MNI152 template inside nilearn, which this install lacks:"
            " pip install 'edgeseg[demo]' (or give your own data with --data; `bench --no-miou` skips scoring)"
        ) from None
    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    paths = {name: folder / file for name, file in DEMO_SOURCES.items()}
    for path in paths.values():
        if not path.is_file():
            raise EdgesegError(f"{path}: MNI152 template missing from nilearn; reinstall nilearn")
    return paths


def _upsample2(a: np.ndarray, axis: int) -> np.ndarray:
    """Linear x2 along one axis on the pixel-area grid: new centres at k -/+ 1/4, edges held."""
    a = np.moveaxis(a, axis, -1)
    before = np.concatenate([a[..., :1], a[..., :-1]], axis=-1)
    after = np.concatenate([a[..., 1:], a[..., -1:]], axis=-1)
    out = np.empty(a.shape[:-1] + (2 * a.shape[-1],), dtype=np.float32)
    out[..., 0::2] = 0.75 * a + 0.25 * before
    out[..., 1::2] = 0.75 * a + 0.25 * after
    return np.moveaxis(out, -1, axis)


def _plane_stack(vol: np.ndarray, plane: str) -> np.ndarray:
    """RAS volume -> (slices, rows, cols), superior (or anterior) at the top row."""
    order = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}[plane]
    return np.transpose(vol, order)[:, ::-1, :]


def _labels(gm: np.ndarray, wm: np.ndarray, threshold: float) -> np.ndarray:
    """1 = gray matter, 2 = white matter where that probability wins and exceeds threshold."""
    labels = np.zeros(gm.shape, dtype=np.uint8)
    labels[(gm > threshold) & (gm > wm)] = 1
    labels[(wm > threshold) & (wm > gm)] = 2
    return labels


def _crop_pad(a: np.ndarray, top: int, left: int, size: int, fill: float) -> np.ndarray:
    """The size x size window of a at (top, left); outside pixels take fill."""
    out = np.full((size, size), fill, dtype=a.dtype)
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + size, a.shape[0]), min(left + size, a.shape[1])
    out[r0 - top : r1 - top, c0 - left : c1 - left] = a[r0:r1, c0:c1]
    return out


def _write_demo(dest: Path, sources: dict[str, Path], config: DemoConfig) -> dict[str, list[int]]:
    """Cut, resample and write all slices into dest; returns the 1 mm source index per plane."""
    import nibabel as nib

    vols = {k: np.asarray(nib.load(p).dataobj, dtype=np.float32) for k, p in sources.items()}
    vols["gm"] /= 255.0  # probability maps are stored as uint8 0..255
    vols["wm"] /= 255.0
    background = float(vols["t1"].min())
    (dest / "MRIs").mkdir()
    (dest / "Segmentations").mkdir()
    ix, kept = 0, {}
    pixels = config.size * config.size
    for plane in DEMO_PLANES:
        stacks = {k: _plane_stack(v, plane)[:: config.step_mm] for k, v in vols.items()}
        # Cheap 1 mm pre-filter (a slice loses at most a thin rim when upsampled), exact test below.
        coarse = (_labels(stacks["gm"], stacks["wm"], config.prob_threshold) > 0).sum((1, 2))
        candidates = np.flatnonzero(coarse * DEMO_ZOOM**2 >= 0.5 * config.min_brain_fraction * pixels)
        kept[plane] = []
        for s in candidates:
            t1, gm, wm = (_upsample2(_upsample2(stacks[k][s], 0), 1) for k in ("t1", "gm", "wm"))
            labels = _labels(gm, wm, config.prob_threshold)
            rows, cols = np.nonzero(labels)
            if rows.size < config.min_brain_fraction * pixels:
                continue
            top = (rows.min() + rows.max() + 1) // 2 - config.size // 2
            left = (cols.min() + cols.max() + 1) // 2 - config.size // 2
            name = f"{ix:04d}"
            image = _crop_pad(t1, top, left, config.size, background)
            np.save(dest / "MRIs" / f"mni152-{plane}_{name}.npy", image.astype(np.float32))
            np.save(
                dest / "Segmentations" / f"segm_{name}.npy",
                _crop_pad(labels, top, left, config.size, 0),
            )
            kept[plane].append(int(s) * config.step_mm)
            ix += 1
    return kept


def _demo_identity(config: DemoConfig, sha: dict[str, str]) -> dict[str, Any]:
    """What must match for a cached demo set to be reused."""
    return {
        "format": DEMO_FORMAT,
        "format_version": DEMO_FORMAT_VERSION,
        "parameters": json.loads(json.dumps(asdict(config))),
        "source_sha256": sha,
    }


def read_demo_provenance(root: Path) -> dict[str, Any]:
    """Read a demo set's provenance.json.

    Args:
        root: demo dataset root.

    Returns:
        The provenance record (sources, license notice, parameters, counts).
    """
    path = Path(root) / "provenance.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EdgesegError(
            f"{path}: cannot read demo provenance ({exc}); build the set with edgeseg data demo"
        ) from None
    if not isinstance(record, dict) or record.get("format") != DEMO_FORMAT:
        raise EdgesegError(f"{path}: not an edgeseg demo provenance file; build the set with edgeseg data demo")
    return record


def _cache_hit(out: Path, identity: dict[str, Any]) -> bool:
    """True when out holds a complete demo set built from the same sources and parameters."""
    try:
        record = read_demo_provenance(out)
    except EdgesegError:
        return False
    current = {k: record.get(k) for k in identity}
    if current != identity:
        return False
    total = record.get("total")
    return all(len(list((out / sub).glob("*.npy"))) == total for sub in ("MRIs", "Segmentations"))


def _provenance(identity: dict[str, Any], kept: dict[str, list[int]]) -> dict[str, Any]:
    """The provenance.json record of a finished build."""
    import nilearn

    return {
        **identity,
        "description": "2-D slices in the PyTorch MRI-segmentation tutorial layout, cut from the "
        "MNI ICBM152 2009 nonlinear symmetric template, release a, as nilearn ships it "
        "(*_tal_nlin_sym_09a_converted.nii.gz: 1 mm, uint8, brain-extracted T1)",
        "sources": {k: {"file": DEMO_SOURCES[k], "sha256": v} for k, v in identity["source_sha256"].items()},
        "nilearn_version": nilearn.__version__,
        "license": {
            "notice": MNI152_NOTICE,
            "notice_source": "https://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/",
            "nilearn_says": "License: unknown (nilearn datasets/description/icbm152_2009.rst)",
            "citations": list(MNI152_CITATIONS),
        },
        "labels": {"0": "background", "1": "gray matter", "2": "white matter"},
        "pixel_mm": 1.0 / DEMO_ZOOM,
        "orientation": "top row superior (axial: anterior); columns run toward the right "
        "(sagittal: toward anterior); padding = template minimum",
        "counts": {plane: len(ix) for plane, ix in kept.items()},
        "total": sum(len(ix) for ix in kept.values()),
        "source_voxel_index": kept,
    }


def _check_target(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier edgeseg demo set."""
    if not out.exists():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        read_demo_provenance(out)
    except EdgesegError:
        raise EdgesegError(
            f"{out}: exists and is not an edgeseg demo set; "
            "choose an empty or new --out folder (it is never overwritten)"
        ) from None


def build_demo(out: Path | None = None, force: bool = False, config: DemoConfig | None = None) -> Path:
    """Build (or reuse) the real-MRI demo set from nilearn's MNI152 2009 template, offline.

    Slices from the axial, coronal and sagittal planes with enough brain are
    resampled to 0.5 mm (T1 linear; GM/WM probabilities linear, then labelled
    0 background / 1 gray matter / 2 white matter), centred on the brain's
    bounding box and cropped/padded to 394x394. Files are named so that sorted
    order is plane, then position. The set is reused when its provenance.json
    matches the parameters and the sources' SHA-256. A build happens in a
    temporary folder beside ``out`` and is renamed into place, so an
    interrupted build never leaves a half dataset at ``out``.

    Args:
        out: dataset root to write; default :func:`default_demo_dir`.
        force: rebuild even if ``out`` already holds a matching set.
        config: slicing parameters; default :class:`DemoConfig`.

    Returns:
        The dataset root, loadable with :func:`load_slices`.
    """
    out = Path(out).expanduser() if out is not None else default_demo_dir()
    config = config or DemoConfig()
    sources = _demo_sources()
    identity = _demo_identity(config, {name: sha256_file(p) for name, p in sources.items()})
    if not force and _cache_hit(out, identity):
        return out
    _check_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    except OSError as exc:
        raise EdgesegError(f"{out}: cannot write the demo set here ({exc}); choose another --out") from None
    try:
        kept = _write_demo(tmp, sources, config)
        (tmp / "provenance.json").write_text(json.dumps(_provenance(identity, kept), indent=2) + "\n")
        try:
            replace_dir(tmp, out)
        except OSError:
            if not _cache_hit(out, identity):  # else a concurrent build finished first: use it
                raise
    except OSError as exc:
        raise EdgesegError(f"{out}: writing the demo set failed ({exc}); check free space") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


EXAMPLE_FILE = "mni152_t1_axial_slab.nii.gz"
EXAMPLE_SLICES = range(78, 83)  # five contiguous 1 mm axial slices through the lateral ventricles


def build_example(out: Path) -> Path:
    """Write a small real scan to try ``edgeseg infer`` on: five axial slices of the MNI152 T1.

    The slab keeps the template's voxel size and affine (1 mm, RAS), so inference resamples it
    to the model's 0.5 mm and back like any clinical NIfTI. The shipped copy lives in
    ``export/example/`` and is rebuilt with ``edgeseg data example --out export/example``.

    Args:
        out: folder to write into (created if missing).

    Returns:
        The path of the written NIfTI file.
    """
    import nibabel as nib

    from edgeseg.files import atomic_write

    t1 = nib.load(_demo_sources()["t1"])
    z0 = EXAMPLE_SLICES.start
    slab = np.asarray(t1.dataobj[:, :, z0 : EXAMPLE_SLICES.stop])
    affine = t1.affine.copy()
    affine[:3, 3] = t1.affine[:3, :3] @ np.array([0, 0, z0]) + t1.affine[:3, 3]
    image = nib.Nifti1Image(slab, affine)
    image.header.set_xyzt_units("mm")
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgesegError(f"{out}: cannot create the example folder ({exc}); choose another --out") from None
    path = out / EXAMPLE_FILE
    atomic_write(path, lambda tmp: nib.save(image, tmp))
    return path
