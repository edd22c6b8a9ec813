#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, for the launcher tests and for trying sbatch
# scripts without a cluster: munged, slurmctld and two slurmd ("node1", "node2", both on
# 127.0.0.1 with their own ports), all with private sockets, ports, state and logs under one
# directory. Needs root (the daemons run as root; /etc/hosts gets the node names).
#
#   bash scripts/slurm_cluster.sh start [DIR]    install slurm-wlm + munge if missing, start, wait
#                                                until sinfo shows both nodes idle; prints the
#                                                SLURM_CONF line to export
#   bash scripts/slurm_cluster.sh status [DIR]   daemons and sinfo
#   bash scripts/slurm_cluster.sh env [DIR]      "export SLURM_CONF=..." (eval it to use the cluster)
#   bash scripts/slurm_cluster.sh stop [DIR]     cancel every job, stop all four daemons by pid,
#                                                drop the /etc/hosts entry unless another cluster
#                                                started by this script still runs
#
# DIR defaults to $SLURM_CLUSTER_DIR or /tmp/megabyte-slurm (keep it short: munge's socket
# path must fit in 108 bytes). `start` on a DIR whose daemons run already is a no-op; a failed
# `start` stops whatever it started before exiting non-zero. Slurm 22.05 (Debian 12) assumed.
set -Eeuo pipefail

ACTION="${1:-}"
DIR="${2:-${SLURM_CLUSTER_DIR:-/tmp/megabyte-slurm}}"
NODES=(node1 node2)
HOSTS_MARK="# megabyte-slurm-cluster"
START_TIMEOUT="${SLURM_CLUSTER_START_TIMEOUT:-60}"  # seconds for both nodes to become idle

say() { echo "[slurm-cluster] $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
pid_of() { [[ -s "$1" ]] && tr -dc '0-9' < "$1" || true; }

# Every daemon's pid file, in start order.
pid_files() {
  echo "$DIR/run/munged.pid"
  echo "$DIR/run/slurmctld.pid"
  local n
  for n in "${NODES[@]}"; do echo "$DIR/run/slurmd-$n.pid"; done
}

install_if_missing() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed and this is not root"
  say "installing slurm-wlm and munge with apt-get"
  local t0=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >"$DIR/apt.log" 2>&1; then
    apt-get update -q >>"$DIR/apt.log" 2>&1 || true
    apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$DIR/apt.log" 2>&1 \
      || { tail -n 20 "$DIR/apt.log" >&2; die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)"; }
  fi
  say "installed in $((SECONDS - t0)) s"
}

