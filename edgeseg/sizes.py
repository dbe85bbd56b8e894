"""Size guards: a header's claimed size is checked against its file before anything is allocated.

A header that lies (a 1.5 kB file claiming 60000x60000 voxels, a gzip bomb) would otherwise
make a reader allocate the claimed size first. The readers of edgeseg.io.scans and
edgeseg.io.dicom call these before they decode. numpy only.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.files import in_bytes

GZIP_MAX_RATIO = 1032  # deflate cannot compress better than about 1032:1
MAX_SCAN_BYTES = 8 << 30  # a decoded scan held in memory at once: 1024^3 float64 fits
# What one .gz scan may decompress to (header and data), like Pillow's pixel limit for PNG: a
# 2.4 MB .nii.gz can hold 2.5 GB. 1 GiB is 2.5x a 512x512x400 float32 volume; the option
# (`edgeseg infer --max-decompressed-mb`) raises it for a real scan that big.
MAX_GUNZIPPED_BYTES = 1 << 30


def check_claimed_size(
    path: Path,
    what: str,
    shape: tuple[int, ...],
    dtype: Any,
    offset: int = 0,
    gzipped: bool = False,
    holds: int | None = None,
    budget: int = MAX_GUNZIPPED_BYTES,
) -> None:
    """Refuse a header whose ``shape`` x ``dtype`` the file cannot hold, before any read.

    A header that lies (a 1.5 kB file claiming 60000x60000 voxels) would otherwise make a
    reader allocate the claimed size first. ``offset``: where the data starts in the file;
    ``holds``: the bytes the data really has, when known (DICOM PixelData), instead of the
    file. A gzipped file is bounded by deflate's best ratio, by :data:`MAX_SCAN_BYTES`, by
    ``budget`` (what it may decompress to, header included), and then by its trailer's size,
    or failing that by decompressing it once without keeping the bytes, stopping at the
    claimed end.
    """
    need = _claimed(shape, dtype)
    size = os.path.getsize(path) if holds is None else holds
    room = size * GZIP_MAX_RATIO if gzipped else size - offset
    holder = f"the file of {in_bytes(size)}" if holds is None else f"its pixel data of {in_bytes(size)}"
    if need > room:
        raise EdgesegError(
            f"{path}: {_claim(shape, dtype)}, but {holder} cannot hold that; the"
            f" {what} is truncated or its header is damaged; re-export it"
        )
    if gzipped:
        check_decoded_size(path, shape, dtype)
        if offset + need > budget:
            raise EdgesegError(over_budget(path, budget, f"{_claim(shape, dtype)}, which is"))
        if (got := _gunzipped_size(path, offset + need)) < offset + need:
            raise EdgesegError(
                f"{path}: {_claim(shape, dtype)}, but it decompresses to only"
                f" {in_bytes(got)} with the header; the {what} is truncated or its"
                " header is damaged; re-export it"
            )


def check_decoded_size(path: Path, shape: tuple[int, ...], dtype: Any) -> None:
    """Refuse a scan that would be decoded into memory whole beyond :data:`MAX_SCAN_BYTES`."""
    if _claimed(shape, dtype) > MAX_SCAN_BYTES:
        raise EdgesegError(
            f"{path}: {_claim(shape, dtype)}, more than edgeseg decodes at once"
            f" ({in_bytes(MAX_SCAN_BYTES)}); crop or split the scan"
        )


def over_budget(path: Path, budget: int, what: str = "it decompresses to") -> str:
    """The line for a .gz scan that decompresses (or claims to) past ``budget`` bytes."""
    return (
        f"{path}: {what} more than the {in_bytes(budget)} that edgeseg unpacks of one compressed file"
        f" (--max-decompressed-mb {budget >> 20}): a decompression bomb or a damaged header;"
        " if the scan is real, raise --max-decompressed-mb"
    )


class BudgetGzip(gzip.GzipFile):
    """A .gz file read through a budget: a read or seek that would take the decompressed
    stream past ``budget`` bytes raises EdgesegError before decompressing any of them.

    Give it to nibabel (``Nifti1Image.from_stream``) and the header, its extensions and the
    data are all read through it, so a bomb costs at most ``budget`` bytes of work wherever
    in the file it hides (an extension claiming 2 GB as well as a data block).
    """

    def __init__(self, path: Path, budget: int) -> None:
        super().__init__(path, "rb")
        self.path, self.budget = path, budget

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(self._allowed(size))
        self._spend(self._at())
        return data

    def read1(self, size: int | None = -1) -> bytes:
        data = super().read1(self._allowed(size))
        self._spend(self._at())
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._spend(offset if whence == os.SEEK_SET else self._at() + offset if whence == os.SEEK_CUR else 0)
        return super().seek(offset, whence)

    def _at(self) -> int:
        """Position in the decompressed stream (``tell`` would come back through ``seek``)."""
        return super().seek(0, os.SEEK_CUR)

    def _allowed(self, size: int | None) -> int:
        """``size``, once checked; a read to the end may go one byte past the budget, to tell."""
        if size is None or size < 0:
            return self.budget - self._at() + 1
        self._spend(self._at() + size)
        return size

    def _spend(self, end: int) -> None:
        if end > self.budget:
            raise EdgesegError(over_budget(self.path, self.budget))


def _claimed(shape: tuple[int, ...], dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize


def _claim(shape: tuple[int, ...], dtype: Any) -> str:
    return f"its header claims {'x'.join(map(str, shape))} {np.dtype(dtype)} ({in_bytes(_claimed(shape, dtype))})"


def _gunzipped_size(path: Path, limit: int) -> int:
    """Decompressed size of a gzip file, counting up to ``limit`` bytes; nothing is kept.

    When the gzip trailer's size field (the size mod 2**32) says exactly ``limit``, the
    file is taken as whole without decompressing it (a truncated file has no trailer).
    Otherwise it is decompressed in 64 KiB reads; a truncated stream counts what came out
    before the read that failed.
    """
    import struct
    import zlib

    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 4))
        trailer = f.read(4)
    if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == limit % 2**32:
        return limit
    count = 0
    try:
        with gzip.open(path, "rb") as f:
            while count < limit and (chunk := f.read(min(1 << 16, limit - count))):
                count += len(chunk)
    except (OSError, EOFError, zlib.error):  # truncated stream: what came out is what counts
        pass
    return count


def check_npy_header(path: Path) -> None:
    """Refuse an .npy whose header claims more data than the file holds (before np.load).

    Also used by :mod:`edgeseg.data.dataset` for ``--data``. Files whose header cannot be parsed
    are left to ``np.load``, which names the problem.
    """
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
            if read is None:
                return
            shape, _, dtype = read(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError, SyntaxError):
        return
    if not dtype.hasobject:
        check_claimed_size(path, ".npy file", shape, dtype, offset)
