"""`edgeseg listen`: a DICOM node beside the scanner that segments each series it receives.

    edgeseg listen --ae-title EDGESEG --port 11112 --allow ORTHANC --send-to ORTHANC@127.0.0.1:4242

or from Python: ``run_node(NodeConfig(...))``. A C-ECHO and C-STORE SCP (pynetdicom) on one AE
title and port, bound to 127.0.0.1 unless ``host`` says otherwise. A caller whose AE title is not
allowed is refused at association. Each instance is spooled to disk, fsync'ed, before its C-STORE
is acknowledged (:mod:`edgeseg.node.queue`); a series is complete once no instance of it came for
``quiet_seconds`` (MONAI Deploy's Informatics Gateway groups and times out the same way). The main
thread then runs :func:`edgeseg.infer.run.run_inference` on the series' spool folder, as
``edgeseg infer --format dicom-seg`` would, with the machine's tuned backend: series triage, QC and
the deterministic SEG/SR UIDs are infer's, so the node and a manual run agree. Every DICOM file
infer wrote for the series (the SEG and the SR) is then sent by C-STORE or STOW-RS
(:mod:`edgeseg.node.send`); a destination that fails is retried after ``retry_seconds``, then
twice as long after each further failure, up to 10 minutes.

The state folder is the queue: kill the node (SIGKILL included) and restart it on the same
folder, and it picks up where it was (see :mod:`edgeseg.node.queue` for what is redone and
why nothing is sent twice). SIGTERM and Ctrl-C stop it between two steps: a segmentation in
flight is abandoned (its outputs are atomic) and done on restart. With ``watch``, DICOM files
exported to a folder are taken in too (:mod:`edgeseg.node.watch`), and with ``stow_port``
DICOMweb STOW-RS requests (:mod:`edgeseg.node.stow`); without an allowed AE title the node then
does not listen for DICOM associations at all.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg.errors import EdgesegError, Interrupted, describe
from edgeseg.files import sha256_file
from edgeseg.node.config import NodeConfig
from edgeseg.node.queue import TO_SEGMENT, TO_SEND, NodeQueue, valid_uid
from edgeseg.node.send import SendError, send_cstore, send_stow
from edgeseg.node.stow import start_stow
from edgeseg.node.watch import watch_once

# Columns of infer's summary row that the audit log's "segmented" line repeats (with the volumes in mL).
FIGURES = ("qc", "coverage")

POLL_SECONDS = 0.2  # how often the main loop looks for quiet series and sends due
# A destination down for hours: the wait after each failed send doubles from retry_seconds up to
# this, so the audit log gets a line every 10 minutes per series rather than every 30 seconds.
MAX_RETRY_SECONDS = 600.0


def run_node(config: NodeConfig, say: Callable[[str], None] = print) -> None:
    """Serve until SIGTERM or Ctrl-C; see the module docstring.

    Raises:
        EdgesegError: a bad setting, a state folder in use or not writable, a port that cannot be bound.
        Interrupted: on SIGTERM/Ctrl-C (via :mod:`edgeseg.signals`), after the server stopped.
    """
    config.check()
    with NodeQueue(config.state, echo=say) as queue:
        server = _listen(config, queue) if config.allowed or config.allow_any else None
        stow = start_stow(config.host, config.stow_port, queue) if config.stow_port else None
        queue.audit("started", ae_title=config.ae_title, address=f"{config.host}:{config.port}", pid=os.getpid())
        said = [f"listening as {config.ae_title} on {config.host}:{config.port}; {_who(config)}"] if server else []
        said += [f"STOW-RS on http://{config.host}:{config.stow_port}/studies"] if stow else []
        said += [f"watching {config.watch}"] if config.watch else []
        say("; ".join([*said, _where(config)]))
        try:
            _serve(config, queue, say)
        except KeyboardInterrupt as exc:  # Stopped (SIGTERM/SIGINT) between steps
            code = getattr(exc, "code", 130)
            raise Interrupted("the node stopped; restart it on the same --state to go on", code) from None
        finally:
            for running in (server, stow):
                if running is not None:
                    running.shutdown()
            queue.audit("stopped", pid=os.getpid())


def _listen(config: NodeConfig, queue: NodeQueue) -> Any:
    """Start the SCP in its own threads; one line if the address cannot be bound."""
    ae = _application_entity(config)
    try:
        return ae.start_server((config.host, config.port), block=False, evt_handlers=_handlers(config, queue))
    except OSError as exc:
        raise EdgesegError(
            f"{config.host}:{config.port}: cannot listen there ({exc.strerror or exc}); is another node"
            " on that port? Choose another --port"
        ) from None


def _who(config: NodeConfig) -> str:
    return "any calling AE title accepted" if config.allow_any else f"accepting {', '.join(config.allowed)}"


def _where(config: NodeConfig) -> str:
    if config.destination:
        return f"results to {config.destination} by C-STORE"
    if config.stow_url:
        return f"results to {config.stow_url} by STOW-RS"
    return f"results kept in {config.state}/results (no --send-to)"


def _application_entity(config: NodeConfig) -> Any:
    """The SCP: Verification and every storage SOP class, in every transfer syntax pydicom knows."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=config.ae_title)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.require_called_aet = True  # a store meant for another AE title is refused, not kept
    ae.require_calling_aet = [] if config.allow_any else list(config.allowed)
    ae.maximum_pdu_size = 0  # no limit on what we receive
    return ae