# Three free TCP ports (slurmctld, slurmd node1, slurmd node2), asked from the kernel.
free_ports() {
  "$(command -v python3 || command -v python)" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# The rendezvous needs node1/node2 to resolve; both are this host. Clusters in other
# directories may share the line, so each running cluster registers itself and the last one to
# stop removes it (only a line carrying our mark; an entry someone else wrote stays).
REGISTRY=/tmp/megabyte-slurm-clusters
registry_entry() { echo "$REGISTRY/$(printf '%s' "$DIR" | md5sum | cut -c1-16)"; }

ensure_hosts() {
  local missing=0 n
  mkdir -p "$REGISTRY"
  printf '%s\n' "$DIR" > "$(registry_entry)"
  for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null || missing=1; done
  (( missing )) || return 0
  printf '127.0.0.1 %s %s\n' "${NODES[*]}" "$HOSTS_MARK" >> /etc/hosts
  say "added '127.0.0.1 ${NODES[*]}' to /etc/hosts"
}

undo_hosts() {
  local entry other
  rm -f "$(registry_entry)"
  for entry in "$REGISTRY"/*; do
    [[ -f $entry ]] || continue
    other="$(cat "$entry")"
    if pid_alive "$(pid_of "$other/run/slurmctld.pid")"; then return 0; fi  # still in use
    rm -f "$entry"  # a cluster that died without `stop`
  done
  grep -qF "$HOSTS_MARK" /etc/hosts 2>/dev/null || return 0
  # /etc/hosts may be a bind mount: rewrite it in place instead of replacing the file.
  local kept
  kept="$(grep -vF "$HOSTS_MARK" /etc/hosts || true)"
  printf '%s\n' "$kept" > /etc/hosts
  say "removed the node names from /etc/hosts"
}

write_conf() {
  local ctld_port="$1" node_port1="$2" node_port2="$3" host cpus first_job_id=$((RANDOM % 10000 + 1))
  host="$(hostname -s)"
  cpus="$(nproc)"
  cat > "$DIR/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a private two-node test cluster on $host.
ClusterName=megabyte-test
# A random first job id: launch.slurm derives the rendezvous port from the job id, and two test
# clusters on one machine would otherwise hand out the same ids (and ports) at the same time.
FirstJobId=$first_job_id
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$DIR/munge/munge.socket,cred_expire=5
AccountingStoragePass=$DIR/munge/munge.socket
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
NodeName=node1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$node_port1 CPUs=$cpus State=UNKNOWN
NodeName=node2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$node_port2 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  mkdir -p "$DIR/munge"
  chmod 755 "$DIR/munge"  # munged insists its socket directory is not writable by others
  if [[ ! -s "$DIR/munge/munge.key" ]]; then
    (umask 077; head -c 1024 /dev/urandom > "$DIR/munge/munge.key")
  fi
  chmod 600 "$DIR/munge/munge.key"
  munged --force --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed"
}

wait_idle() {
  local deadline=$((SECONDS + START_TIMEOUT)) idle
  while (( SECONDS < deadline )); do
    idle="$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
    if [[ "$idle" == "node1 node2 " ]]; then
      return 0
    fi
    sleep 0.5
  done
  sinfo -N >&2 || true
  tail -n 20 "$DIR"/log/slurm*.log >&2 || true
  return 1
}

running() {
  local f
  while read -r f; do pid_alive "$(pid_of "$f")" || return 1; done < <(pid_files)
}

do_start() {
  local t0=$SECONDS ports
  mkdir -p "$DIR"/{run,log,state,spool/node1,spool/node2}
  export SLURM_CONF="$DIR/slurm.conf"
  if [[ -s "$DIR/slurm.conf" ]] && running; then
    say "already running in $DIR"
    printf "export SLURM_CONF=%q\n" "$DIR/slurm.conf"
    return 0
  fi
  [[ $(id -u) == 0 ]] || die "needs root: the daemons run as root and node1/node2 go into /etc/hosts"
  do_stop quiet  # leftovers of a half-started cluster in the same directory
  mkdir -p "$DIR"/{run,log,state,spool/node1,spool/node2}
  install_if_missing
  trap 'say "start failed; stopping what was started"; do_stop quiet' ERR
  read -r ctld node1 node2 <<<"$(free_ports)"
  write_conf "$ctld" "$node1" "$node2"
  ensure_hosts
  start_munge
  slurmctld -c -f "$SLURM_CONF"
  for n in "${NODES[@]}"; do
    slurmd -c -f "$SLURM_CONF" -N "$n"
  done
  if ! wait_idle; then
    false  # runs the ERR trap
  fi
  trap - ERR
  say "up in $((SECONDS - t0)) s: node1 node2 idle (ports: slurmctld $ctld, slurmd $node1 and $node2)"
  printf "export SLURM_CONF=%q\n" "$DIR/slurm.conf"
}

# SIGTERM to every daemon of the given pid files at once, SIGKILL to any still alive after 10 s.
stop_pid_files() {
  local f pid i pids=()
  for f in "$@"; do
    pid="$(pid_of "$f")"
    if pid_alive "$pid"; then kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); fi
  done
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for pid in "${pids[@]}"; do pid_alive "$pid" && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if pid_alive "$pid"; then
      say "pid $pid ignored SIGTERM for 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$@"
}

do_stop() {
  local quiet="${1:-}" jobs i
  export SLURM_CONF="$DIR/slurm.conf"
  # Cancel jobs first: slurmstepd and the training processes outlive slurmd otherwise.
  if [[ -s "$SLURM_CONF" ]] && pid_alive "$(pid_of "$DIR/run/slurmctld.pid")"; then
    jobs="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)"
    if [[ -n "${jobs// }" ]]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel --full --signal=KILL $jobs 2>/dev/null || true
      scancel $jobs 2>/dev/null || true
      for ((i = 0; i < 150; i++)); do
        [[ -z "$(squeue -h -o '%A' 2>/dev/null || true)" ]] && break
        sleep 0.2
      done
    fi
  fi
  # Both slurmd first, then slurmctld and munged.
  stop_pid_files "$DIR/run/slurmd-node1.pid" "$DIR/run/slurmd-node2.pid"
  stop_pid_files "$DIR/run/slurmctld.pid" "$DIR/run/munged.pid"
  undo_hosts
  [[ -n "$quiet" ]] || say "stopped (state and logs left in $DIR)"
}

do_status() {
  local f pid rc=0
  export SLURM_CONF="$DIR/slurm.conf"
  while read -r f; do
    pid="$(pid_of "$f")"
    if pid_alive "$pid"; then echo "$(basename "$f" .pid): running (pid $pid)"
    else echo "$(basename "$f" .pid): not running"; rc=1; fi
  done < <(pid_files)
  if (( rc == 0 )); then sinfo -N; fi
  return $rc
}

case "$ACTION" in
  start) do_start ;;
  stop) do_stop ;;
  status) do_status ;;
  env) printf "export SLURM_CONF=%q\n" "$DIR/slurm.conf" ;;
  *) usage ;;
esac
