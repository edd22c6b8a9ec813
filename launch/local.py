"""Train on this machine with N processes: ``python -m launch.local --config FILE --nproc N [key=value ...]``.

The same config and the same per-process entry (``launch.worker``) as ``python -m launch.slurm``,
for users without Slurm: torchrun with a standalone rendezvous and N processes (ZeRO + TP engine;
gloo on CPU, nccl on GPUs). The resolved config is saved as ``<run_dir>/launch/config.yaml`` and
training resumes from ``<run_dir>/checkpoints/latest`` when it exists.

Stopping: SIGUSR1, SIGTERM or Ctrl-C make every process checkpoint at its next step boundary and
exit (a second Ctrl-C kills them). The launcher then exits 75, and running the same command again
resumes. One JSON object goes to stdout (run directory, stop reason, results); logs to stderr.

Exit codes: 0 finished; 75 stopped on a signal after checkpointing; 2 bad config; 3 diverged
(too many non-finite steps in a row; ``stop_reason`` ``diverged``); otherwise the failure code of
torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from launch.common import (
    EXIT_REQUEUE,
    fail,
    job_environment,
    launched_config_path,
    load_run_config,
    read_json,
    read_stop_reason,
    save_run_config,
    worker_command,
    world_size,
)
from pretrain.config import ConfigError
from pretrain.runtime import processes


def torchrun_command(nproc: int, config_path: str, python: str = sys.executable) -> List[str]:
    """torchrun on this machine: standalone rendezvous, ``nproc`` processes of ``launch.worker``.

    torchrun does not handle SIGINT here (``--signals-to-handle`` leaves it out), so Ctrl-C reaches
    the launcher, which turns it into a checkpoint-and-stop instead of a kill.
    """
    worker = worker_command(python, nproc, config_path)  # [python, "-m", module, args...]
    return processes.torchrun_command(nproc, worker[2], worker[3:], python, extra=[
        "--max-restarts=0", "--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT"])


def _ignore_stop_signals() -> None:  # runs in the child before exec: inherited by torchrun
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopForwarder:
    """Turns SIGUSR1 / SIGTERM / Ctrl-C into SIGUSR1 for the training processes (torchrun's
    children); a second Ctrl-C kills torchrun and its process groups."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.interrupts = 0
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)

    def workers(self) -> List[Any]:
        import psutil

        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                print("second interrupt: killing the training processes", file=sys.stderr)
                for child in self.workers():
                    _kill_group(child.pid)
                self.proc.kill()
                return
        name = signal.Signals(signum).name
        print(f"[launch.local] {name}: asking the training processes to checkpoint and stop "
              "(Ctrl-C again to kill them)", file=sys.stderr, flush=True)
        for child in self.workers():
            try:
                child.send_signal(signal.SIGUSR1)
            except Exception:  # it may have exited meanwhile
                pass


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # torchrun starts every worker in its own session
    except OSError:
        pass


def run(nproc: int, config: Optional[str], overrides: List[str], dry_run: bool = False) -> Dict[str, Any]:
    cfg = load_run_config(config, overrides)
    world_size(cfg, 1, nproc)
    path = launched_config_path(cfg.run_dir)
    cmd = torchrun_command(nproc, str(path))
    if dry_run:
        return {"run_dir": cfg.run_dir, "command": cmd, "config": str(path)}
    save_run_config(cfg)
    stop_file = Path(cfg.run_dir) / processes.STOP_REASON
    stop_file.unlink(missing_ok=True)  # this run writes it afresh
    print(f"[launch.local] {nproc} process(es), run {cfg.run_dir}", file=sys.stderr, flush=True)
    # Training output (including rank 0's result line) goes to stderr: stdout is this command's JSON.
    proc = subprocess.Popen(cmd, env=job_environment(), stdout=sys.stderr,
                            preexec_fn=_ignore_stop_signals)
    StopForwarder(proc)
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
    reason = read_stop_reason(cfg.run_dir)
    return {"run_dir": cfg.run_dir, "nproc": nproc, "stop_reason": reason,
            "torchrun_exit_code": code, "config": str(path),
            "results": (read_json(Path(cfg.run_dir) / "results.json")
                        if reason and reason != processes.DIVERGED else None)}


def exit_code(result: Dict[str, Any]) -> int:
    reason = result.get("stop_reason")
    if reason in ("max_steps", "max_minutes"):
        return 0
    if reason == "signal":
        return EXIT_REQUEUE
    if reason == processes.DIVERGED:
        return processes.EXIT_ABORT
    return result.get("torchrun_exit_code") or 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.local", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m launch.local --config configs/debug.yaml --nproc 2 run_dir=runs/dbg2\n"
               "  python -m launch.local --config configs/debug.yaml --nproc 4 "
               "parallel.tensor_parallel=2\n\n"
               "exit codes: 0 finished; 75 stopped on a signal (checkpointed: run it again to "
               "resume); 2 bad config",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: configs/quickstart.yaml)")
    parser.add_argument("--nproc", type=int, required=True, help="training processes (one per GPU)")
    parser.add_argument("--dry-run", action="store_true", help="print the command as JSON; run nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.nproc < 1:
        return fail(f"--nproc must be positive, got {args.nproc}")
    try:
        result = run(args.nproc, args.config, args.overrides, args.dry_run)
    except ConfigError as err:
        return fail(str(err))
    print(json.dumps(result))
    if args.dry_run:
        return 0
    code = exit_code(result)
    if code not in (0, EXIT_REQUEUE):
        print(f"error: training failed (torchrun exit {result['torchrun_exit_code']}) without a "
              f"stop reason; see the log above", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
