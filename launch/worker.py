"""Entry point of every training process a launcher starts under torchrun.

    python -m launch.worker --expect-world-size N [--allow-loopback-master] -- --config FILE

Before training it prints one line saying which rank of which world runs where (so a job log
shows every node joining one world), and it refuses two silent multi-node failures:

* the world is not the size the launcher asked for (e.g. every node formed its own world);
* on a node other than node rank 0 (whose address torchrun hands out as the master address),
  that address resolves to a loopback address, so this node's processes would talk to
  themselves and hang.

A SIGUSR1 that arrives before training has installed its handler is kept and delivered again
once it has (see :func:`keep_early_stop_signal`). Then it runs ``pretrain.train`` with the
arguments after ``--`` and exits with its code, except that a stop on a signal (75:
checkpointed, requeue me) exits 0: torchrun would report it as a failed worker with a
traceback, and launchers read ``<run_dir>/stop_reason`` instead.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, List, Optional

from launch.common import EXIT_REQUEUE


def is_loopback(host: str) -> bool:
    """True when ``host`` (a name or an address) resolves to a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # unresolvable: torch reports that itself, with the name in the message
    addresses = {info[4][0].split("%", 1)[0] for info in infos}
    return any(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_world(env: dict, expect_world_size: int, allow_loopback_master: bool) -> Optional[str]:
    """The reason this process must not train, or None. Reads torchrun's environment."""
    world = int(env.get("WORLD_SIZE", "1"))
    if expect_world_size and world != expect_world_size:
        return (f"this process is in a world of size {world}, the launcher expected "
                f"{expect_world_size}: the nodes did not join one rendezvous")
    nodes = int(env.get("GROUP_WORLD_SIZE", "1"))
    node_rank = int(env.get("GROUP_RANK", "0"))
    master = env.get("MASTER_ADDR", "")
    if nodes > 1 and node_rank != 0 and master and is_loopback(master) and not allow_loopback_master:
        return (f"node rank {node_rank} of {nodes} was given the master address {master!r}, which "
                "resolves to a loopback address here: the rendezvous host's name resolution "
                "is broken (its fully qualified name maps to 127.x); fix /etc/hosts or DNS")
    return None


def keep_early_stop_signal(poll_seconds: float = 0.5) -> threading.Event:
    """Do not lose a SIGUSR1 that arrives before training has installed its handler.

    Workers start with SIGUSR1 ignored (torchrun ignores it), so a warning signal during start-up
    (imports, data, model and process-group set-up: minutes on a large job) would vanish and the
    job would run into its time limit without a checkpoint. Until training replaces this
    handler, a SIGUSR1 is only remembered; once it has, the signal is sent again. Returns the
    event that is set when one arrived early.
    """
    received = threading.Event()

    def remember(signum: int, frame: Any) -> None:
        received.set()

    signal.signal(signal.SIGUSR1, remember)

    def redeliver() -> None:
        while signal.getsignal(signal.SIGUSR1) is remember:
            time.sleep(poll_seconds)
        if received.is_set():
            print("[launch] SIGUSR1 arrived before training had started; delivering it again",
                  file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=redeliver, name="launch-early-sigusr1", daemon=True).start()
    return received


def describe(env: dict) -> str:
    node = env.get("SLURMD_NODENAME") or socket.gethostname()
    return (f"rank {env.get('RANK', '0')} of {env.get('WORLD_SIZE', '1')} on {node} "
            f"(node rank {env.get('GROUP_RANK', '0')} of {env.get('GROUP_WORLD_SIZE', '1')}, "
            f"local rank {env.get('LOCAL_RANK', '0')} of {env.get('LOCAL_WORLD_SIZE', '1')}; "
            f"master {env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')})")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_args = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m launch.worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect-world-size", type=int, default=0,
                        help="fail unless WORLD_SIZE equals this (0: no check)")
    parser.add_argument("--allow-loopback-master", action="store_true",
                        help="single-host test clusters only: accept a loopback master address")
    args = parser.parse_args(argv)
    keep_early_stop_signal()
    env = dict(os.environ)
    print(f"[launch] {describe(env)}", file=sys.stderr, flush=True)
    problem = check_world(env, args.expect_world_size, args.allow_loopback_master)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        return 1
    from pretrain.train import main as train_main

    code = train_main(train_args)
    if code == EXIT_REQUEUE:
        # Checkpointed on a stop signal. Exit 0 so that torchrun ends quietly instead of
        # reporting a failed worker; launchers decide from <run_dir>/stop_reason ("signal").
        print("[launch] checkpointed on a stop signal; exiting 0 (stop_reason: signal)",
              file=sys.stderr, flush=True)
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
