"""Sending a series' results from `edgeseg listen`: C-STORE (pynetdicom) or STOW-RS (dicomweb-client).

Torch-free. One association per series: its presentation contexts are built from the files
themselves (each SOP class, e.g. Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4 and the SR's
class, with the file's own transfer syntax and both little-endian ones), so whatever
`edgeseg infer` writes is offered as it is. ``on_sent`` runs after each instance the
destination accepted and before the next is sent, so the queue records it at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edgeseg.errors import EdgesegError, describe
from edgeseg.node.config import Destination

# C-STORE statuses that mean stored: success, and the warnings "coerced", "elements discarded",
# "does not match SOP class" (PS3.4 B.2.3).
STORED = {0x0000, 0xB000, 0xB007, 0xB006}


class SendError(EdgesegError):
    """The destination could not be reached or refused an instance: retried later."""


def send_cstore(
    files: Sequence[Path], destination: Destination, ae_title: str, on_sent: Callable[[Path], None]
) -> None:
    """C-STORE ``files`` to ``destination`` in one association, calling ``on_sent`` after each.

    Raises:
        SendError: no association (refused, unreachable), or an instance not stored, with the status.
    """
    import pydicom
    from pynetdicom import AE

    datasets = [(path, pydicom.dcmread(path)) for path in files]
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts: dict[str, list[str]] = {}
    for _, ds in datasets:
        syntaxes = contexts.setdefault(str(ds.SOPClassUID), ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        own = str(ds.file_meta.TransferSyntaxUID)
        if own not in syntaxes:
            syntaxes.insert(0, own)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached or aborted"
        raise SendError(f"{destination} {why}; check its AE title, port and that it knows {ae_title}")
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for path, ds in datasets:
            if str(ds.SOPClassUID) not in accepted:  # pynetdicom would raise ValueError
                raise SendError(
                    f"{destination} does not accept SOP class {ds.SOPClassUID} ({path.name});"
                    " enable that storage class (e.g. Segmentation Storage, SR) there"
                )
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise SendError(f"{destination}: no response to the C-STORE of {path.name} (timeout or abort)")
            if code not in STORED:
                raise SendError(
                    f"{destination} refused {path.name} with status 0x{code:04X}"
                    f"{' (SOP class not accepted: enable SEG/SR storage there)' if code == 0x0122 else ''}"
                )
            on_sent(path)
    finally:
        if assoc.is_established:
            assoc.release()


def send_stow(files: Sequence[Path], url: str, on_sent: Callable[[Path], None]) -> None:
    """STOW-RS ``files`` to the DICOMweb service at ``url``, one request per instance."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url)
    for path in files:
        try:
            client.store_instances([pydicom.dcmread(path)])
        except Exception as exc:  # requests' and dicomweb-client's errors: retried later
            raise SendError(f"STOW-RS to {url} failed for {path.name}: {describe(exc, typed=True)}") from exc
        on_sent(path)
