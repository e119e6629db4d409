#!/bin/bash
# Section V-C at the paper's schedule on one GPU for a fixed time (results/clusters40_paper_notes.md):
# the runs of launch/clusters40_paper.sh, side by side on the GPU, each resumed from its parked
# archive (or started at round 0), stopped by SIGTERM before the time is up (each writes a
# checkpoint), then parked again. Run from the root of a gmr checkout at the runs' commit:
#
#   bash launch/clusters40_paper_gpu.sh <snapshot> <archives in> <seconds> <archives out> \
#       [<method>:<seed> ...]   # default: gumbel_matrix:0 gumbel_matrix:1 shared_bottom:0
#
# <snapshot>: the suite file (python -m launch.snapshot save); <archives in>: a folder of
# python -m launch.park archives (may be absent: every run starts at round 0); <seconds>: the
# wall time this script may take in all, start to parked archives; <archives out>: where the
# archives go, with logs.txt (the runs' output) and gpu.txt (the machine, the libraries,
# nvidia-smi samples; GMR_RUNS_COMMIT names the commit where the checkout has no .git). The
# runs' flags are those of launch/clusters40_paper.sh.
set -uo pipefail

fail() { echo "error: $1" >&2; exit 2; }
[ $# -ge 4 ] || fail "arguments: give <snapshot> <archives in> <seconds> <archives out> [<method>:<seed> ...]; see the top of $0"
SNAP=$(realpath "$1"); IN=$2; BUDGET=$3; OUT_DIR=$(realpath -m "$4"); shift 4
RUNS=("$@"); [ ${#RUNS[@]} -gt 0 ] || RUNS=(gumbel_matrix:0 gumbel_matrix:1 shared_bottom:0)
[ -f "$SNAP" ] || fail "snapshot: $SNAP does not exist; give the file python -m launch.snapshot save wrote"
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 180 ] || fail "seconds: $BUDGET is not a whole number of seconds >= 180; give the wall time this script may take"
for r in "${RUNS[@]}"; do
  [[ "$r" =~ ^(gumbel_matrix|shared_bottom):[0-9]+$ ]] || fail "run: $r is not <gumbel_matrix|shared_bottom>:<seed>; e.g. gumbel_matrix:0"
done
STOP_AFTER=$((BUDGET - 95))   # SIGTERM then; a run stops within one device call (<= 100 rounds)
KILL_AFTER=$((BUDGET - 25))   # a run still going then is killed (it resumes from its last checkpoint)
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
ROOT=$(mktemp -d)/clusters40_paper
LOGS=$(mktemp -d)
mkdir -p "$OUT_DIR" "$ROOT"
INFO=$OUT_DIR/gpu.txt
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU's memory

{
  echo "commit ${GMR_RUNS_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}, started $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  python3 -c "import sys, jax, jaxlib, flax, optax, numpy, orbax.checkpoint as o; print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'numpy', numpy.__version__); print(jax.devices())" 2>&1
  lscpu | grep -E "^Model name|^CPU\(s\)" 2>&1
} | tee "$INFO"
python3 -c "import gmr.train, gmr.experiment, launch.snapshot" || fail "imports: gmr does not import with these libraries (above); fix the environment"

if [ -d "$IN" ]; then
  python3 -m launch.park restore --archive="$IN" --root="$ROOT" || fail "restore: the archives in $IN did not unpack (above)"
fi

# the runs' config; GMR_CLUSTERS40_CONFIG replaces it (a tiny schedule to try this script on a CPU)
V=${GMR_CLUSTERS40_CONFIG:-experiments/configs/clusters40.py:offline,checkpoint_every=1000,log_every=250}
pids=()
for r in "${RUNS[@]}"; do
  m=${r%%:*}; s=${r##*:}
  python3 -m launch.snapshot run --snapshot="$SNAP" -- --config="$V,$m" \
      --workdir="$ROOT/$m/seed_$s" --config.seed="$s" --config.eval_batch_size=500 \
      > "$LOGS/${m}_$s.log" 2>&1 &
  pids+=($!)
  echo "$(elapsed) s: started $m seed $s (pid $!)"
done

alive() { local n=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && n=$((n + 1)); done; echo $n; }
status() {
  echo "$(elapsed) s: $(alive) running; $(nvidia-smi --query-gpu=utilization.gpu,power.draw,memory.used --format=csv,noheader 2>/dev/null)" | tee -a "$INFO"
  for r in "${RUNS[@]}"; do
    m=${r%%:*}; s=${r##*:}
    echo "  $m/$s: $(grep -E 'round|error|Error' "$LOGS/${m}_$s.log" | tail -1 | cut -c1-160)"
  done
}
while [ "$(elapsed)" -lt "$STOP_AFTER" ] && [ "$(alive)" -gt 0 ]; do
  sleep 15
  status
done
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
echo "$(elapsed) s: SIGTERM sent"
while [ "$(alive)" -gt 0 ] && [ "$(elapsed)" -lt "$KILL_AFTER" ]; do sleep 2; done
if [ "$(alive)" -gt 0 ]; then
  echo "$(elapsed) s: $(alive) run(s) still going: killed (they resume from their last checkpoint)"
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  sleep 2
fi
status
for r in "${RUNS[@]}"; do
  m=${r%%:*}; s=${r##*:}
  echo "===== $m seed $s"; cat "$LOGS/${m}_$s.log"
done > "$OUT_DIR/logs.txt"
python3 -m launch.park save --root="$ROOT" --out="$OUT_DIR" || fail "park: the workdirs under $ROOT were not archived (above)"
# a file larger than PART_BYTES (default 15 MB) is split into <file>.part00, .part01, ... (put
# them back together with cat) where files are carried with a size limit
for f in "$OUT_DIR"/*/*.tar.xz; do
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt "${PART_BYTES:-15000000}" ]; then
    split -b "${PART_BYTES:-15000000}" -d "$f" "$f.part" && rm "$f" && echo "split $f into $(ls "$f".part* | wc -l) parts"
  fi
done
echo "$(elapsed) s: done" | tee -a "$INFO"