def _handlers(config: NodeConfig, queue: NodeQueue) -> list:
    """pynetdicom event handlers: C-STORE spools, C-ECHO answers, a rejection is audited."""
    from pynetdicom import evt

    def on_store(event: Any) -> int:
        return _store(event, queue)

    def on_echo(event: Any) -> int:
        queue.audit("echo", calling_ae=event.assoc.requestor.ae_title, address=_address(event))
        return 0x0000

    def on_rejected(event: Any) -> None:
        queue.audit(
            "refused",
            calling_ae=event.assoc.requestor.ae_title,
            address=_address(event),
            reason=_refusal(config, event.assoc),
        )

    return [(evt.EVT_C_STORE, on_store), (evt.EVT_C_ECHO, on_echo), (evt.EVT_REJECTED, on_rejected)]


def _address(event: Any) -> str:
    return f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"


def _refusal(config: NodeConfig, assoc: Any) -> str:
    """Why the association was rejected, in the terms of the node's settings."""
    calling = assoc.requestor.ae_title
    called = str(getattr(assoc.requestor.primitive, "called_ae_title", "") or "").strip()
    if not config.allow_any and calling not in config.allowed:
        return f'calling AE title {calling!r} is not allowed; add it with --allow (or "allowed" in --config)'
    if called and called != config.ae_title:
        return f"called AE title {called!r} is not this node's ({config.ae_title})"
    return "too many associations at once"


def _store(event: Any, queue: NodeQueue) -> int:
    """Spool one instance; the status goes back to the sender only after it is on disk."""
    calling = event.assoc.requestor.ae_title
    sop = str(event.request.AffectedSOPInstanceUID or "")
    try:
        ds = event.dataset
        series, study = str(ds.get("SeriesInstanceUID", "")), str(ds.get("StudyInstanceUID", ""))
    except Exception as exc:  # a dataset pydicom cannot parse
        queue.audit("refused", calling_ae=calling, sop=sop, reason=f"cannot read the instance: {describe(exc)}")
        return 0xC210  # cannot understand
    if not valid_uid(series) or not valid_uid(sop):
        why = f"SeriesInstanceUID {series!r} or SOPInstanceUID {sop!r} is not a valid UID"
        queue.audit("refused", calling_ae=calling, sop=sop, reason=why)
        return 0xC211
    try:
        new = queue.spool(event.encoded_dataset(), series, sop, study, calling)
    except OSError as exc:  # the disk is full or the state folder went away: the sender keeps it
        queue.audit("refused", calling_ae=calling, series=series, sop=sop, reason=f"cannot spool it: {exc}")
        return 0xA700  # out of resources
    fields = {"series": series, "sop": sop, "study": study, "calling_ae": calling}
    queue.audit("received", **fields, **({} if new else {"duplicate": True}))
    return 0x0000


def _serve(config: NodeConfig, queue: NodeQueue, say: Callable[[str], None]) -> None:
    """The main loop: complete quiet series, segment complete ones, send segmented ones."""
    sending = config.destination is not None or config.stow_url is not None
    while True:
        if config.watch:
            watch_once(config.watch, queue)
        for state in queue.complete_quiet(config.quiet_seconds):
            count = len(list((queue.spool_dir / state.uid).glob("*.dcm")))
            queue.audit("completed", series=state.uid, study=state.study, instances=count)
        work = queue.pending(TO_SEGMENT)
        if work:
            _segment(config, queue, *work[0])
            continue
        due = [(u, g) for u, g in queue.pending(TO_SEND) if queue.get(u).retry_at <= time.time()]
        if sending and due:
            _send(config, queue, *due[0])
            continue
        time.sleep(POLL_SECONDS)


