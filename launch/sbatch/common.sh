# ---- launch/sbatch/common.sh: helpers and environment (static; reads only the values above) ----
set -uo pipefail  # no -e: each failure below is reported with its reason

log() { printf '[launch %(%H:%M:%S)T job %s] %s\n' -1 "${SLURM_JOB_ID:-?}" "$*" >&2; }
die() {  # die [EXIT_CODE] MESSAGE...
  local code=1
  if [[ $1 =~ ^[0-9]+$ ]]; then code=$1; shift; fi
  log "error: $*"
  exit "$code"
}

if (( ${#MODULES[@]} )); then
  type module >/dev/null 2>&1 || die 2 "slurm.modules is set but this shell has no 'module' command"
  module load "${MODULES[@]}" || die 2 "module load ${MODULES[*]} failed"
fi
if [[ -n $ACTIVATE ]]; then
  set +u  # activate scripts read unset variables
  # shellcheck disable=SC1090
  source "$ACTIVATE" || die 2 "could not source $ACTIVATE"
  set -u
fi
for assignment in "${ENV_VARS[@]}"; do
  export "$assignment"  # NAME=value as one word: nothing in the value is expanded or run
done
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd -- "$WORKDIR" || die 2 "cannot enter the submission directory $WORKDIR"
