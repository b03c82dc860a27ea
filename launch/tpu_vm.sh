#!/usr/bin/env bash
# Train gates on a Cloud TPU VM (one host or a pod slice), driven from a workstation with gcloud.
#
#   launch/tpu_vm.sh SUBCOMMAND --name NAME --zone ZONE [flags] [-- TRAINER_FLAGS...]
#
# Subcommands:
#   create  create the TPU VM (`tpu-vm create`), or with --queued a queued resource whose node is NAME, waiting
#           until it is ACTIVE (pods: use --queued)
#   setup   copy this checkout to every worker (~/gatekv_jax) and install it there in a Python venv
#           (~/gatekv_jax/.venv, made by uv: the TPU images' Python is older than the package needs), with
#           the `tpu` extra and `datasets`
#   train   run the trainer on every worker at once (--worker=all) with --config.distributed.auto=True;
#           process 0 writes the outputs into --workdir on worker 0
#   fetch   copy the outputs (gates, summary, history, plot) from worker 0 into --out
#   delete  delete the TPU VM (with --queued: the queued resource and its node)
#   all     create, setup, train, fetch, then delete (keep the TPU with --keep)
#
# Flags:
#   --name NAME          TPU (and queued resource) name: lowercase letters, digits, hyphens   [required]
#   --zone ZONE          e.g. us-central2-b, us-west4-a                                         [required]
#   --project ID         default: `gcloud config get-value project`
#   --accelerator TYPE   accelerator type, e.g. v5litepod-8, v4-32, v5p-16, v6e-8      [default: v5litepod-8]
#   --version VERSION    TPU runtime; default by family: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
#                        v5e (v5litepod) v2-alpha-tpuv5-lite, v2-v4 tpu-ubuntu2204-base
#   --queued             create/delete through queued resources (needed for most pod slices)
#   --spot               ask for Spot capacity
#   --config FILE        trainer config, relative to the checkout on the workers       [default: configs/qwen3.py]
#   --workdir DIR        trainer workdir on the workers; a leading ~/ is the remote home (quote it locally:
#                        '~/x'); a GCS-fuse mount path works too             [default: ~/gatekv_workdir/NAME]
#   --out DIR            local folder for `fetch`                                  [default: tpu_outputs/NAME]
#   --python-version V   Python of the workers' venv                                       [default: 3.12]
#   --keep               `all` keeps the TPU after fetching
#   --dry-run            print every gcloud command (exactly, shell-quoted) and the local steps (as # comments)
#                        without running anything; gcloud need not be installed
#   -- ARGS...           more trainer flags for `train`/`all`, e.g. -- --config.fit.steps=500
#
# Environment: GCLOUD (default gcloud) is the gcloud binary; GATEKV_POLL_SECONDS (default 30) is the wait between
# two looks at a queued resource's state.
set -euo pipefail

OUTPUT_FILES="gates.safetensors summary.json history.json training.png"  # what `fetch` copies
REMOTE_DIR=gatekv_jax  # the checkout on each worker, relative to the home folder
ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
  echo "tpu_vm.sh: $*" >&2
  exit 2
}

# One word, quoted for a POSIX shell only when it needs it (the printed commands stay readable).
q() {
  case "$1" in
    '') printf "''" ;;
    *[!A-Za-z0-9_./:=@%+,-]*) printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")" ;;
    *) printf '%s' "$1" ;;
  esac
}

# Words joined by spaces, each quoted; a --flag=value word quotes only its value: --command='cd ~ && ...'.
qjoin() {
  local out="" word
  for word in "$@"; do
    case "$word" in
      --[a-z]*=*) out+="${word%%=*}=$(q "${word#*=}") " ;;
      *) out+="$(q "$word") " ;;
    esac
  done
  printf '%s' "${out% }"
}

# A path on a worker, quoted; a leading ~/ becomes "$HOME"/ (a ~ after --flag= is not expanded by the shell).
qremote() {
  case "$1" in
    '~/'*) printf '"$HOME"/%s' "$(q "${1#\~/}")" ;;
    *) q "$1" ;;
  esac
}

# Print a command; run it too unless --dry-run.
run() {
  if [ "$dry_run" -eq 1 ]; then
    qjoin "$@"; echo
  else
    echo "+ $(qjoin "$@")" >&2
    "$@"
  fi
}

# A local step: described in a dry run, run otherwise.
note() {
  if [ "$dry_run" -eq 1 ]; then echo "# $*"; else echo "tpu_vm.sh: $*" >&2; fi
}

