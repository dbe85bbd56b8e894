"""The node's queue and settings without a network (`edgeseg/node/queue.py`, `edgeseg/node/config.py`).

What a restart finds in the state folder, in-process and fast; tests/node/test_node.py runs the same
through a real Orthanc and SIGKILL.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.node.config import Destination, NodeConfig, load_config, override, parse_destination
from edgeseg.node.queue import NodeQueue, valid_uid

SERIES, STUDY = "1.2.3.4", "1.2.3"


def spool(queue: NodeQueue, sop: str, series: str = SERIES) -> bool:
    return queue.spool(f"instance {sop}".encode(), series, sop, STUDY, "ORTHANC")


def test_an_instance_is_spooled_once_and_a_duplicate_changes_nothing(tmp_path: Path) -> None:
    with NodeQueue(tmp_path) as queue:
        assert spool(queue, "1.1") and not spool(queue, "1.1")
        assert (tmp_path / "spool" / SERIES / "1.1.dcm").read_bytes() == b"instance 1.1"
        assert queue.complete_quiet(3600) == []  # not quiet yet
        [state] = queue.complete_quiet(0)
        assert state.state == "complete" and queue.pending("complete") == [(SERIES, 1)]
        assert queue.advance(SERIES, 1, "sent")
        assert not spool(queue, "1.1")  # the same exam again
        assert queue.get(SERIES).state == "sent" and queue.get(SERIES).generation == 1
    assert not list((tmp_path / "tmp").iterdir())  # no temp file left behind


def test_a_new_instance_after_completion_raises_the_generation(tmp_path: Path) -> None:
    with NodeQueue(tmp_path) as queue:
        spool(queue, "1.1")
        queue.complete_quiet(0)
        assert spool(queue, "1.2")  # arrives while the series is being segmented
        assert not queue.advance(SERIES, 1, "segmented")  # that work was for generation 1: not recorded
        assert queue.get(SERIES).state == "receiving" and queue.get(SERIES).generation == 2


def test_a_restart_finds_every_state_and_waits_a_full_quiet_time(tmp_path: Path) -> None:
    with NodeQueue(tmp_path) as queue:
        spool(queue, "1.1")
        spool(queue, "2.1", series="5.6.7")
        queue.complete_quiet(0)
        queue.advance("5.6.7", 1, "segmented", outputs=[{"path": "x", "sop": "9.9", "sha256": "ab"}])
        queue.mark_sent("5.6.7", 1, "ab")
        queue.advance("5.6.7", 1, "segmented", retry_at=time.time() + 600, failures=5)  # its destination is down
        spool(queue, "1.2")  # series 1.2.3.4 receiving again (generation 2)
    before = time.time()
    with NodeQueue(tmp_path) as queue:  # what a restarted node sees
        assert queue.get(SERIES).state == "receiving" and queue.get(SERIES).last_received >= before
        assert queue.get("5.6.7").state == "segmented" and queue.get("5.6.7").sent == ["ab"]
        assert (queue.get("5.6.7").retry_at, queue.get("5.6.7").failures) == (0.0, 0)  # sent at once after a restart


def test_a_series_spooled_without_its_state_file_is_found(tmp_path: Path) -> None:
    """Killed between the first instance's rename and its state file: the instance is not lost."""
    (tmp_path / "spool" / SERIES).mkdir(parents=True)
    (tmp_path / "spool" / SERIES / "1.1.dcm").write_bytes(b"x")
    with NodeQueue(tmp_path) as queue:
        assert queue.get(SERIES).state == "receiving"
        assert json.loads((tmp_path / "queue" / f"{SERIES}.json").read_text())["uid"] == SERIES


def test_one_node_per_state_folder(tmp_path: Path) -> None:
    with NodeQueue(tmp_path), pytest.raises(EdgesegError, match="another edgeseg listen"):
        NodeQueue(tmp_path).__enter__()


@pytest.mark.parametrize(
    ("text", "ok"),
    [("1.2.840.10008.1.2", True), ("1.2.3", True), ("../etc", False), ("1.2/3", False), ("1" * 65, False), ("", False)],
)
def test_only_uids_name_spool_paths(text: str, ok: bool) -> None:
    assert valid_uid(text) is ok


def test_config_file_and_options(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"ae_title": "NODE1", "allowed": ["ORTHANC"], "destination": "PACS@10.0.0.2:4242"}))
    config = override(load_config(path), port=4000, allowed=None).check()
    assert (config.ae_title, config.port, config.allowed) == ("NODE1", 4000, ("ORTHANC",))
    assert config.destination == Destination("PACS", "10.0.0.2", 4242)
    assert config.host == "127.0.0.1"  # loopback unless told otherwise


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"prot": 1}, "unknown setting prot; valid: ae_title"),
        ({"port": "x"}, "port must be an integer"),
        ({"allowed": "ORTHANC"}, "allowed must be a list"),
        ({"destination": "PACS@host"}, "expected AET@HOST:PORT"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path: Path, settings: dict, words: str) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(EdgesegError, match=words.replace(".", r"\.")) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(EdgesegError, match="not both"):
        NodeConfig(allowed=("A",), destination=parse_destination("B@h:1"), stow_url="http://x").check()
    with pytest.raises(EdgesegError, match="AE title"):
        NodeConfig(ae_title="BAD\\AET", allow_any=True).check()


def test_listen_without_the_node_extra_is_one_line_naming_it(tmp_path: Path, env_without) -> None:  # noqa: ANN001
    import subprocess
    import sys

    env = env_without(tmp_path / "shim", "pynetdicom", "ModuleNotFoundError")
    edgeseg = Path(sys.executable).parent / "edgeseg"
    args = [str(edgeseg), "listen", "--allow", "ORTHANC", "--port", "1", "--state", str(tmp_path / "state")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: `edgeseg listen` needs pynetdicom, which the core install leaves out: pip install 'edgeseg[node]'"
    ]


def test_stow_rs_refuses_what_is_not_dicom(tmp_path: Path) -> None:
    """A part that is not DICOM: 409 with a FailedSOPSequence, a refused line, nothing spooled."""
    import socket
    import urllib.error
    import urllib.request

    from edgeseg.node.stow import start_stow

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with NodeQueue(tmp_path) as queue:
        server = start_stow("127.0.0.1", port, queue)
        try:
            body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b1--\r\n"
            headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'}
            req = urllib.request.Request(f"http://127.0.0.1:{port}/studies", data=body, headers=headers)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=30)
            assert info.value.code == 409 and "00081198" in json.loads(info.value.read())
            req = urllib.request.Request(f"http://127.0.0.1:{port}/studies", data=b"x", headers={})
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(req, timeout=30)
            assert info.value.code == 415
        finally:
            server.shutdown()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["refused"] and "not a DICOM file" in lines[0]["reason"]
    assert not list((tmp_path / "spool").iterdir())


def test_each_generation_has_its_own_results_folder(tmp_path: Path) -> None:
    """A series that grew never finds (and sends) the outputs of its older content."""
    with NodeQueue(tmp_path) as queue:
        first = queue.results_for(SERIES, 1)
        first.mkdir(parents=True)
        (first / "x_seg.dcm").write_bytes(b"old")
        assert queue.results_for(SERIES, 1) == first and (first / "x_seg.dcm").exists()  # a rerun resumes there
        second = queue.results_for(SERIES, 2)
        assert second.name == "g2" and not first.exists()
