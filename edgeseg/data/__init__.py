"""What training reads: the MNI152 demo set, the dataset reader of the tutorial layout, the 3-D template volume
and its leakage-free split, the training patches and the synthetic heads. May import the top level of edgeseg
only (torch and nilearn lazily, where a tensor or the template is needed).
"""

from __future__ import annotations

from edgeseg._moved import forwarder

# `edgeseg.data` was a module until issue 26 (now `edgeseg.data.dataset`): its public names, for one release,
# each from the module that holds it now.
_MOVED_NAMES = {
    "EdgesegError": "edgeseg.errors",
    "LAYOUT": "edgeseg.data.dataset",
    "MAX_LISTED": "edgeseg.data.dataset",
    "SlicePair": "edgeseg.data.dataset",
    "Slices": "edgeseg.data.dataset",
    "find_pairs": "edgeseg.data.dataset",
    "load_slices": "edgeseg.data.dataset",
    "one_hot": "edgeseg.data.dataset",
}

__getattr__ = forwarder(__name__, _MOVED_NAMES)
