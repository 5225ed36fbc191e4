# Sourced by the scripts that run on a device machine (bench/device_check_multi.sh and each session's call script):
# one step harness, so that every call logs, limits and reports its steps the same way.
#
#   source bench/device_steps.sh
#   steps_begin LOG_DIR BUDGET_S     # logs go to LOG_DIR/<name>.log; steps after BUDGET_S seconds are skipped
#   step NAME LIMIT_S CMD...         # CMD under `timeout` (LIMIT_S, cut to what the budget has left), output to the
#                                    # log; prints the rc, the time and the log's summary lines (STEP_SUMMARY, an
#                                    # extended regex; default: gtest verdicts, result rows, checks); a failed or
#                                    # skipped step sets steps_status=1
#   steps_elapsed                    # seconds since steps_begin
# After each step STEP_AFTER (a command, e.g. one that packs the logs into $OUT, so that a call cut short by the
# device's limit still brings back what ran) is evaluated when set.
steps_begin() {
  steps_log_dir=$1
  steps_budget=$2
  steps_t0=$(date +%s)
  steps_status=0
  mkdir -p "$steps_log_dir"
}
steps_elapsed() { echo $(($(date +%s) - steps_t0)); }
step() {
  local name=$1 limit=$2
  shift 2
  local used
  used=$(steps_elapsed)
  if ((used + 10 > steps_budget)); then
    echo "== $name: SKIPPED (budget: ${used}s used of ${steps_budget}s)"
    steps_status=1
    return 0
  fi
  if ((limit > steps_budget - used)); then limit=$((steps_budget - used)); fi
  local s
  s=$(date +%s)
  timeout "$limit" "$@" > "$steps_log_dir/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc $(($(date +%s) - s))s (t=$(steps_elapsed)s)"
  local summary=${STEP_SUMMARY:-'^\S*\[  (PASSED|FAILED) |FAILED  \]|Out of bounds|overhead at|^ +[0-9]+[KM]? +[0-9]+ '}
  grep -hE "$summary" "$steps_log_dir/$name.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -n 12
  [ $rc -eq 0 ] || steps_status=1
  if [ -n "${STEP_AFTER:-}" ]; then eval "$STEP_AFTER"; fi
  return 0
}
