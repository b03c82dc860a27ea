#!/usr/bin/env bash
# Run the gate trainer as N cooperating processes on this machine: a rehearsal of a multi-host TPU run on CPU.
#
#   launch/local.sh [--processes N] [--devices D] [--port P] [--logs DIR] [--dry-run] -- TRAIN_ARGS...
#
# Starts N background processes
#   $PYTHON -m gatekv_jax.train TRAIN_ARGS... --config.distributed.coordinator=localhost:P
#       --config.distributed.num_processes=N --config.distributed.process_id=I --config.distributed.cpu_devices=D
# each logging to DIR/process_I.log, and waits for all of them. When one fails, the others are stopped and the
# script exits with the failing process's status after printing the end of its log; Ctrl-C stops them all.
#
# Environment: PYTHON (default python3) is the interpreter; GATEKV_TRAIN_MODULE (default gatekv_jax.train) is the
# module run with -m (tests point it at a stand-in).
# Output: --dry-run prints the N commands on stdout, one per line, shell-quoted, and starts nothing. Otherwise the
# progress messages go to stderr and stdout stays empty.
# Written for bash 3.2 and later (macOS's /bin/bash included).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

processes=2
devices=4
port=""
logs=""
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --processes) [ $# -ge 2 ] || die "--processes needs a value"; processes=$2; shift 2 ;;
    --processes=*) processes=${1#*=}; shift ;;
    --devices) [ $# -ge 2 ] || die "--devices needs a value"; devices=$2; shift 2 ;;
    --devices=*) devices=${1#*=}; shift ;;
    --port) [ $# -ge 2 ] || die "--port needs a value"; port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --logs) [ $# -ge 2 ] || die "--logs needs a value"; logs=$2; shift 2 ;;
    --logs=*) logs=${1#*=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (the trainer's arguments go after --; see --help)" ;;
  esac
done
# Everything left ("$@") goes to the trainer unchanged.

is_count() { case "$1" in ''|*[!0-9]*) return 1 ;; *) [ "$1" -ge 1 ] ;; esac; }
is_count "$processes" || die "--processes must be a whole number >= 1, got '$processes'"
is_count "$devices" || die "--devices must be a whole number >= 1, got '$devices'"
[ -z "$port" ] || is_count "$port" || die "--port must be a port number, got '$port'"

python=${PYTHON:-python3}
module=${GATEKV_TRAIN_MODULE:-gatekv_jax.train}
command -v "$python" >/dev/null 2>&1 || die "interpreter '$python' not found (set PYTHON)"

if [ -z "$port" ]; then
  # A port nobody listens on now; the coordinator (process 0) binds it a moment later.
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
fi

# The command of process $1, in the array `cmd`.
build_command() {
  cmd=("$python" -m "$module")
  if [ ${#train_args[@]} -gt 0 ]; then cmd+=("${train_args[@]}"); fi
  cmd+=("--config.distributed.coordinator=localhost:$port"
        "--config.distributed.num_processes=$processes"
        "--config.distributed.process_id=$1"
        "--config.distributed.cpu_devices=$devices")
}
train_args=("$@")

if [ "$dry_run" -eq 1 ]; then
  for ((i = 0; i < processes; i++)); do
    build_command "$i"
    line=""
    for word in "${cmd[@]}"; do line+="$(printf '%q' "$word") "; done
    echo "${line% }"
  done
  exit 0
fi

if [ -z "$logs" ]; then
  logs=$(mktemp -d "${TMPDIR:-/tmp}/gatekv_local.XXXXXX")
fi
mkdir -p "$logs"

pids=()        # pid of process I
done_flags=()  # 1 once process I has been reaped
stop_all() {  # TERM every process still running, KILL what is left after 10 s, and reap them all.
  local i waited=0
  for ((i = 0; i < ${#pids[@]}; i++)); do
    [ "${done_flags[$i]}" -eq 1 ] || kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for ((i = 0; i < ${#pids[@]}; i++)); do
    [ "${done_flags[$i]}" -eq 0 ] || continue
    while kill -0 "${pids[$i]}" 2>/dev/null && [ "$waited" -lt 100 ]; do sleep 0.1; waited=$((waited + 1)); done
    kill -KILL "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
    done_flags[$i]=1
  done
}
on_signal() {
  trap - INT TERM
  echo "local.sh: interrupted; stopping ${#pids[@]} processes (logs in $logs)" >&2
  stop_all
  exit "$1"
}
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

echo "local.sh: $processes processes x $devices CPU devices, coordinator localhost:$port, logs in $logs" >&2
for ((i = 0; i < processes; i++)); do
  build_command "$i"
  "${cmd[@]}" >"$logs/process_$i.log" 2>&1 &
  pids+=($!)
  done_flags+=(0)
done

# Wait for all, polling (portable: `wait -n` needs bash 4.3); the first failure stops the rest.
running=$processes
while [ "$running" -gt 0 ]; do
  for ((i = 0; i < processes; i++)); do
    [ "${done_flags[$i]}" -eq 0 ] || continue
    pid=${pids[$i]}
    kill -0 "$pid" 2>/dev/null && continue
    status=0
    wait "$pid" || status=$?
    done_flags[$i]=1
    running=$((running - 1))
    if [ "$status" -ne 0 ]; then
      trap - INT TERM
      echo "local.sh: process $i exited with status $status; stopping the others" >&2
      stop_all
      echo "local.sh: last lines of $logs/process_$i.log:" >&2
      tail -n 40 "$logs/process_$i.log" | sed 's/^/    /' >&2
      exit "$status"
    fi
  done
  [ "$running" -eq 0 ] || sleep 0.2
done
echo "local.sh: all $processes processes finished; logs in $logs" >&2