def _segment(config: NodeConfig, queue: NodeQueue, uid: str, generation: int) -> None:
    """Triage and segment one complete series with `edgeseg infer`'s own functions."""
    from edgeseg.infer.run import InferConfig, run_inference
    from edgeseg.io.scan_files import discover_scans

    folder, out = queue.spool_dir / uid, queue.results_for(uid, generation)
    scans, problems, _, set_aside = discover_scans([folder], out)
    if not scans:
        state = "failed" if problems else "skipped"
        _finish(queue, uid, generation, state, _reasons(problems + set_aside))
        return
    infer = InferConfig(
        model=config.model,
        out=out,
        backend=config.backend,
        format="dicom-seg",
        quiet=True,
        seg_flagged=config.seg_flagged,
    )
    try:
        report = run_inference([folder], infer)
    except Interrupted as exc:  # SIGTERM/Ctrl-C inside the scan loop: done again on restart
        raise Interrupted(f"the node stopped while segmenting series {uid}; restart it to go on", exc.code) from None
    except EdgesegError as exc:
        _finish(queue, uid, generation, "failed", str(exc))
        return
    if report.failed:
        failed = [r for r in report.rows if r.get("status") == "failed"]
        _finish(queue, uid, generation, "failed", "; ".join(str(r.get("message", "")) for r in failed))
        return
    outputs = sorted(p for p in out.rglob("*.dcm") if not p.name.startswith("."))
    flags = "; ".join(reason for _, reason in report.flagged)
    if flags and not outputs:
        _finish(queue, uid, generation, "flagged", flags)
        return
    if not outputs:
        _finish(queue, uid, generation, "skipped", "edgeseg infer wrote no DICOM for it")
        return
    listed = [_output(queue.root, path) for path in outputs]
    if queue.advance(uid, generation, "segmented", outputs=listed, reason=flags):
        figures = {k: v for row in report.rows for k, v in row.items() if k in FIGURES or k.endswith("_ml")}
        figures = {k: v for k, v in figures.items() if k not in ("voxel_ml", "background_ml")}
        queue.audit("segmented", series=uid, outputs=[o["path"] for o in listed], **figures)
        if flags:
            queue.audit("flagged", series=uid, reason=flags, sent_anyway=True)


def _reasons(pairs: list[tuple[Path, str]]) -> str:
    """The distinct reasons of (path, reason) pairs, in order, as one line."""
    return "; ".join(dict.fromkeys(reason for _, reason in pairs)) or "no image to segment"


def _finish(queue: NodeQueue, uid: str, generation: int, state: str, reason: str) -> None:
    """End a series with nothing to send (skipped, flagged, failed), if it did not grow meanwhile."""
    if queue.advance(uid, generation, state, outputs=[], reason=reason):
        queue.audit(state, series=uid, reason=reason)


def _output(root: Path, path: Path) -> dict[str, str]:
    """What the queue keeps of one output: its path under the state folder, SOP Instance UID and hash."""
    import pydicom

    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return {"path": str(path.relative_to(root)), "sop": sop, "sha256": sha256_file(path)}


def _send(config: NodeConfig, queue: NodeQueue, uid: str, generation: int) -> None:
    """Send the outputs of one series not sent yet; on failure, retry later (doubling the wait)."""
    state = queue.get(uid)
    todo = [o for o in state.outputs if o["sha256"] not in state.sent]
    by_path = {str(queue.root / o["path"]): o for o in todo}
    target = str(config.destination or config.stow_url)

    def sent(path: Path) -> None:
        output = by_path[str(path)]
        queue.mark_sent(uid, generation, output["sha256"])
        queue.audit("sent", series=uid, sop=output["sop"], file=output["path"], to=target)

    try:
        files = [Path(p) for p in by_path]
        if config.destination:
            send_cstore(files, config.destination, config.ae_title, sent)
        else:
            send_stow(files, str(config.stow_url), sent)
    except (SendError, OSError) as exc:
        reason = str(exc) if isinstance(exc, SendError) else f"cannot read an output: {describe(exc)}"
        wait = min(config.retry_seconds * 2**state.failures, max(MAX_RETRY_SECONDS, config.retry_seconds))
        queue.advance(uid, generation, TO_SEND, reason=reason, retry_at=time.time() + wait, failures=state.failures + 1)
        queue.audit("send failed", series=uid, to=target, reason=reason, retry_in_s=round(wait, 1))
        return
    queue.advance(uid, generation, "sent", reason="", retry_at=0.0, failures=0)
