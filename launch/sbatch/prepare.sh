# ---- launch/sbatch/prepare.sh: data preparation before a sweep (static) ----------------------
# STEPS holds each step as a count followed by that many words: module, then its arguments.
# The steps run in order on one node; the sweep's training array starts only if all succeed.

i=0
while (( i < ${#STEPS[@]} )); do
  n=${STEPS[$i]}
  step=("${STEPS[@]:$((i + 1)):$n}")
  i=$((i + 1 + n))
  log "prepare: python -m ${step[*]}"
  "$PYTHON" -m "${step[@]}" || die "preparation step 'python -m ${step[0]}' failed"
done
log "preparation done"
