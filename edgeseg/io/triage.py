"""Series triage: which DICOM series the brain model may see, and why the others are skipped.

Torch-free, headers only. An exam folder as a scanner or PACS exports it holds more than the
T1 series: a 3-plane localizer, derived reformats and maps, a secondary-capture screenshot, a
CT of the same visit, the reports and segmentations of earlier runs. Each is *skipped with its
reason* (exit 0), not failed (exit 1): nothing is wrong with it, it is just not a head MR image
the model was made for. ``edgeseg infer --force`` segments a skipped image series anyway.

A series is skipped (:func:`skip_reason`) when any of its files says so:

* ``Modality`` is not MR (CT, US, ...);
* its SOP class is a Secondary Capture (a screenshot, whatever its Modality says);
* ``ImageType`` holds ``LOCALIZER``, or its first two values are not ``ORIGINAL`` and
  ``PRIMARY`` (``DERIVED``: reformats, subtractions, ADC and other maps; ``SECONDARY``: made
  after the exam), as PS3.3 C.7.6.1.1.2 defines them;
* its slices lie in more than one orientation (a 3-plane localizer: no single volume holds them);
* its SeriesDescription or ProtocolName names a localizer, scout or survey;
* ``BodyPartExamined`` is set and not a part of the head (ABDOMEN, SHOULDER, ...), or, with no
  head part given, its description or protocol names another body part (``t1_vibe_abd``).

Objects that are no image at all (SR, SEG, presentation states, a DICOMDIR, ...) are skipped
earlier, file by file, in :mod:`edgeseg.io.dicom`. These rules read only headers, so a folder of
a thousand files is triaged before any pixel is decoded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# Secondary Capture Image Storage and its four multi-frame variants (PS3.4 B.5)
SECONDARY_CAPTURE = {
    "1.2.840.10008.5.1.4.1.1.7": "a secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "a multi-frame single-bit secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.2": "a multi-frame grayscale byte secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.3": "a multi-frame grayscale word secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.4": "a multi-frame true colour secondary capture",
}
# BodyPartExamined values of the head (PS3.16 Annex L and what scanners write in practice)
HEAD_PARTS = {
    "HEAD",
    "BRAIN",
    "SKULL",
    "HEADNECK",
    "HEAD NECK",
    "HEAD_NECK",
    "CEREBRUM",
    "CEREBELLUM",
    "BRAINSTEM",
    "SELLA",
    "PITUITARY",
    "IAC",
    "ORBIT",
    "TEMPORALBONE",
    "CRANIUM",
    "NEURO",
}
# Words are matched between non-letters, since scanners join them with "_" ("t1_vibe_abd_tra").
LOCALIZER_WORDS = re.compile(r"locali[sz]er|scout|survey|tri-?pilot|3[ _-]?plane|(?<![a-z])loc(?![a-z])", re.I)
HEAD_WORDS = re.compile(r"head|brain|neuro|cerebr|skull|cran", re.IGNORECASE)
# words for other body parts in descriptions and protocols (English, and the usual abbreviations)
BODY_WORDS = re.compile(
    r"(?<![a-z])(?:abdom|abd(?![a-z])|liver|hepat|pancrea|kidney|renal|pelvi|prostat|uterus|rectum|bladder|"
    r"shoulder|elbow|wrist|hand(?![a-z])|finger|hip(?![a-z])|knee|ankle|foot(?![a-z])|feet(?![a-z])|"
    r"leg(?![a-z])|arm(?![a-z])|spine|lumbar|thoracic|cervical|[clt]-?spine|sacr|chest|thorax|breast|lung|"
    r"cardiac|heart(?![a-z])|aort)",
    re.IGNORECASE,
)
SAME_ORIENTATION = 1e-4  # as edgeseg.io.dicom reads a series: cosines this close are one orientation


def skip_reason(datasets: Sequence[Any]) -> str:
    """Why the series of ``datasets`` (headers of its files) is no head MR to segment, or ``""``.

    The reason names the attribute and its value, e.g. ``Modality is CT, not MR`` or
    ``a localizer (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)``.
    """
    for check in (_modality, _sop_class, _localizer, _orientations, _described_localizer, _body_part, _derived):
        why = check(datasets)
        if why:
            return why
    return ""


def _text(ds: Any, name: str) -> str:
    value = ds.get(name)
    return "" if value is None else str(value).strip()


def _modality(datasets: Sequence[Any]) -> str:
    others = sorted({_text(ds, "Modality") for ds in datasets} - {"MR"})
    return f"Modality is {others[0] or 'missing'}, not MR" if others else ""


def _sop_class(datasets: Sequence[Any]) -> str:
    for ds in datasets:
        kind = SECONDARY_CAPTURE.get(_text(ds, "SOPClassUID"))
        if kind:
            return f"{kind} (SOP class {_text(ds, 'SOPClassUID')}), a picture rather than a measured image"
    return ""


def _image_types(datasets: Sequence[Any]) -> dict[tuple[str, ...], None]:
    """The distinct ImageType values of the series, upper case (one value may be a bare string)."""
    found = {}
    for ds in datasets:
        value = ds.get("ImageType") or []
        found[tuple(str(v).strip().upper() for v in ([value] if isinstance(value, str) else value))] = None
    return found


def _localizer(datasets: Sequence[Any]) -> str:
    for values in _image_types(datasets):
        if "LOCALIZER" in values:
            shown = "\\".join(values)
            return f"a localizer (ImageType {shown})"
    return ""


def _derived(datasets: Sequence[Any]) -> str:
    for values in _image_types(datasets):
        shown = "\\".join(values)
        if values and values[0] == "DERIVED":
            return f"a derived image (ImageType {shown}): a reformat, map or subtraction, not the acquisition"
        if len(values) > 1 and values[1] == "SECONDARY":
            return f"a secondary image (ImageType {shown}), made after the exam"
    return ""


def _orientations(datasets: Sequence[Any]) -> str:
    found: list[np.ndarray] = []
    for ds in datasets:
        for iop in _frame_orientations(ds):
            if not any(np.allclose(iop, seen, atol=SAME_ORIENTATION) for seen in found):
                found.append(iop)
    if len(found) > 1:
        return f"a localizer or survey: its slices lie in {len(found)} orientations, no single volume holds them"
    return ""


def _frame_orientations(ds: Any) -> list[np.ndarray]:
    """ImageOrientationPatient of the file, or of each frame of an enhanced multi-frame file."""
    out = []
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for item in ds.get(groups) or []:
            plane = item.get("PlaneOrientationSequence")
            if plane and "ImageOrientationPatient" in plane[0]:
                out.append(np.array(plane[0].ImageOrientationPatient, float))
    if "ImageOrientationPatient" in ds:
        out.append(np.array(ds.ImageOrientationPatient, float))
    return [iop for iop in out if iop.shape == (6,)]


def _described_localizer(datasets: Sequence[Any]) -> str:
    for name in ("SeriesDescription", "ProtocolName"):
        text = _text(datasets[0], name)
        if LOCALIZER_WORDS.search(text):
            return f"a localizer ({name} {text!r})"
    return ""


def _body_part(datasets: Sequence[Any]) -> str:
    part = _text(datasets[0], "BodyPartExamined").upper()
    if part and part not in HEAD_PARTS:
        return f"BodyPartExamined is {part}, not the head"
    if part:
        return ""
    for name in ("SeriesDescription", "ProtocolName"):
        text = _text(datasets[0], name)
        body = BODY_WORDS.search(text)
        if body and not HEAD_WORDS.search(text):
            return f"{name} {text!r} names another body part ({body[0]!r}), not the head"
    return ""
