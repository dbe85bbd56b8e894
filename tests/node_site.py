"""The harness of tests/node/test_node.py: a real Orthanc, `edgeseg listen` as a subprocess, the exam.

Not a test module (no ``test_`` prefix): pytest puts tests/ on sys.path, so the tests import it.
"""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

EDGESEG = Path(sys.executable).parent / "edgeseg"
ORTHANC = Path("/usr/sbin/Orthanc")
DCIODVFY = Path("/usr/bin/dciodvfy")
DICOMWEB = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian orthanc-dicomweb
SEG_CLASS, CT_CLASS = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.2"
NODE_AET = "EDGESEG"
DEADLINE = 300.0  # seconds any one wait may take on a busy 2-core CI box before the test fails
TERMINAL = {"sent", "skipped", "flagged", "failed"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, deadline: float = DEADLINE):  # noqa: ANN001, ANN201
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if result := check():
            return result
        time.sleep(0.25)
    pytest.fail(f"gave up waiting {deadline:.0f} s for {what}")


class Orthanc:
    """A real Orthanc on 127.0.0.1 with its database in ``root``."""

    def __init__(self, root: Path, node_port: int, plugins: tuple[str, ...] = (), overwrite: bool = False) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "edgeseg-test",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"node": [NODE_AET, "127.0.0.1", node_port]},
            "Plugins": list(plugins),
            "OverwriteInstances": overwrite,  # 1.10's default false keeps the first copy of a known SOP UID
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        self.log = open(root / "orthanc.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([str(ORTHANC), str(root / "orthanc.json")], stdout=self.log, stderr=self.log)
        wait_for("Orthanc's REST API", lambda: self._up(), 60)

    def _up(self) -> bool:
        try:
            return bool(self.get("/system"))
        except OSError:
            assert self.proc.poll() is None, f"Orthanc exited {self.proc.returncode}; see {self.log.name}"
            return False

    def request(self, method: str, path: str, body: bytes | dict | list | None = None, timeout: float = 120) -> object:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def upload(self, files: list[Path]) -> str:
        """POST each file; the Orthanc ID of their (one) study."""
        studies = {self.request("POST", "/instances", f.read_bytes())["ParentStudy"] for f in files}
        assert len(studies) == 1, studies
        return studies.pop()

    def series_in(self, study: str) -> list[dict]:
        """Each series of the study: its modality, description, instance SOP UIDs, main tags."""
        out = []
        for series in self.get(f"/studies/{study}/series"):
            instances = self.get(f"/series/{series['ID']}/instances")
            out.append({**series["MainDicomTags"], "instances": instances})
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


class Node:
    """``edgeseg listen`` as a subprocess of the console script, torch blocked."""

    def __init__(self, state: Path, port: int, env: dict) -> None:
        self.state, self.port, self.env, self.quiet = state, port, env, 1.5
        self.proc: subprocess.Popen | None = None

    def start(self, orthanc_port: int | None, allow: str | None = "ORTHANC", *extra: str) -> Node:
        send = ["--send-to", f"ORTHANC@127.0.0.1:{orthanc_port}"] if orthanc_port else []
        send += extra
        args = [str(EDGESEG), "listen", "--ae-title", NODE_AET, "--port", str(self.port)]
        args += ["--allow", allow] if allow else []
        args += ["--state", str(self.state), "--quiet-seconds", str(self.quiet), "--retry-seconds", "1", *send]
        self.stderr = open(self.state.parent / f"node-{self.port}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stderr=self.stderr, stdout=subprocess.DEVNULL, env=self.env)
        wait_for("the node to listen", lambda: self._listening(), 120)
        return self

    def _listening(self) -> bool:
        assert self.proc.poll() is None, f"the node exited {self.proc.returncode}: {self.log()}"
        return "results to " in self.log() or "results kept " in self.log()  # the line that says it is up

    def log(self) -> str:
        return Path(self.stderr.name).read_text()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.stderr.close()
        return code

    def audit(self) -> list[dict]:
        path = self.state / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def states(self) -> dict[str, dict]:
        return {p.stem: json.loads(p.read_text()) for p in (self.state / "queue").glob("*.json")}

    def settled(self, expected: int) -> bool:
        """All ``expected`` series are in a final state."""
        states = self.states()
        return len(states) == expected and all(s["state"] in TERMINAL for s in states.values())


def make_exam(root: Path, make_mni_dicom) -> dict[str, list[Path]]:  # noqa: ANN001
    """One study as a scanner exports it: two T1 series, a 3-plane localizer, a CT, an SR, and a T1
    series below the brain (QC flags it: no brain)."""
    study = generate_uid()
    exam = {
        "t1_a": make_mni_dicom(root / "t1_a", range(84, 90), 3, "T1 MPRAGE", study_uid=study),
        "t1_b": make_mni_dicom(root / "t1_b", range(96, 100), 4, "T1 SE axial", study_uid=study),
        "localizer": make_mni_dicom(root / "loc", range(88, 91), 1, "AAHead_Scout", study_uid=study),
        "ct": make_mni_dicom(root / "ct", range(86, 89), 2, "Head", modality="CT", study_uid=study),
        "no_brain": make_mni_dicom(root / "low", range(2, 6), 5, "T1 low", study_uid=study),  # below the brain
    }
    planes = ([1.0, 0, 0, 0, 1, 0], [0, 1.0, 0, 0, 0, -1], [1.0, 0, 0, 0, 0, -1])  # axial, sagittal, coronal
    for path, iop in zip(exam["localizer"], planes, strict=True):
        ds = pydicom.dcmread(path)
        ds.ImageType, ds.ImageOrientationPatient = ["ORIGINAL", "PRIMARY", "LOCALIZER"], iop
        ds.save_as(path)
    for path in exam["ct"]:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_CLASS
        ds.save_as(path)
    patient = pydicom.dcmread(exam["t1_a"][0])
    sr = pydicom.dcmread(get_testdata_file("test-SR.dcm"))
    sr.PatientID, sr.PatientName, sr.StudyInstanceUID = patient.PatientID, patient.PatientName, study
    sr.SeriesInstanceUID, sr.SeriesNumber = generate_uid(), 99
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    (root / "sr").mkdir()
    sr.save_as(root / "sr" / "report.dcm")
    exam["sr"] = [root / "sr" / "report.dcm"]
    return exam


def uid_of(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def store(orthanc: Orthanc, resources: list[str]) -> None:
    """Orthanc C-STOREs ``resources`` to the node (synchronous: returns once every instance was answered)."""
    orthanc.request("POST", "/modalities/node/store", {"Resources": resources, "Synchronous": True})


def results(orthanc: Orthanc, study: str, exam: dict[str, list[Path]]) -> dict[str, Counter]:
    """Per source series key: a Counter of the modalities of the new instances in the study that refer to
    it, directly (a SEG's ReferencedSeriesSequence) or through a SEG (an SR's evidence names the SEG)."""
    by_uid = {uid_of(files): key for key, files in exam.items()}
    made = []  # (modality, own series UID, series it refers to)
    for series in orthanc.series_in(study):
        if series["SeriesInstanceUID"] not in by_uid:
            for inst in series["instances"]:
                ds = pydicom.dcmread(download(orthanc, inst["ID"]), stop_before_pixels=True)
                made.append((series["Modality"], series["SeriesInstanceUID"], _referenced_series(ds)))
    sources = {uid: refs & set(by_uid) for _, uid, refs in made}  # a SEG series -> its source series
    found: dict[str, Counter] = {key: Counter() for key in exam}
    for modality, _, refs in made:
        for source in set().union(*(({r} & set(by_uid)) | sources.get(r, set()) for r in refs)):
            found[by_uid[source]][modality] += 1
    return found


def download(orthanc: Orthanc, instance: str) -> io.BytesIO:
    req = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances/{instance}/file")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return io.BytesIO(resp.read())


def _referenced_series(ds: pydicom.Dataset) -> set[str]:
    """Series UIDs an SEG or SR refers to (ReferencedSeriesSequence, evidence sequences)."""
    found = {str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])}
    for seq in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(seq, []):
            found |= {str(item.SeriesInstanceUID) for item in study.get("ReferencedSeriesSequence", [])}
    return found


def events(node: Node, kind: str) -> list[dict]:
    return [e for e in node.audit() if e["event"] == kind]


def originals(orthanc: Orthanc, study: str, exam: dict[str, list[Path]]) -> list[str]:
    """Orthanc's IDs of the exam's own series (not what the node sent back)."""
    return [exam_series_id(orthanc, study, files) for files in exam.values()]


def exam_series_id(orthanc: Orthanc, study: str, files: list[Path]) -> str:
    uid = uid_of(files)
    return next(
        s["ID"] for s in orthanc.get(f"/studies/{study}/series") if s["MainDicomTags"]["SeriesInstanceUID"] == uid
    )
