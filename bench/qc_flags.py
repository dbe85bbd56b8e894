"""How well QC's verdict tells a bad segmentation from a good one, slice by slice (issue 22).

    python bench/qc_flags.py [--model export/model.onnx] [--slices 32] [--json out.json]

Every held-out demo slice of the regions split (:func:`edgeseg.train.robustness.held_out_planes`, the
slices and oblique planes that `edgeseg evaluate --robustness` scores), under every family and
strength of :func:`edgeseg.train.robustness.families`, goes through ``--model`` on ONNX Runtime (CPU),
and gets the verdict `edgeseg infer` gives a single-slice scan: the model's QC ranges
(``edgeseg.qc_ranges``) and :mod:`edgeseg.io.qc_anatomy`'s limits, on the model's own logits
(:class:`edgeseg.io.qc.QCCounter`, as :mod:`edgeseg.infer.segment` counts them). Its mIoU(GM, WM) is
scored on the held-out pixels, as the robustness report scores them.

Printed: per family, the slices, those with mIoU < 0.7 and how many of them QC flagged, and how
many of the rest (mIoU >= 0.7) it flagged; then the issue's two figures: the share of slices
with mIoU < 0.7 flagged (floor 80 %) and the share of clean slices flagged (ceiling 5 %). The
"empty" family (slices with no brain, where mIoU means nothing) is reported apart: the share
flagged. ``--json`` keeps every slice's figures, reasons and mIoU; ``--rejudge FILE`` judges them
again with the code as it is now, without running the model.

Measured with the shipped ``export/model.onnx`` (ONNX Runtime CPU, 2-core AMD EPYC under other
jobs, 2026-12-07), :mod:`edgeseg.io.qc_anatomy`'s limits as set from the first run's good slices:

* ``--slices 32``: 139 of 157 slices with mIoU < 0.7 flagged (88.5 %); clean 1 of 32 (the one
  clean slice below 0.7; 0 of 31 good); 64 of 610 good slices (10.5 %, 31 of them tight crops:
  their brain fraction is above the whole-frame training range); empty 93 of 97.
* ``--slices 31`` (20 of its 31 slices not among those 32): 127 of 137 (92.7 %); clean 0 of 31;
  56 of 607 good (9.2 %); empty 90 of 93.

Missed: the resolution family's bad slices (2-3 of 9-12 flagged), a few gamma/noise/deformed ones.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeseg import SHIPPED_MODEL
from edgeseg.io.qc import METADATA_KEY, QCCounter, parse_ranges, verdict
from edgeseg.io.qc_anatomy import anatomy_reasons
from edgeseg.metrics import ConfusionMatrix

BAD = 0.7  # mIoU(GM, WM) below this is a slice QC should flag (issue 22)


def slice_verdict(session, ranges, names, image: np.ndarray) -> tuple[np.ndarray, dict, tuple[str, ...], str]:  # noqa: ANN001
    """Labels, figures, reasons and status of one ``(H, W)`` slice, as `edgeseg infer` judges a single slice."""
    (logits,) = session.run(["logits"], {"image": np.ascontiguousarray(image, np.float32)[None, None]})
    labels = logits.argmax(1)
    counter = QCCounter.for_classes(names)
    counter.add(logits, labels, np.asarray(image, np.float32)[None])
    figures, shape = counter.figures(), counter.anatomy()
    judged = verdict(figures, ranges, anatomy_reasons(shape), ("single slice", "one slice"))
    return labels[0], {**figures, **shape}, judged.reasons, judged.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL)
    parser.add_argument("--slices", type=int, default=32, help="held-out slices (as --robustness-slices)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rejudge", type=Path, default=None, help="judge the figures a --json run kept, again")
    args = parser.parse_args()
    if args.rejudge:  # the same verdict on stored figures: for new limits, without running the model
        from edgeseg.artifacts import read_model_info
        from edgeseg.io.qc import FIGURES
        from edgeseg.io.qc_anatomy import ANATOMY

        ranges = parse_ranges(read_model_info(args.model).metadata.get(METADATA_KEY))
        records = json.loads(args.rejudge.read_text())
        for r in records:
            f = r["figures"]
            judged = verdict(
                {k: f[k] for k in FIGURES if k in f},
                ranges,
                anatomy_reasons({k: f[k] for k in ANATOMY if k in f}),
            )
            r["status"], r["reasons"] = judged.status, judged.reasons
        report(records, args.model, max(sum(r["family"] == "clean" for r in records), 1))
        return

    import onnxruntime as ort

    from edgeseg.artifacts import read_model_info
    from edgeseg.train.robustness import families, family_slices, held_out_planes

    info = read_model_info(args.model)
    ranges = parse_ranges(info.metadata.get(METADATA_KEY))
    names = info.class_names
    opts = ort.SessionOptions()
    session = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    data = held_out_planes(count=args.slices)
    records = []
    for family, variants in families():
        if family == "empty":
            from edgeseg.train.robustness_heads import EMPTY_KINDS, empty_slices

            for kind in EMPTY_KINDS:
                for image in empty_slices(kind, args.slices):
                    _, figures, reasons, status = slice_verdict(session, ranges, names, image)
                    records.append(dict(family=family, strength=kind, miou=None, status=status, reasons=reasons))
                    records[-1]["figures"] = figures
            continue
        for strength, pairs in family_slices(family, variants, data):
            for image, mask in pairs:
                labels, figures, reasons, status = slice_verdict(session, ranges, names, image)
                cm = ConfusionMatrix(len(names))
                cm.update(labels.astype(np.int64), mask)
                records.append(
                    dict(family=family, strength=strength, miou=cm.miou_fg(), status=status, reasons=reasons)
                )
                records[-1]["figures"] = figures
        print(f"  {family}: {sum(r['family'] == family for r in records)} slices", flush=True)
    report(records, args.model, args.slices)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, default=list) + "\n")


def report(records: list[dict], model: Path, slices: int) -> None:
    """Print the per-family table and the issue's two figures."""
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # slices, bad, bad flagged, good, good flagged
    for r in records:
        if r["miou"] is None:
            continue
        row = rows[r["family"]]
        flagged = r["status"] == "flagged"
        bad = r["miou"] < BAD
        row[0] += 1
        row[1 if bad else 3] += 1
        row[2 if bad else 4] += flagged
    print(f"{model}: QC verdicts of single held-out slices ({slices} a strength), mIoU(GM, WM) < {BAD} = bad")
    print(f"{'family':<16} {'slices':>6} {'bad':>5} {'bad flagged':>12} {'good':>5} {'good flagged':>13}")
    for family, (n, bad, bad_f, good, good_f) in rows.items():
        bad_share, good_share = pct(bad_f, bad), pct(good_f, good)
        print(f"{family:<16} {n:>6} {bad:>5} {bad_f:>5} ({bad_share:>5}) {good:>5} {good_f:>5} ({good_share:>5})")
    total = np.array(list(rows.values())).sum(0)
    clean = rows.get("clean", [0] * 5)
    print(f"slices with mIoU < {BAD} flagged: {total[2]} of {total[1]} = {pct(total[2], total[1])} (floor 80 %)")
    wrong = clean[2] + clean[4]
    print(
        f"clean slices flagged: {wrong} of {clean[0]} = {pct(wrong, clean[0])} (ceiling 5 %); wrongly, with"
        f" mIoU >= {BAD}: {clean[4]} of {clean[3]} = {pct(clean[4], clean[3])}"
    )
    print(f"all slices with mIoU >= {BAD} flagged: {total[4]} of {total[3]} = {pct(total[4], total[3])}")
    empty = [r for r in records if r["miou"] is None]
    if empty:
        no_brain = sum(any(x.startswith("no brain") for x in r["reasons"]) for r in empty)
        flagged = sum(r["status"] == "flagged" for r in empty)
        print(
            f"empty slices (no brain in them) flagged: {flagged} of {len(empty)} = {pct(flagged, len(empty))}"
            f" ({no_brain} as 'no brain')"
        )


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


if __name__ == "__main__":
    main()
