"""A real gloo peer loss, for tests/train/test_distributed.py (not collected by pytest).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_peer_lost.py OUT

Rank 1 joins, takes one all-reduce and kills itself with SIGKILL. Rank 0 ignores torchrun's
SIGTERM (so that it is not stopped before it notices), then runs an all-reduce inside
``distributed.one_voice`` and writes what came out of it to ``OUT/rank0.json``: the exit
status it asked for, or the one-line message of its EdgesegError.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from edgeseg import EdgesegError
from edgeseg.train import distributed


def main(out: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with distributed.joined(torch.device("cpu")) as (world, _):
        total = torch.ones(3)
        dist.all_reduce(total)
        if world.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(1.0)  # rank 1 is gone by now
        try:
            with distributed.one_voice(world):
                dist.all_reduce(total)
            outcome = {"finished": True}
        except SystemExit as exc:
            outcome = {"exit": exc.code}
        except EdgesegError as exc:
            outcome = {"error": str(exc)}
        (out / "rank0.json").write_text(json.dumps(outcome))
        os._exit(0)  # the group cannot be destroyed cleanly without its peer


if __name__ == "__main__":
    main(Path(sys.argv[1]))