# ---- arguments
[ $# -gt 0 ] || { usage >&2; exit 2; }
subcommand=$1
case "$subcommand" in
  create|setup|train|fetch|delete|all) shift ;;
  -h|--help) usage; exit 0 ;;
  *) die "unknown subcommand '$subcommand' (create | setup | train | fetch | delete | all; see --help)" ;;
esac

name="" zone="" project="" accelerator=v5litepod-8 version="" queued=0 spot=0 config=configs/qwen3.py
workdir="" out="" python_version=3.12 keep=0 dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name|--zone|--project|--accelerator|--version|--config|--workdir|--out|--python-version)
      [ $# -ge 2 ] || die "$1 needs a value"
      flag=${1#--}; value=$2; shift 2 ;;
    --name=*|--zone=*|--project=*|--accelerator=*|--version=*|--config=*|--workdir=*|--out=*|--python-version=*)
      flag=${1%%=*}; flag=${flag#--}; value=${1#*=}; shift ;;
    --queued) queued=1; shift; continue ;;
    --spot) spot=1; shift; continue ;;
    --keep) keep=1; shift; continue ;;
    --dry-run) dry_run=1; shift; continue ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (trainer flags go after --; see --help)" ;;
  esac
  case "$flag" in
    name) name=$value ;; zone) zone=$value ;; project) project=$value ;; accelerator) accelerator=$value ;;
    version) version=$value ;; config) config=$value ;; workdir) workdir=$value ;; out) out=$value ;;
    python-version) python_version=$value ;;
  esac
done
extra=("$@")  # more trainer flags
if [ ${#extra[@]} -gt 0 ] && [ "$subcommand" != train ] && [ "$subcommand" != all ]; then
  die "arguments after -- are trainer flags, for train or all only"
fi

[ -n "$name" ] || die "missing --name (the TPU's name)"
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$name': use lowercase letters, digits and hyphens, starting with a letter"
[ -n "$zone" ] || die "missing --zone (e.g. --zone us-central2-b)"

gcloud=${GCLOUD:-gcloud}
have_gcloud=0
command -v "$gcloud" >/dev/null 2>&1 && have_gcloud=1
if [ "$dry_run" -eq 0 ] && [ "$have_gcloud" -eq 0 ]; then
  die "gcloud not found ('$gcloud'): install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), or set GCLOUD"
fi
if [ -z "$project" ] && [ "$have_gcloud" -eq 1 ]; then
  project=$("$gcloud" config get-value project 2>/dev/null || true)
  [ "$project" != "(unset)" ] || project=""
fi
[ -n "$project" ] || die "missing project: pass --project, or set a default with 'gcloud config set project ID'"

if [ -z "$version" ]; then
  case "$accelerator" in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) version=v2-alpha-tpuv5-lite ;;
    v2-*|v3-*|v4-*) version=tpu-ubuntu2204-base ;;
    *) die "no default runtime for --accelerator '$accelerator': pass --version (see 'gcloud compute tpus tpu-vm versions list --zone $zone')" ;;
  esac
fi
workdir=${workdir:-"~/gatekv_workdir/$name"}
out=${out:-"tpu_outputs/$name"}
location=(--zone="$zone" --project="$project")
poll_seconds=${GATEKV_POLL_SECONDS:-30}

# ---- steps
do_create() {
  local spot_flag=()
  [ "$spot" -eq 0 ] || spot_flag=(--spot)
  if [ "$queued" -eq 1 ]; then
    run "$gcloud" compute tpus queued-resources create "$name" --node-id="$name" "${location[@]}" \
      --accelerator-type="$accelerator" --runtime-version="$version" ${spot_flag[@]+"${spot_flag[@]}"}
    wait_until_active
  else
    run "$gcloud" compute tpus tpu-vm create "$name" "${location[@]}" \
      --accelerator-type="$accelerator" --version="$version" ${spot_flag[@]+"${spot_flag[@]}"}
  fi
}

wait_until_active() {
  local describe=("$gcloud" compute tpus queued-resources describe "$name" "${location[@]}" --format='value(state.state)')
  if [ "$dry_run" -eq 1 ]; then
    echo "# every ${poll_seconds} s until the state is ACTIVE: $(qjoin "${describe[@]}")"
    return
  fi
  local state
  while true; do
    state=$("${describe[@]}")
    case "$state" in
      ACTIVE) echo "tpu_vm.sh: queued resource $name is ACTIVE" >&2; return ;;
      FAILED|SUSPENDING|SUSPENDED) die "queued resource $name is $state ('$gcloud compute tpus queued-resources describe $name --zone=$zone' says why)" ;;
    esac
    echo "tpu_vm.sh: queued resource $name is ${state:-not listed yet}; looking again in ${poll_seconds} s" >&2
    sleep "$poll_seconds"
  done
}

