# ---- launch/sbatch/train.sh: one training run (static; reads only the values above) ----------
#
# One task per node runs torchrun; the nodes meet in a c10d rendezvous hosted by the first node
# of the allocation. On SIGUSR1 (--signal before the time limit, or `scancel --signal=USR1`)
# every training process checkpoints at its next step boundary and exits; rank 0 writes
# <run dir>/stop_reason ("signal"), and this script requeues the job, which then resumes from
# the checkpoint. A finished run ("max_steps", "max_minutes") or a failure is never requeued.

TASK_INDEX=${SLURM_ARRAY_TASK_ID:-0}
(( TASK_INDEX < ${#RUN_DIRS[@]} )) || die 2 "no run directory for array index $TASK_INDEX"
RUN_DIR=${RUN_DIRS[$TASK_INDEX]}
STATE_DIR=$RUN_DIR/launch
CONFIG=$STATE_DIR/config.yaml
mkdir -p -- "$STATE_DIR" || die 2 "cannot create $STATE_DIR"
[[ -f $CONFIG ]] || die 2 "missing $CONFIG (python -m launch.slurm writes it at submission)"

is_loopback() { [[ $1 == 127.* || $1 == ::1 || $1 == 0:0:0:0:0:0:0:1 || $1 == ::ffff:127.* ]]; }

resolve() {  # first address of a host name, IPv4 preferred
  { getent ahostsv4 "$1" || getent ahosts "$1"; } 2>/dev/null | awk 'NR == 1 { print $1 }'
}

wait_for() {  # exit status of child $1; `wait` returns early (> 128) whenever a trap has run
  local rc again
  while :; do
    wait "$1"; rc=$?
    if (( rc > 128 )) && kill -0 "$1" 2>/dev/null; then continue; fi
    if (( rc > 128 )); then  # it ended while we were interrupted: bash kept its status
      wait "$1" 2>/dev/null; again=$?
      (( again == 127 )) || rc=$again
    fi
    return "$rc"
  done
}

workers_of() {  # pids of the children of process $1: the training processes under torchrun
  local stat line fields pid
  for stat in /proc/[0-9]*/stat; do
    { read -r line < "$stat"; } 2>/dev/null || continue
    read -r -a fields <<< "${line##*) }"  # after "(command name)": state, parent pid, ...
    [[ ${fields[1]:-} == "$1" ]] || continue
    pid=${stat#/proc/}
    echo "${pid%/stat}"
  done
}

catches() {  # does process $1 have a handler for signal number $2? (SigCgt in /proc/PID/status)
  local mask
  mask=$(awk '/^SigCgt:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
  [[ -n $mask ]] && (( (16#$mask >> ($2 - 1)) & 1 ))
}

stop_workers() {  # SIGUSR1 to the $2 training processes under torchrun $1 once all of them catch it
  local torchrun=$1 nproc=$2 num pid ready
  num=$(kill -l USR1)
  while kill -0 "$torchrun" 2>/dev/null; do
    ready=0
    for pid in $(workers_of "$torchrun"); do catches "$pid" "$num" && ready=$((ready + 1)); done
    if (( ready >= nproc )); then
      for pid in $(workers_of "$torchrun"); do kill -s USR1 "$pid" 2>/dev/null || true; done
      return 0
    fi
    sleep 1  # still starting: they inherit torchrun's "ignore" until launch.worker runs
  done
}

# The srun task, once per node. It takes arguments rather than environment variables so that
# nothing depends on how a site propagates the environment into job steps.
run_node() {
  local python=$1 config=$2 nproc=$3 endpoint=$4 master_host=$5 world=$6 allow_loopback=$7
  local shutdown=$8 is_host=0 rc
  NODE=${SLURMD_NODENAME:-$(hostname -s)} NPROC=$nproc TORCHRUN_PID= STOP_PENDING=0
  # Slurm signals every process of the step; passing the signal on as well covers processes
  # still starting (which ignore it) and sites whose process tracking misses the workers
  # (torchrun starts each in a session of its own). SIGTERM (scancel, time limit) is turned
  # into SIGUSR1 too: checkpoint before Slurm's kill.
  on_node_signal() {
    log "node $NODE: SIG$1; asking the training processes to checkpoint and stop"
    if [[ -z $TORCHRUN_PID ]]; then STOP_PENDING=1; else stop_workers "$TORCHRUN_PID" "$NPROC" & fi
  }
  trap 'on_node_signal USR1' USR1
  trap 'on_node_signal TERM' TERM
  [[ $NODE == "$master_host" ]] && is_host=1
  local worker=(--expect-world-size "$world")
  [[ $allow_loopback == 1 ]] && worker+=(--allow-loopback-master)
  log "node $NODE (SLURM_NODEID ${SLURM_NODEID:-?}): torchrun, $nproc process(es), rendezvous $endpoint"
  # torchrun ignores SIGUSR1 (it would die of it and take the workers down); the training
  # processes install their own handler over the inherited "ignore" (launch.worker).
  (
    trap '' USR1
    exec "$python" -m torch.distributed.run --nnodes="${SLURM_NNODES:-1}" --nproc-per-node="$nproc" \
      --rdzv-backend=c10d --rdzv-endpoint="$endpoint" --rdzv-id="${SLURM_JOB_ID:-0}" \
      --rdzv-conf="is_host=$is_host" --max-restarts=0 --shutdown-timeout="$shutdown" \
      -m launch.worker "${worker[@]}" -- --config "$config"
  ) &
  TORCHRUN_PID=$!
  if (( STOP_PENDING )); then stop_workers "$TORCHRUN_PID" "$NPROC" & fi
  wait_for "$TORCHRUN_PID"; rc=$?
  log "node $NODE: torchrun exited with $rc"
  return "$rc"
}

# ---- a signal sent to this batch shell (scancel --batch / --full) goes to the training step ----
STEP_PID= STOP_PENDING=0
on_batch_signal() {
  log "batch shell received SIG$1; passing SIGUSR1 to the training step"
  if [[ -z $STEP_PID ]]; then STOP_PENDING=1; else kill -s USR1 "$STEP_PID" 2>/dev/null; fi
}
trap 'on_batch_signal USR1' USR1
trap 'on_batch_signal TERM' TERM

# ---- rendezvous on the first node ------------------------------------------------------------
mapfile -t HOSTS < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-}")
(( ${#HOSTS[@]} )) || die "scontrol show hostnames '${SLURM_JOB_NODELIST:-}' listed no nodes"
MASTER_HOST=${HOSTS[0]}
MASTER_ADDR=$(resolve "$MASTER_HOST")
[[ -n $MASTER_ADDR ]] || die "cannot resolve the first node '$MASTER_HOST' (getent ahosts)"
if (( ${#HOSTS[@]} > 1 )) && is_loopback "$MASTER_ADDR"; then
  if [[ $ALLOW_LOOPBACK_MASTER == 1 ]]; then
    log "warning: rendezvous host $MASTER_HOST resolves to the loopback address $MASTER_ADDR;" \
        "accepted because slurm.allow_loopback_master=true (single-host test cluster)"
  else
    die "the first node $MASTER_HOST resolves to the loopback address $MASTER_ADDR in a" \
        "${#HOSTS[@]}-node job: the other nodes cannot reach it there and would each rendezvous" \
        "alone and hang. Fix name resolution (typically an /etc/hosts line mapping the node's" \
        "own name to 127.0.1.1); slurm.allow_loopback_master=true is only for test clusters" \
        "whose nodes all share one host."
  fi
fi
(( MASTER_PORT )) || MASTER_PORT=$(( 15000 + ${SLURM_JOB_ID:-0} % 15000 ))
ENDPOINT=$MASTER_ADDR:$MASTER_PORT
[[ $MASTER_ADDR == *:* ]] && ENDPOINT="[$MASTER_ADDR]:$MASTER_PORT"

# ---- train -----------------------------------------------------------------------------------
rm -f -- "$RUN_DIR/stop_reason"  # written afresh by this run; a stale one must not requeue a crash
log "run $RUN_DIR: ${#HOSTS[@]} node(s) x $NPROC_PER_NODE process(es) = world size $WORLD_SIZE;" \
    "rendezvous $ENDPOINT on $MASTER_HOST; Slurm restart count ${SLURM_RESTART_COUNT:-0}"
if [[ -z ${OMP_NUM_THREADS:-} ]]; then  # the task's CPUs shared by its processes, at least one
  OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-1} / NPROC_PER_NODE ))
  (( OMP_NUM_THREADS >= 1 )) || OMP_NUM_THREADS=1
  export OMP_NUM_THREADS
  log "OMP_NUM_THREADS=$OMP_NUM_THREADS per process (set slurm.env.OMP_NUM_THREADS to choose)"
fi
SRUN=(srun --nodes="${#HOSTS[@]}" --ntasks="${#HOSTS[@]}" --ntasks-per-node=1 --label)
if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then
  SRUN+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")  # srun does not inherit it from sbatch (22.05+)
fi
SRUN+=("${SRUN_EXTRA[@]}")
FUNCTIONS=$(declare -f log wait_for workers_of catches stop_workers run_node)
"${SRUN[@]}" bash -c "$FUNCTIONS; run_node \"\$@\"" run_node \
  "$PYTHON" "$CONFIG" "$NPROC_PER_NODE" "$ENDPOINT" "$MASTER_HOST" "$WORLD_SIZE" \
  "$ALLOW_LOOPBACK_MASTER" "$SHUTDOWN_SECONDS" &
STEP_PID=$!
if (( STOP_PENDING )); then  # asked to stop before the step existed: pass it on once it runs
  ( sleep 10; kill -s USR1 "$STEP_PID" 2>/dev/null ) &  # srun forwards it to every node's task
fi
wait_for "$STEP_PID"; STEP_RC=$?

# ---- finished, requeue, or failed ------------------------------------------------------------
REASON=$(cat -- "$RUN_DIR/stop_reason" 2>/dev/null)
REASON=${REASON//[[:space:]]/}
case $REASON in
  max_steps | max_minutes)
    log "training finished ($REASON); not requeued"
    exit 0
    ;;
  signal)
    # "<job id> <requeues>": the cap counts this job's requeues; a new submission starts at 0.
    COUNT=0
    if [[ -f $STATE_DIR/requeues ]] && read -r COUNTED_JOB COUNTED < "$STATE_DIR/requeues" \
        && [[ $COUNTED_JOB == "${SLURM_JOB_ID:-}" && $COUNTED =~ ^[0-9]+$ ]]; then
      COUNT=$COUNTED
    fi
    if (( COUNT >= MAX_REQUEUES )); then
      die 75 "checkpointed after a stop signal; not requeueing: this job has been requeued" \
             "$COUNT time(s), slurm.max_requeues=$MAX_REQUEUES. Resubmit to continue"
    fi
    printf '%s %s\n' "${SLURM_JOB_ID:-}" "$((COUNT + 1))" > "$STATE_DIR/requeues.tmp" \
      && mv -f -- "$STATE_DIR/requeues.tmp" "$STATE_DIR/requeues"
    log "checkpointed after a stop signal; requeueing (requeue $((COUNT + 1)) of at most $MAX_REQUEUES)"
    scontrol requeue "${SLURM_JOB_ID:-}" || die 75 "scontrol requeue ${SLURM_JOB_ID:-} failed; resubmit to continue"
    exit 0  # Slurm ends this run of the script and queues the job again
    ;;
  diverged)
    die 3 "training diverged (too many non-finite steps in a row; the last good checkpoint is" \
          "kept); not requeued: resuming would replay the same batches"
    ;;
  *)
    die "$(( STEP_RC ? STEP_RC : 1 ))" "training failed (srun exit $STEP_RC) without writing" \
        "$RUN_DIR/stop_reason; not requeued"
    ;;
esac
