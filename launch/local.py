"""Train on this machine with N processes: ``python -m launch.local --config FILE --nproc N [key=value ...]``.

The same config and the same per-process entry (``launch.worker``) as ``python -m launch.slurm``,
for users without Slurm: torchrun with a standalone rendezvous and N processes (ZeRO + TP engine;
gloo on CPU, nccl on GPUs). The resolved config is saved as ``<run_dir>/launch/config.yaml`` and
training resumes from ``<run_dir>/checkpoints/latest`` when it exists.

Stopping: SIGUSR1, SIGTERM or Ctrl-C make every process checkpoint at its next step boundary and
exit (a second Ctrl-C kills them). The launcher then exits 75, and running the same command again
resumes. One JSON object goes to stdout (run directory, stop reason, results); logs to stderr.

Exit codes: 0 finished; 75 stopped on a signal after checkpointing; 2 bad config, an unwritable
run directory or a checkpoint written by another number of processes; 3 diverged (too many
non-finite steps in a row; ``stop_reason`` ``diverged``); 130 killed by a second Ctrl-C;
otherwise the failure code of torchrun.
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
    check_resume_layout,
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


def catches(pid: int, signum: int) -> bool:
    """Has process ``pid`` installed a handler for ``signum`` (``SigCgt`` in /proc/PID/status)?
    Workers start with SIGUSR1 ignored (inherited from torchrun) until ``launch.worker`` runs."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(line.split()[1] for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration, IndexError):
        return False
    return bool((int(mask, 16) >> (signum - 1)) & 1)


class StopForwarder:
    """Turns SIGUSR1 / SIGTERM / Ctrl-C into SIGUSR1 for the training processes (torchrun's
    children); a second Ctrl-C kills torchrun and its process groups.

    A stop asked for while the workers are still starting (torchrun up, workers not yet, or
    not yet catching SIGUSR1) stays pending, and :meth:`poll` delivers it once all ``nproc``
    of them catch it: sent earlier, it would be ignored and training would run on."""

    def __init__(self, proc: subprocess.Popen, nproc: int) -> None:
        self.proc = proc
        self.nproc = nproc
        self.interrupts = 0
        self.pending = False
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
        self.pending = True
        self.poll()

    def poll(self) -> None:
        """Deliver a pending stop once every training process catches SIGUSR1."""
        if not self.pending:
            return
        children = self.workers()
        if len(children) < self.nproc or not all(catches(c.pid, signal.SIGUSR1) for c in children):
            return
        self.pending = False
        for child in children:
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
    check_resume_layout(cfg, nproc)
    path = launched_config_path(cfg.run_dir)
    cmd = torchrun_command(nproc, str(path))
    if dry_run:
        return {"run_dir": cfg.run_dir, "command": cmd, "config": str(path)}
    try:
        save_run_config(cfg)
        (Path(cfg.run_dir) / processes.STOP_REASON).unlink(missing_ok=True)  # written afresh
    except OSError as err:
        raise ConfigError(f"run_dir: cannot write {cfg.run_dir}: {err.strerror or err}") from None
    print(f"[launch.local] {nproc} process(es), run {cfg.run_dir}", file=sys.stderr, flush=True)
    # Training output (including rank 0's result line) goes to stderr: stdout is this command's JSON.
    proc = subprocess.Popen(cmd, env=job_environment(), stdout=sys.stderr,
                            preexec_fn=_ignore_stop_signals)
    stopper = StopForwarder(proc, nproc)
    while True:
        try:
            code = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            stopper.poll()
    reason = read_stop_reason(cfg.run_dir)
    return {"run_dir": cfg.run_dir, "nproc": nproc, "stop_reason": reason,
            "torchrun_exit_code": code, "config": str(path), "killed": stopper.interrupts > 1,
            "results": (read_json(Path(cfg.run_dir) / "results.json")
                        if reason and reason != processes.DIVERGED else None)}


def exit_code(result: Dict[str, Any]) -> int:
    if result.get("killed"):
        return 130  # the second Ctrl-C: as a shell reports an interrupted command
    reason = result.get("stop_reason")
    if reason in ("max_steps", "max_minutes"):
        return 0
    if reason == "signal":
        return EXIT_REQUEUE
    if reason == processes.DIVERGED:
        return processes.EXIT_ABORT
    code = result.get("torchrun_exit_code") or 1
    return code if code > 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.local", description=__doc__.split("\n\n")[0],
        epilog="examples:\n"
               "  python -m launch.local --config configs/debug.yaml --nproc 2 run_dir=runs/dbg2\n"
               "  python -m launch.local --config configs/debug.yaml --nproc 4 "
               "parallel.tensor_parallel=2\n\n"
               "exit codes: 0 finished; 75 stopped on a signal (checkpointed: run it again to "
               "resume); 2 bad config (or a checkpoint of another layout); 3 diverged; 130 "
               "killed by a second Ctrl-C; otherwise torchrun's exit code",
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