# The files of the checkout, NUL-separated: git's tracked and untracked-but-not-ignored files that exist (so
# uncommitted edits travel too); without git, everything but the usual build and run leftovers.
list_checkout() {
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
      [ -e "$f" ] && printf '%s\0' "$f"; done)
  else
    (cd "$ROOT" && find . \( -name .git -o -name .venv -o -name __pycache__ -o -name '*.egg-info' \
      -o -name 'workdir*' -o -name 'results*' -o -name build -o -name dist -o -name tpu_outputs \) -prune \
      -o -type f -print0)
  fi
}

do_setup() {
  local archive="${TMPDIR:-/tmp}/gatekv_jax-$name.tar.gz"
  note "pack the checkout $ROOT (git ls-files --cached --others --exclude-standard) into $archive"
  if [ "$dry_run" -eq 0 ]; then
    list_checkout | (cd "$ROOT" && tar --null -T - -czf "$archive")
  fi
  run "$gcloud" compute tpus tpu-vm scp "$archive" "$name:$REMOTE_DIR.tar.gz" --worker=all "${location[@]}"
  [ "$dry_run" -eq 1 ] || rm -f "$archive"
  local uv='~/.local/bin/uv'
  local script="set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/$REMOTE_DIR.tar.gz -C ~/$REMOTE_DIR"
  script+=" && rm ~/$REMOTE_DIR.tar.gz && cd ~/$REMOTE_DIR"
  script+=" && { python3 -m pip install --user -q -U uv || python3 -m pip install --user -q -U --break-system-packages uv; }"
  script+=" && { [ -x .venv/bin/python ] || $uv venv --python $(q "$python_version") .venv; }"
  script+=" && $uv pip install --python .venv/bin/python '.[tpu]' datasets"
  script+=" && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].platform)'"
  run "$gcloud" compute tpus tpu-vm ssh "$name" --worker=all "${location[@]}" --command="$script"
}

train_command() {
  local command="cd ~/$REMOTE_DIR && .venv/bin/python -m gatekv_jax.train --config=$(q "$config")"
  command+=" --config.workdir=$(qremote "$workdir") --config.distributed.auto=True"
  local word
  for word in ${extra[@]+"${extra[@]}"}; do command+=" $(q "$word")"; done
  printf '%s' "$command"
}

do_train() {
  run "$gcloud" compute tpus tpu-vm ssh "$name" --worker=all "${location[@]}" --command="$(train_command)"
}

do_fetch() {
  local remote=${workdir#\~/}  # scp's remote paths are relative to the home folder already
  local sources=() file
  for file in $OUTPUT_FILES; do sources+=("$name:$remote/$file"); done
  note "mkdir -p $(q "$out")"
  [ "$dry_run" -eq 1 ] || mkdir -p "$out"
  run "$gcloud" compute tpus tpu-vm scp "${sources[@]}" "$out/" --worker=0 "${location[@]}"
  note "outputs of $name in $out/"
}

do_delete() {
  if [ "$queued" -eq 1 ]; then
    run "$gcloud" compute tpus queued-resources delete "$name" "${location[@]}" --force --quiet
  else
    run "$gcloud" compute tpus tpu-vm delete "$name" "${location[@]}" --quiet
  fi
}

case "$subcommand" in
  create) do_create ;;
  setup) do_setup ;;
  train) do_train ;;
  fetch) do_fetch ;;
  delete) do_delete ;;
  all)
    do_create
    if [ "$dry_run" -eq 0 ]; then
      delete_hint="launch/tpu_vm.sh delete --name $name --zone $zone --project $project"
      [ "$queued" -eq 0 ] || delete_hint+=" --queued"
      trap 'status=$?; [ "$status" -eq 0 ] || echo "tpu_vm.sh: failed with status $status; the TPU $name is still up (and billed): $delete_hint" >&2' EXIT
    fi
    do_setup
    do_train
    do_fetch
    if [ "$keep" -eq 0 ]; then do_delete; else note "kept $name (--keep)"; fi
    ;;
esac
