"""STOW-RS input for `edgeseg listen --stow-port PORT`: DICOMweb senders POST instances to the node.

Torch-free; the standard library's HTTP server and pydicom. ``POST /studies`` (or
``/studies/{StudyInstanceUID}``) with a ``multipart/related; type="application/dicom"`` body, as
PS3.18 10.5 and dicomweb-client send it (``Content-Length`` or chunked). Each part is spooled
exactly as a C-STORE is (:func:`edgeseg.node.watch.take`: fsync'ed before the answer), and the
answer is the standard's: 200 with the ReferencedSOPSequence when all were stored, 202 with a
FailedSOPSequence too when some were not, 409 when none was. HTTP carries no AE title, so
there is no caller check: the server binds the node's ``host`` (127.0.0.1 by default); put a
reverse proxy with TLS and authentication in front of it before opening it to a network.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgeseg.errors import EdgesegError
from edgeseg.node.queue import NodeQueue
from edgeseg.node.watch import take

MAX_BODY_BYTES = 2 << 30  # one request: a large series; beyond it 413 (split the study into requests)
PATH = re.compile(r"/studies(/[0-9.]+)?/?")


def start_stow(host: str, port: int, queue: NodeQueue) -> ThreadingHTTPServer:
    """Serve STOW-RS on ``host:port`` in a daemon thread; shut it down with ``.shutdown()``."""
    try:
        server = ThreadingHTTPServer((host, port), _Stow)
    except OSError as exc:
        why = exc.strerror or exc
        raise EdgesegError(f"--stow-port {port}: cannot listen on {host} ({why}); choose another") from None
    server.node_queue = queue  # type: ignore[attr-defined]  (what each request spools into)
    threading.Thread(target=server.serve_forever, name="edgeseg-stow", daemon=True).start()
    return server


class _Stow(BaseHTTPRequestHandler):
    """One STOW-RS request; ``self.server.node_queue`` is the node's queue."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """The audit log says what happened; no access log on stderr."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if not PATH.fullmatch(self.path.split("?")[0]):
            return self._answer(404, {"error": "POST DICOM instances to /studies"})
        match = re.search(r'boundary="?([^";]+)"?', self.headers.get("Content-Type", ""))
        if not self.headers.get("Content-Type", "").startswith("multipart/related") or not match:
            return self._answer(415, {"error": 'expected multipart/related; type="application/dicom"; boundary=...'})
        try:
            body = self._body()
        except ValueError as exc:
            return self._answer(413 if "too large" in str(exc) else 400, {"error": str(exc)})
        queue: NodeQueue = self.server.node_queue  # type: ignore[attr-defined]
        source, stored, failed = f"stow:{self.client_address[0]}", [], []
        for part in _parts(body, match.group(1).encode()):
            why, ids = take(part, queue, source)
            if why:
                queue.audit("refused", source=source, sop=ids[1], reason=why)
            (failed if why else stored).append((*ids, why))
        code = 200 if not failed else 202 if stored else 409
        return self._answer(code, _response(stored, failed))

    def _body(self) -> bytes:
        """The request body, from Content-Length or chunked transfer encoding, at most MAX_BODY_BYTES."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                total += size
                if total > MAX_BODY_BYTES:
                    raise ValueError(f"request too large (over {MAX_BODY_BYTES} bytes)")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ValueError(f"request too large ({length} bytes, at most {MAX_BODY_BYTES})")
        return self.rfile.read(length)

    def _answer(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The payloads of a multipart body (each part's headers dropped)."""
    out = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        _, sep, payload = chunk.partition(b"\r\n\r\n")
        if sep:
            out.append(payload.removesuffix(b"\r\n"))
    return out


def _response(stored: list[tuple[str, str, str]], failed: list[tuple[str, str, str]]) -> dict:
    """The STOW-RS response in DICOM JSON: ReferencedSOPSequence and FailedSOPSequence (PS3.18 10.5.3)."""

    def item(cls: str, sop: str, why: str = "") -> dict:
        out = {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [sop]}}
        if why:
            out["00081197"] = {"vr": "US", "Value": [0xC000]}  # FailureReason: cannot understand
        return {k: v for k, v in out.items() if v.get("Value") != [""]}

    payload = {"00081199": {"vr": "SQ", "Value": [item(c, s) for c, s, _ in stored]}}
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": [item(c, s, w) for c, s, w in failed]}
    return payload
