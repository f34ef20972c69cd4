"""The one ``main()`` of the entry points: parse ``--config FILE key=value ...``, set up the processes, run,
and turn a :class:`SegKDError` into one line on stderr (``error: [rank r] ...``) and exit status 2.

    def main(argv=None) -> int:
        return run_command(run, argv, "Train a PSPNet (supervised or distilled).")
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

from engine.preemption import stop_with_launcher
from util.config import Config, parse_cli
from util.distributed import DistInfo, cleanup, init_distributed
from util.errors import SegKDError


def run_command(run: Callable[[Config, DistInfo], int], argv: Optional[list[str]], description: str) -> int:
    """``run(cfg, info)``'s exit status, 2 on bad input (one line, no traceback); process group cleaned up."""
    info = None
    stop_with_launcher()  # under torchrun: stop when the launcher is gone
    try:
        cfg, _ = parse_cli(sys.argv[1:] if argv is None else argv, description)
        info = init_distributed(cfg.train.device)
        return run(cfg, info)
    except SegKDError as e:
        rank = f"[rank {info.rank}] " if info is not None and info.distributed else ""
        print(f"error: {rank}{e}", file=sys.stderr, flush=True)
        return 2
    finally:
        cleanup()
