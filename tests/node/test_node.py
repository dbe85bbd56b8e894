"""`edgeseg listen` end to end: a real Orthanc plays the scanner and the PACS.

Orthanc (Debian ``orthanc``) is started per test on 127.0.0.1 with free ports and a minimal JSON
config holding a DicomModalities entry for the node. It C-STOREs an exam (two T1 series built
from the MNI152 template as a scanner writes them, a 3-plane localizer, a CT, an SR and a T1
series below the brain) to the node, a subprocess of the installed console script with torch
blocked, which sends SEG + SR back. The harness is tests/node_site.py. Every wait polls with a
deadline; nothing asserts on time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.error
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from node_site import (
    DCIODVFY,
    DICOMWEB,
    EDGESEG,
    NODE_AET,
    ORTHANC,
    Node,
    Orthanc,
    download,
    events,
    exam_series_id,
    free_port,
    make_exam,
    originals,
    results,
    store,
    uid_of,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
pynetdicom = pytest.importorskip("pynetdicom", reason="needs the node extra: pip install 'edgeseg[node]'")


@pytest.fixture
def site(tmp_path: Path, mni_dicom_factory, env_without, request):  # noqa: ANN001, ANN201
    """(orthanc, node, exam, study id): the exam uploaded to a fresh Orthanc; the node not started.
    A test marked ``dicomweb`` gets Orthanc's DICOMweb plugin (STOW-RS at /dicom-web), one marked
    ``overwrite`` an Orthanc that replaces an instance it already has ("OverwriteInstances": true)."""
    if not ORTHANC.exists():
        pytest.skip(f"needs a real Orthanc at {ORTHANC}: apt-get install orthanc (.ci/run installs it as root)")
    plugins = ()
    if request.node.get_closest_marker("dicomweb"):
        if not DICOMWEB.exists():
            pytest.skip(f"needs Orthanc's DICOMweb plugin {DICOMWEB}: apt-get install orthanc-dicomweb (.ci/run does)")
        plugins = (str(DICOMWEB),)
    node_port = free_port()
    overwrite = request.node.get_closest_marker("overwrite") is not None
    orthanc = Orthanc(tmp_path / "orthanc", node_port, plugins, overwrite)
    exam = make_exam(tmp_path / "exam", mni_dicom_factory)
    study = orthanc.upload([f for files in exam.values() for f in files])
    node = Node(tmp_path / "node", node_port, env_without(tmp_path / "shim", "torch"))
    yield orthanc, node, exam, study
    if node.proc and node.proc.poll() is None:
        node.stop(signal.SIGKILL)
    orthanc.stop()


EXPECTED = {
    **{"t1_a": {"SEG": 1, "SR": 1}, "t1_b": {"SEG": 1, "SR": 1}},
    **{"localizer": {}, "ct": {}, "sr": {}, "no_brain": {}},
}


def test_exam_round_trip_and_resend(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.start(orthanc.dicom_port)
    orthanc.request("POST", "/modalities/node/echo", {})  # C-ECHO answered
    store(orthanc, [study])
    wait_for("every series to be settled", lambda: node.settled(len(exam)))
    assert {k: dict(v) for k, v in results(orthanc, study, exam).items()} == EXPECTED
    states = node.states()
    assert {states[uid_of(exam[k])]["state"] for k in ("t1_a", "t1_b")} == {"sent"}
    reasons = {key: states[uid_of(files)]["reason"] for key, files in exam.items() if key not in ("t1_a", "t1_b")}
    assert states[uid_of(exam["no_brain"])]["state"] == "flagged"
    assert "localizer" in reasons["localizer"].lower(), reasons
    assert "CT" in reasons["ct"], reasons
    assert reasons["sr"], reasons
    for key in ("localizer", "ct", "sr"):  # the audit log says why
        assert any(e["series"] == uid_of(exam[key]) and e["reason"] for e in events(node, "skipped")), key
    flagged = events(node, "flagged")
    assert [e["series"] for e in flagged] == [uid_of(exam["no_brain"])] and "no brain" in flagged[0]["reason"]
    before = {kind: len(events(node, kind)) for kind in ("segmented", "sent", "completed")}
    assert before["sent"] == 4  # a SEG and an SR for each T1 series, each sent once

    store(orthanc, originals(orthanc, study, exam))  # the same exam again: all duplicates, nothing changes
    assert node.settled(len(exam)) and node.states() == states
    assert {kind: len(events(node, kind)) for kind in before} == before
    assert sum(1 for e in events(node, "received") if e.get("duplicate")) == sum(map(len, exam.values()))
    assert {k: dict(v) for k, v in results(orthanc, study, exam).items()} == EXPECTED

    store(orthanc, [study])  # the whole study, our SEGs and SRs included: they come back and are skipped
    wait_for("our own outputs to be skipped", lambda: node.settled(len(exam) + before["sent"]))
    ours = [s for uid, s in node.states().items() if uid not in states]
    assert {s["state"] for s in ours} == {"skipped"} and all(s["reason"] for s in ours)
    assert {kind: len(events(node, kind)) for kind in ("segmented", "sent")} == {
        k: before[k] for k in ("segmented", "sent")
    }
    assert {k: dict(v) for k, v in results(orthanc, study, exam).items()} == EXPECTED
    assert node.stop() == 143  # SIGTERM: a clean stop with the shell's code
    assert events(node, "stopped") and "Traceback" not in node.log()


def test_sigkill_mid_series_then_restart(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.quiet = 5.0  # the restarted node waits this long from its start for the rest of a series
    node.start(orthanc.dicom_port)
    t1_a = exam_series_id(orthanc, study, exam["t1_a"])
    half = [i["ID"] for i in orthanc.get(f"/series/{t1_a}/instances")][:3]
    store(orthanc, half)  # half of a series arrives (acknowledged) ...
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL  # ... and the node is killed while receiving it
    acknowledged = {e["sop"] for e in events(node, "received")}
    assert len(acknowledged) == 3 and acknowledged == {p.stem for p in (node.state / "spool").rglob("*.dcm")}
    node.start(orthanc.dicom_port)
    store(orthanc, originals(orthanc, study, exam))  # the whole exam: the spooled half arrives again
    wait_for("every series to be settled", lambda: node.settled(len(exam)))
    assert {k: dict(v) for k, v in results(orthanc, study, exam).items()} == EXPECTED
    assert set(Counter(e["series"] for e in events(node, "segmented")).values()) == {1}  # none segmented twice
    assert set(Counter(e["sop"] for e in events(node, "sent")).values()) == {1}  # none sent twice
    node.stop()


@pytest.mark.overwrite
def test_a_series_that_grows_after_it_was_sent_is_redone_and_replaced(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.start(orthanc.dicom_port)
    t1_a = exam_series_id(orthanc, study, exam["t1_a"])
    instances = [i["ID"] for i in orthanc.get(f"/series/{t1_a}/instances")]
    store(orthanc, instances[:3])
    wait_for("the first half to be sent", lambda: len(events(node, "sent")) == 2 and node.settled(1))
    store(orthanc, instances)  # the rest of the series comes later (and the first half again)
    wait_for("the whole series to be sent", lambda: len(events(node, "sent")) == 4 and node.settled(1))
    assert node.states()[uid_of(exam["t1_a"])]["generation"] == 2
    assert dict(results(orthanc, study, exam)["t1_a"]) == {"SEG": 1, "SR": 1}  # replaced, not beside
    seg = next(s for s in orthanc.series_in(study) if s["Modality"] == "SEG")
    ds = pydicom.dcmread(download(orthanc, seg["instances"][0]["ID"]), stop_before_pixels=True)
    referenced = {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(pydicom.dcmread(f).SOPInstanceUID) for f in exam["t1_a"]}  # all six, not the first three
    node.stop()


def test_killed_before_sending_sends_once_after_restart(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    closed = free_port()  # nothing listens there: every send fails and is retried
    node.start(closed)
    store(orthanc, [study])
    wait_for("a series' second failed send", lambda: max(Counter(_failed(node)).values(), default=0) >= 2)
    waits = [e["retry_in_s"] for e in events(node, "send failed") if e["series"] == _failed(node)[0]]
    assert waits[:2] == [1.0, 2.0]  # --retry-seconds 1, doubled after the second failure
    assert node.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not results(orthanc, study, exam)["t1_a"]
    node.start(orthanc.dicom_port)
    wait_for("every series to be settled", lambda: node.settled(len(exam)))
    assert {k: dict(v) for k, v in results(orthanc, study, exam).items()} == EXPECTED
    assert set(Counter(e["sop"] for e in events(node, "sent")).values()) == {1}
    assert set(Counter(e["series"] for e in events(node, "segmented")).values()) == {1}
    node.stop()


def _failed(node: Node) -> list[str]:
    return [e["series"] for e in events(node, "send failed")]


def test_unknown_calling_ae_is_refused(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.start(orthanc.dicom_port, allow="SCANNER1")  # Orthanc calls as ORTHANC: not allowed
    with pytest.raises(urllib.error.HTTPError):
        orthanc.request("POST", "/modalities/node/echo", {})
    ae = pynetdicom.AE(ae_title="SCANNER1")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AET)  # the allowed one gets in
    assert assoc.is_established
    assoc.release()
    refused = events(node, "refused")
    assert refused and refused[0]["calling_ae"] == "ORTHANC" and "not allowed" in refused[0]["reason"]
    assert not list((node.state / "spool").rglob("*.dcm"))
    node.stop()


@pytest.mark.dicomweb
def test_results_by_stow_rs(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    url = f"http://127.0.0.1:{orthanc.http_port}/dicom-web"
    node.start(None, "ORTHANC", "--stow-url", url)
    store(orthanc, [exam_series_id(orthanc, study, exam["t1_a"])])
    wait_for("the series to be sent", lambda: node.settled(1))
    assert dict(results(orthanc, study, exam)["t1_a"]) == {"SEG": 1, "SR": 1}
    assert [e["to"] for e in events(node, "sent")] == [url, url]
    node.stop()


def test_stow_rs_input(site) -> None:  # noqa: ANN001
    from dicomweb_client.api import DICOMwebClient

    orthanc, node, exam, study = site
    port = free_port()
    node.start(orthanc.dicom_port, None, "--stow-port", str(port))  # STOW-RS in only: no --allow
    for key, chunk in (("t1_a", 1 << 16), ("t1_b", 1 << 30)):  # chunked transfer, then Content-Length
        client = DICOMwebClient(url=f"http://127.0.0.1:{port}", chunk_size=chunk)
        answer = client.store_instances([pydicom.dcmread(f) for f in exam[key]])
        assert len(answer.ReferencedSOPSequence) == len(exam[key]) and "FailedSOPSequence" not in answer
    wait_for("both series to be sent", lambda: node.settled(2) and len(events(node, "sent")) == 4)
    found = results(orthanc, study, exam)
    assert dict(found["t1_a"]) == dict(found["t1_b"]) == {"SEG": 1, "SR": 1}
    assert {e["source"] for e in events(node, "received")} == {"stow:127.0.0.1"}
    node.stop()


def test_folder_watch(site, tmp_path: Path) -> None:  # noqa: ANN001
    import shutil

    orthanc, node, exam, study = site
    inbox = tmp_path / "inbox"
    (inbox / "t1").mkdir(parents=True)
    for path in exam["t1_a"]:
        shutil.copy(path, inbox / "t1" / path.name)
    (inbox / "notes.txt").write_text("not DICOM")
    node.start(orthanc.dicom_port, None, "--watch", str(inbox))  # watches only: no --allow, no network
    wait_for("the series to be sent", lambda: node.settled(1) and len(events(node, "sent")) == 2)
    assert dict(results(orthanc, study, exam)["t1_a"]) == {"SEG": 1, "SR": 1}
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == ["notes.txt"]  # in .refused/
    assert (inbox / ".refused" / "notes.txt").exists()
    refused = events(node, "refused")
    assert len(refused) == 1 and "not a DICOM file" in refused[0]["reason"]
    with pytest.raises(urllib.error.HTTPError):  # not listening: Orthanc cannot reach it
        orthanc.request("POST", "/modalities/node/echo", {})
    node.stop()


def dciodvfy_messages(path: Path) -> set[str]:
    """dciodvfy's errors and warnings for ``path``, without the leading file-specific noise."""
    proc = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return {line.strip() for line in lines if line.startswith(("Error", "Warning"))}


