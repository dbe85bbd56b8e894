"""The DICOM node of `edgeseg listen`, torch-free: its settings, the durable queue, C-STORE/STOW-RS sending, the
watcher and the server that runs infer on each complete series. May import the top level, io, runtime and
infer.
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.node` was a module until issue 26 (now `edgeseg.node.server`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "EdgesegError": "edgeseg.errors",
    "FIGURES": "edgeseg.node.server",
    "Interrupted": "edgeseg.errors",
    "MAX_RETRY_SECONDS": "edgeseg.node.server",
    "NodeConfig": "edgeseg.node.config",
    "NodeQueue": "edgeseg.node.queue",
    "POLL_SECONDS": "edgeseg.node.server",
    "SendError": "edgeseg.node.send",
    "TO_SEGMENT": "edgeseg.node.queue",
    "TO_SEND": "edgeseg.node.queue",
    "describe": "edgeseg.errors",
    "run_node": "edgeseg.node.server",
    "send_cstore": "edgeseg.node.send",
    "send_stow": "edgeseg.node.send",
    "sha256_file": "edgeseg.files",
    "start_stow": "edgeseg.node.stow",
    "valid_uid": "edgeseg.node.queue",
    "watch_once": "edgeseg.node.watch",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
