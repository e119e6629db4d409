#!/bin/bash
# One short GPU session for populations (gmr/population.py), in this order, within <seconds>:
#   1. the population benchmark for the clusters40 and Omniglot networks, float32 and bfloat16
#      convolutions, S = 1..32, with the step latency (experiments.benchmark --mode=population)
#      -> <out>/population_benchmark.md
#   2. Table II: Omniglot, gumbel_matrix and shared_bottom seed 0 side by side (two processes on
#      the GPU), resumed from <out_in>/omniglot_state when given, stopped by SIGTERM before the
#      time is up (each writes a checkpoint) and parked -> <out>/omniglot_state
#   3. only if both of Table II's runs finished: section V-C, gumbel_matrix seeds 2-9 as one
#      population of 8 (experiments.main --seeds=2-9), parked likewise -> <out>/clusters40_state
# From the root of a gmr checkout, with the raw data in GMR_DATA_DIR:
#
#   bash launch/gpu_population.sh <out> <seconds> [<out_in>]
#
# <out>: a new or empty folder for everything the session makes (logs.txt: every command's
# output; gpu.txt: the machine and libraries); <seconds>: the wall time it may take, start to
# parked archives (>= 240); <out_in>: a previous session's <out> to resume from. Bring <out>
# back into results/ (population_benchmark.md beside results/population_benchmark.md; the
# *_state folders resume with python -m launch.park restore). GMR_GPU_TRY=1 runs the same
# steps at tiny sizes on any device (a CPU try-out of this script: seconds, not hours).
# Exit 0 when every step ran (runs stopped by SIGTERM count), 1 when one failed, 2 for bad
# input (one line, before anything runs).
set -uo pipefail

fail() { echo "error: $1" >&2; exit 2; }
[ $# -ge 2 ] || fail "arguments: give <out> <seconds> [<out_in>]; see the top of $0"
OUT=$(realpath -m "$1"); BUDGET=$2; IN=${3:-}
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ $((10#$BUDGET)) -ge 240 ] || fail "seconds: $BUDGET is not a whole number >= 240; give the wall time this script may take"
BUDGET=$((10#$BUDGET))
[ ! -e "$OUT" ] || [ -z "$(ls -A "$OUT")" ] || fail "out: $OUT is not empty; give a new folder (nothing is overwritten)"
[ -z "$IN" ] || [ -d "$IN" ] || fail "out_in: $IN is not a folder; give a previous session's <out>, or leave it out"
[ -f gmr/population.py ] || fail "cwd: $(pwd) is not the root of a gmr checkout; cd there first"
TRY=${GMR_GPU_TRY:-0}
[ -n "${GMR_DATA_DIR:-}" ] && [ -d "$GMR_DATA_DIR" ] || [ "$TRY" = 1 ] || fail "GMR_DATA_DIR: not a folder; point it at the raw data (Omniglot, MNIST, Fashion-MNIST, CIFAR-100)"
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
mkdir -p "$OUT"
LOG=$OUT/logs.txt
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # two runs share the GPU's memory in step 2
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown), started $(date -u +%FT%TZ)"
  timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  python3 -c "import sys, jax, jaxlib, flax, optax; print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())" 2>&1
} > "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
status=0

# -- 1. the benchmark (at most 40% of the time)
if [ "$TRY" = 1 ]; then
  BENCH=(--arch=synthetic --population=1,2 --repeats=2 --rounds=2)
  ROUNDS=(--config.num_rounds=6 --config.eval_every=3 --config.log_every=3 --config.checkpoint_every=3 --config.rounds_per_call=3)
  OMNI="experiments/configs/synthetic.py"; CLUS="experiments/configs/synthetic.py"
else
  BENCH=(--arch=clusters,omniglot --conv_dtype=float32,bfloat16 --population=1,2,4,8,16,32 --repeats=5)
  ROUNDS=()
  OMNI="experiments/configs/omniglot.py"; CLUS="experiments/configs/clusters40.py"
fi
echo "=== 1. benchmark $(date -u +%T)" | tee -a "$LOG"
timeout -s TERM $(( BUDGET * 2 / 5 )) python3 -m experiments.benchmark --mode=population \
  "${BENCH[@]}" --write="$OUT/population_benchmark.md" >> "$LOG" 2>&1 || { echo "benchmark: exit $? (see logs.txt)"; status=1; }

# runs in the background until <seconds> - 150, then SIGTERM (each checkpoints), then parked
run_until_stop() {  # <name> <args...>: one experiments.main process
  local name=$1; shift
  python3 -m experiments.main "$@" "${ROUNDS[@]}" --quiet >> "$LOG" 2>&1 &
  PIDS+=($!); NAMES+=("$name")
}
wait_and_park() {  # <root> <state out>
  local root=$1 state=$2 deadline=$(( BUDGET - 150 ))
  while [ $(( $(date +%s) - T0 )) -lt $deadline ]; do  # until every run ended, or the deadline
    local alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || break
    sleep 5
  done
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  FINISHED=1
  for i in "${!PIDS[@]}"; do
    wait "${PIDS[$i]}"; rc=$?
    echo "${NAMES[$i]}: exit $rc" | tee -a "$LOG"
    [ $rc = 0 ] || FINISHED=0
    [ $rc = 0 ] || [ $rc = 143 ] || status=1
  done
  python3 -m launch.park save --root="$root" --out="$state" >> "$LOG" 2>&1 || status=1
}
restore() {  # <state in> <root>
  [ -n "$IN" ] && [ -d "$IN/$1" ] && python3 -m launch.park restore --archive="$IN/$1" --root="$2" >> "$LOG" 2>&1
}

# -- 2. Table II: Omniglot, gumbel_matrix and shared_bottom seed 0 side by side
ROOT=$(mktemp -d)
echo "=== 2. Table II $(date -u +%T), $(left) s left" | tee -a "$LOG"
restore omniglot_state "$ROOT/omniglot"
PIDS=(); NAMES=()
for m in gumbel_matrix shared_bottom; do
  run_until_stop "omniglot/$m/seed_0" --config="$OMNI:$m" --workdir="$ROOT/omniglot/$m/seed_0" --config.seed=0
done
wait_and_park "$ROOT/omniglot" "$OUT/omniglot_state"

# -- 3. V-C: gumbel_matrix seeds 2-9 as one population, only once Table II's runs finished
if [ "$FINISHED" = 1 ] && [ "$(left)" -gt 300 ]; then
  echo "=== 3. V-C population $(date -u +%T), $(left) s left" | tee -a "$LOG"
  restore clusters40_state "$ROOT/clusters40"
  PIDS=(); NAMES=()
  run_until_stop "clusters40/gumbel_matrix/seeds_2-9" --config="$CLUS:gumbel_matrix" \
    --seeds=2-9 --workdir="$ROOT/clusters40/gumbel_matrix/seed_{seed}"
  wait_and_park "$ROOT/clusters40" "$OUT/clusters40_state"
else
  echo "=== 3. V-C not started (Table II's runs unfinished, or too little time)" | tee -a "$LOG"
fi
echo "=== done $(date -u +%T), status $status" | tee -a "$LOG"
exit $status
