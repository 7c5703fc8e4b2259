"""torchrun, with exit codes a pipeline can act on: `python -m pipeline.launch` takes torchrun's own arguments.

    python -m pipeline.launch --nproc-per-node gpu entrypoint.py run --config configs/...yaml       # one node
    python -m pipeline.launch --nnodes 2 --nproc-per-node gpu --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id JOB entrypoint.py run --config ...                       # each node

torchrun itself exits 1 with a traceback when it is stopped by a signal (torch elastic's SignalException) or when a
worker fails, whatever the worker's exit code was; 1 is this job's "regression found" code, and a Kubernetes
podFailurePolicy cannot tell a preemption or a bad config from it. Here the same launcher (torch's own parser and
elastic agent, called in-process) exits with:
- 143/130 when SIGTERM/SIGINT stopped it: the agent forwarded the signal, every worker saved at its safe point
  (pipeline/callbacks.py stops all ranks at the same step), and the rerun resumes;
- the failed worker's own exit code (2 bad config or data, 3 resources, 4 internal error, 143/130), the first
  failure by time; a worker killed by a signal gives 128 + its number;
- 4 for a failure of the launcher itself, never 1.
Each case prints one line on stderr, not a traceback.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as exc:
        print(f"launch: stopped by {signal.Signals(exc.sigval).name}; the workers saved what they had finished: "
              "rerun the same command to resume", file=sys.stderr, flush=True)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        code = 4 if code == 1 else code  # a worker never means "regression"; 1 there is an unhandled crash
        print(f"launch: worker rank {rank} (pid {failure.pid}) exited with {failure.exitcode}; its log: "
              f"job.rank{rank}.log in the output dir (job.log for rank 0)", file=sys.stderr, flush=True)
        return code
    except Exception as exc:  # noqa: BLE001 - the launcher's own failure (rendezvous timeout, bad arguments)
        print(f"launch: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr, flush=True)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
