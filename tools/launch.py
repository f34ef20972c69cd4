"""segkd's launcher: torchrun, every argument passed through, with what a run that survives faults needs.

    python -m tools.launch --standalone --nproc-per-node 8 --max-restarts 3 \\
        train.py --config config/voc2012/pspnet18_kd.yaml train.resume=auto
    python -m tools.launch --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --rdzv-id JOB train.py --config config/voc2012/pspnet50_teacher.yaml train.resume=auto   # on every node

What it adds to ``torchrun`` (docs/RELIABILITY.md, "Several processes and nodes"):

- every restart round of ``--max-restarts`` gets a store of its own (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``):
  torch 2.14's torchrun otherwise hands the workers of every round its one rendezvous store, where a restarted
  worker can read a dead worker's address (gloo ``connectFullMesh``: "Connection refused");
- a rendezvous that does not complete (a node that never starts, a wrong endpoint) ends after ``join_timeout``
  with one line naming the endpoint and the timeout, exit status 2, instead of torchrun's traceback;
- failed workers end it with one line naming their ranks and exit statuses, and the first one's status;
- ``--max-restarts`` above 0 with ``train.py`` needs ``train.resume=auto`` from the first launch on (a restarted
  group resumes ``output.dir/model/last.pth``; without it the run folder is refused as already holding a run).

The workers stop when this process is gone (engine/preemption.py: ``stop_with_launcher``), and rank 0 locks the
run folder (engine/rundir.py: ``RunLock``).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

DEFAULT_JOIN_TIMEOUT = 600  # torch's dynamic rendezvous (RendezvousTimeout's join default)


def rdzv_conf(text: str) -> dict[str, str]:
    """``--rdzv-conf join_timeout=30,read_timeout=60`` as a dict."""
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def refusal(args) -> Optional[str]:
    """Why these torchrun arguments are refused (one line), or None."""
    script = os.path.basename(args.training_script)
    if args.max_restarts > 0 and script == "train.py" and "train.resume=auto" not in args.training_script_args:
        return (f"--max-restarts {args.max_restarts}: a restarted train.py must resume its run - add "
                "train.resume=auto from the first launch on (a restarted group otherwise finds its own run in "
                "output.dir and is refused)")
    return None


def rendezvous_line(args, error: Exception) -> str:
    """The one line for a rendezvous that failed: the endpoint, the timeout and torch's reason."""
    from torch.distributed.elastic.rendezvous import RendezvousTimeoutError

    endpoint = args.rdzv_endpoint or f"{args.master_addr}:{args.master_port}"
    timeout = rdzv_conf(args.rdzv_conf).get("join_timeout", DEFAULT_JOIN_TIMEOUT)
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, RendezvousTimeoutError):
        return (f"rendezvous at {endpoint} (--rdzv-id {args.rdzv_id}) did not complete within join_timeout="
                f"{timeout} s: not all of --nnodes {args.nnodes} node(s) joined; start the same command on every node "
                "with the same --rdzv-endpoint and --rdzv-id, or raise --rdzv-conf join_timeout=SECONDS")
    return f"rendezvous at {endpoint} (--rdzv-id {args.rdzv_id}, join_timeout={timeout} s) failed: {reason}"


def failures_line(error) -> tuple[str, int]:
    """One line for torchrun's ChildFailedError, and the exit status: the first failed rank's (128 + signal for a
    worker killed by one). A worker that exited on its own comes before one killed by a signal (torchrun SIGTERMs
    the others after the first failure, within the same second of its timestamps)."""
    parts, status = [], 1
    order = sorted(error.failures.items(), key=lambda item: (item[1].exitcode < 0, item[1].timestamp, item[0]))
    for rank, failure in order:
        code = failure.exitcode
        status_r = 128 - code if code < 0 else code
        killed = code < 0 and -code in signal.valid_signals()
        what = f"signal {signal.Signals(-code).name}" if killed else f"exit {code}"
        parts.append(f"rank {rank} ({what})")
        if len(parts) == 1:
            status = status_r if 0 < status_r < 256 else 1
    return (f"{len(parts)} worker(s) failed: {', '.join(parts[:8])}{', ...' if len(parts) > 8 else ''}; "
            "their own errors are above"), status


def main(argv: Optional[list[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    problem = refusal(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 2
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")  # a store per restart round (docstring)
    try:
        run(args)
    except RendezvousError as e:
        print(f"error: {rendezvous_line(args, e)}", file=sys.stderr, flush=True)
        return 2
    except ChildFailedError as e:
        line, status = failures_line(e)
        print(f"error: {line}", file=sys.stderr, flush=True)
        return status
    except SignalException as e:
        print(f"error: launcher stopped by {e.sigval.name}; its workers were sent it too (they write last.pth and "
              "exit; resume with the same command)", file=sys.stderr, flush=True)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
