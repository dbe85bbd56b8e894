"""The QC mosaic of `edgeseg infer` (``<name>_overlay.png``), shown as a PACS shows the scan.

Torch-free. A person checks a segmentation by eye against what they see in their viewer, so
a volume's mosaic (NIfTI, DICOM) is drawn:

* in the acquisition plane: the slices along the input array's third axis (a DICOM series'
  own slices; what converters such as dcm2niix write for NIfTI), whichever axis the model ran
  on, so a sagittal series is shown sagittal;
* in radiological convention, as PACS viewers show standard acquisitions: axial and coronal
  slices with the patient's right on the image's left (anterior, or superior, at the top);
  sagittal slices with anterior on the left and superior at the top. Each tile is flipped or
  transposed to that from the closest anatomical axes of the volume's affine
  (``nibabel.io_orientation``), and the first tile carries letter markers (R/L, A/P, S/I) at
  its edges, the legend the plane and the convention;
* at a legible size: tiles are scaled (nearest neighbour, each axis by its pixel size) until
  their longer side has :data:`MIN_TILE_PX` pixels, so a 64x64 scan gives 256-pixel tiles.

A 2-D input (.npy, an image) has no anatomy to orient by: its tiles are the slices the model
saw, as they are, without markers. A volume whose affine does not place the patient (a DICOM
series without ImagePositionPatient/ImageOrientationPatient, a NIfTI with qform and sform
codes 0) is shown as stored, its acquisition slices with rows down the rows, without markers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.files import atomic_write
from edgeseg.io.scan_readers import Decoded

MOSAIC_TILES = 16  # slices shown at most in an overlay mosaic
MIN_TILE_PX = 256  # a tile's longer side is scaled up to at least this (a 64-px scan: x4)
# Display of each plane, by the RAS axis the slices are cut across: (rows, columns), each the RAS
# axis (0 x: right, 1 y: anterior, 2 z: superior) and the sign its index runs along, and the
# letters at the top, bottom, left and right. Radiological: rows run down towards posterior or
# inferior, columns towards the patient's left (axial, coronal) or posterior (sagittal).
PLANES = {
    2: ("axial", (1, -1), (0, -1), "APRL"),
    1: ("coronal", (2, -1), (0, -1), "SIRL"),
    0: ("sagittal", (2, -1), (1, -1), "SIAP"),
}


def write_mosaic(
    target: Path,
    dec: Decoded,
    labels: np.ndarray,
    source: Path,
    class_names: tuple[str, ...],
    palette: list[tuple[int, int, int]],
    before_replace: Callable[[Path], None] | None = None,
) -> None:
    """Write the QC mosaic PNG of ``labels`` (``(S, H, W)``, the model's slices) over ``dec``'s scan.

    Up to :data:`MOSAIC_TILES` slices evenly spaced through those with labels, in grey (1st to
    99th percentile) with the classes coloured over them (``palette``), and a legend.
    """
    from PIL import Image

    tiles, plane = _tiles(dec, labels, source)
    images = np.stack([grey for grey, _ in tiles])
    lo, hi = np.percentile(images, (1, 99))
    rendered = []
    for grey, lab in tiles:
        rgb = np.repeat(np.clip((grey - lo) / max(hi - lo, 1e-6) * 255, 0, 255)[..., None], 3, axis=-1)
        colours = np.array(palette * 32, np.float32)[lab]
        fg = lab > 0
        rgb[fg] = 0.55 * rgb[fg] + 0.45 * colours[fg]
        rendered.append(Image.fromarray(rgb.astype(np.uint8), mode="RGB"))
    size = _tile_size(rendered[0].size, plane[2] if plane else (1.0, 1.0))
    rendered = [tile.resize(size, Image.NEAREST) for tile in rendered]
    mosaic = _canvas(rendered, class_names, palette, plane)
    atomic_write(target, lambda tmp: mosaic.save(tmp, format="PNG"), before_replace)


def _tiles(dec: Decoded, labels: np.ndarray, source: Path) -> tuple[list, tuple | None]:
    """``[(grey, labels)]`` tiles and the plane ``(name, letters, (row mm, col mm))``, None for 2-D."""
    if dec.raw is None or dec.template is None or dec.raw.ndim != 3:  # 2-D: the model's slices
        picks = _picks(labels)
        return [(dec.batch(k, k + 1, source)[0, 0], labels[k]) for k in picks], None
    from nibabel.orientations import io_orientation

    restored = dec.restore(labels)  # (i, j, k) of the input array
    affine = dec.template.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    if dec.oriented:
        ornt = io_orientation(affine)  # voxel axis -> (closest RAS axis, +1/-1)
        name, rows, cols, letters = PLANES[int(ornt[2, 0])]
        row_axis = 0 if int(ornt[0, 0]) == rows[0] else 1  # voxel axis (0 i, 1 j) shown down the rows
    else:  # nothing says where the patient is: the slices as stored (j down the rows), no markers
        ornt, rows, cols, row_axis = np.array([[0, 1], [1, 1], [2, 1]]), (1, 1), (0, 1), 1
    tiles = []
    for k in _picks(np.moveaxis(restored, 2, 0)):
        grey = np.asarray(dec.raw[:, :, k], np.float32) * np.float32(dec.slope) + np.float32(dec.inter)
        tiles.append(tuple(_orient(plane, ornt, row_axis, rows, cols) for plane in (grey, restored[:, :, k])))
    spacing = (float(zooms[row_axis]), float(zooms[1 - row_axis]))
    return tiles, ((name, letters, spacing) if dec.oriented else ("", "", spacing))


def _orient(plane: np.ndarray, ornt: np.ndarray, row_axis: int, rows: tuple, cols: tuple) -> np.ndarray:
    """An ``(i, j)`` plane as displayed: voxel axis ``row_axis`` down the rows, each axis flipped
    where its index runs against the display's direction."""
    shown = plane if row_axis == 0 else plane.T
    if ornt[row_axis, 1] != rows[1]:
        shown = shown[::-1]
    if ornt[1 - row_axis, 1] != cols[1]:
        shown = shown[:, ::-1]
    return np.ascontiguousarray(shown)


def _picks(labels: np.ndarray) -> np.ndarray:
    """Indices of up to :data:`MOSAIC_TILES` slices of ``(S, ...)``, evenly spaced through those with labels."""
    with_labels = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    pool = with_labels if len(with_labels) else np.arange(len(labels))
    return pool[np.unique(np.linspace(0, len(pool) - 1, min(MOSAIC_TILES, len(pool))).round().astype(int))]


def _tile_size(size: tuple[int, int], spacing: tuple[float, float]) -> tuple[int, int]:
    """(width, height) of a tile: its pixel size's aspect, the longer side >= MIN_TILE_PX."""
    width, height = size[0] * spacing[1], size[1] * spacing[0]  # mm
    scale = max(size[0] / width, size[1] / height)  # pixels per mm, never fewer than there are
    scale = max(scale, MIN_TILE_PX / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _canvas(tiles: list, class_names: tuple[str, ...], palette: list, plane: tuple | None) -> Any:
    """The tiles in a near-square grid, markers on the first, a legend of the classes below."""
    from PIL import Image, ImageDraw

    (w, h), n = tiles[0].size, len(tiles)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    marked = plane is not None and bool(plane[0])  # an oriented volume: markers and the plane's line
    lines = len(class_names) - 1 + marked
    legend = 18 * lines + 8
    width = max(cols * w, 26 + 7 * max(map(len, class_names)), 300 if marked else 0)
    mosaic = Image.new("RGB", (width, rows * h + legend))
    for i, tile in enumerate(tiles):
        mosaic.paste(tile, ((i % cols) * w, (i // cols) * h))
    draw = ImageDraw.Draw(mosaic)
    if marked:
        top, bottom, left, right = plane[1]
        for text, (x, y) in ((top, (w // 2 - 3, 2)), (bottom, (w // 2 - 3, h - 13)), (left, (3, h // 2 - 6))):
            draw.text((x, y), text, fill=(255, 255, 0))
        draw.text((w - 10, h // 2 - 6), right, fill=(255, 255, 0))
    for c, name in enumerate(class_names[1:], start=1):
        y = rows * h + 4 + 18 * (c - 1)
        draw.rectangle([4, y, 16, y + 12], fill=palette[c % len(palette)])
        draw.text((22, y), name, fill=(255, 255, 255))
    if marked:
        y = rows * h + 4 + 18 * (len(class_names) - 1)
        convention = "patient right on image left" if plane[0] != "sagittal" else "anterior on image left"
        draw.text((4, y), f"{plane[0]}, radiological: {convention}", fill=(255, 255, 0))
    return mosaic