def test_seg_flagged_sends_a_marked_seg_and_sr(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.start(orthanc.dicom_port, "ORTHANC", "--seg-flagged")
    store(orthanc, [exam_series_id(orthanc, study, exam["no_brain"])])
    wait_for("the flagged series to be sent", lambda: node.settled(1))
    assert dict(results(orthanc, study, exam)["no_brain"]) == {"SEG": 1, "SR": 1}
    exam_uids = {uid_of(files) for files in exam.values()}
    made = [s for s in orthanc.series_in(study) if s["SeriesInstanceUID"] not in exam_uids]
    assert sorted(s["Modality"] for s in made) == ["SEG", "SR"]
    assert all(s["SeriesDescription"].startswith("QC FLAGGED: no brain") for s in made), made
    assert [e["sent_anyway"] for e in events(node, "flagged")] == [True]
    node.stop()


@pytest.mark.skipif(not DCIODVFY.exists(), reason="needs dciodvfy: apt-get install dicom3tools")
def test_node_outputs_pass_dciodvfy(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.start(None)  # keep the outputs in the state folder
    store(orthanc, [exam_series_id(orthanc, study, exam["t1_a"])])
    wait_for("the series to be segmented", lambda: events(node, "segmented"))
    outputs = sorted((node.state / "results").rglob("*.dcm"))
    assert sorted(p.name.rsplit("_", 1)[1] for p in outputs) == ["seg.dcm", "sr.dcm"]
    inherited = dciodvfy_messages(exam["t1_a"][0])  # the source's own (MR_small's retired PN form, ...)
    for path in outputs:
        ours = {m for m in dciodvfy_messages(path) if m not in inherited}
        assert not ours, f"{path.name}: {sorted(ours)}"
    node.stop()


def test_listen_refuses_bad_settings_in_one_line(tmp_path: Path) -> None:
    cases = [
        (["--allow", "ORTHANC", "--send-to", "nonsense"], "expected AET@HOST:PORT"),
        (["--state", str(tmp_path / "s")], "no calling AE title is allowed"),
        (["--allow", "A" * 17], "not valid"),
    ]
    for args, words in cases:
        proc = subprocess.run([str(EDGESEG), "listen", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_second_node_on_the_same_state_is_refused(site) -> None:  # noqa: ANN001
    orthanc, node, exam, study = site
    node.start(None)
    args = ["listen", "--allow", "ORTHANC", "--port", str(free_port()), "--state", str(node.state)]
    proc = subprocess.run([str(EDGESEG), *args], capture_output=True, text=True, timeout=60, env=node.env)
    assert proc.returncode == 1 and f"pid {node.proc.pid}" in proc.stderr, proc.stderr
    node.stop()
    assert os.path.exists(node.state / "audit.jsonl")
