#!/bin/bash
# Section V-C at the paper's schedule on one GPU for a fixed time (results/clusters40_paper_notes.md):
# the runs of launch/clusters40_paper.sh, side by side on the GPU, each resumed from its parked
# archive (or started at round 0), stopped by SIGTERM before the time is up (each writes a
# checkpoint), then parked again. First stop and park the CPU runs (bash
# launch/clusters40_paper.sh stop), so one run never goes on in two places. Then, from the root
# of a gmr checkout whose code is the runs' commit (COMMIT in launch/clusters40_paper.sh):
#
#   bash launch/clusters40_paper_gpu.sh <snapshot> <archives in> <seconds> <archives out> \
#       [<method>:<seed> ...]   # default: gumbel_matrix:0 gumbel_matrix:1 shared_bottom:0
#
# <snapshot>: the suite file (python -m launch.snapshot save), checked against CONTENT_SHA of
# launch/clusters40_paper.sh; <archives in>: the folder of python -m launch.park archives
# (results/clusters40_paper_state; a run without one starts at round 0); <seconds>: the wall
# time this script may take in all, start to parked archives; <archives out>: a new folder for
# the archives (an archive over PART_BYTES, default 15 MB, is split into .partNN files: cat
# them back together), logs.txt (the runs' output) and gpu.txt (the machine, the libraries,
# nvidia-smi samples, each run's exit status). Copy the archives into <archives in> and run
# bash launch/clusters40_paper.sh start to go on on the CPU. In a copy without .git, set
# GMR_RUNS_COMMIT to the commit the copy was made from (it must be COMMIT). The runs' flags are
# those of launch/clusters40_paper.sh. Exit 0 when every run stopped by SIGTERM or finished, 1
# when one failed, 2 for bad input (one line, before any run starts).
set -uo pipefail

fail() { echo "error: $1" >&2; exit 2; }
[ $# -ge 4 ] || fail "arguments: give <snapshot> <archives in> <seconds> <archives out> [<method>:<seed> ...]; see the top of $0"
HERE=$(cd "$(dirname "$0")" && pwd)
pinned() { sed -n "s/^$1=\\([0-9a-f]*\\).*/\\1/p" "$HERE/clusters40_paper.sh"; }
COMMIT=$(pinned COMMIT); CONTENT_SHA=$(pinned CONTENT_SHA)
ORBAX=$(grep -o "orbax-checkpoint==[0-9.]*" "$HERE/clusters40_paper.sh" | cut -d= -f3)
SNAP=$(realpath -m "$1"); IN=$2; BUDGET=$3; OUT_DIR=$(realpath -m "$4"); shift 4
RUNS=("$@"); [ ${#RUNS[@]} -gt 0 ] || RUNS=(gumbel_matrix:0 gumbel_matrix:1 shared_bottom:0)
[ -f "$SNAP" ] || fail "snapshot: $SNAP does not exist; give the file python -m launch.snapshot save wrote"
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ $((10#$BUDGET)) -ge 240 ] || fail "seconds: $BUDGET is not a whole number of seconds >= 240; give the wall time this script may take"
BUDGET=$((10#$BUDGET))
for r in "${RUNS[@]}"; do
  [[ "$r" =~ ^(gumbel_matrix|shared_bottom):[0-9]+$ ]] || fail "run: $r is not <gumbel_matrix|shared_bottom>:<seed>; e.g. gumbel_matrix:0"
done
[ "$(printf '%s\n' "${RUNS[@]}" | sort | uniq -d)" = "" ] || fail "run: $(printf '%s\n' "${RUNS[@]}" | sort | uniq -d | head -1) is given twice; give each run once"
[ ! -e "$OUT_DIR" ] || [ -z "$(ls -A "$OUT_DIR")" ] || fail "archives out: $OUT_DIR is not empty; give a new folder (archives are never overwritten)"
[ -n "$COMMIT" ] && [ -n "$CONTENT_SHA" ] && [ -n "$ORBAX" ] || fail "driver: COMMIT, CONTENT_SHA or the orbax pin not found in $HERE/clusters40_paper.sh; run from a gmr checkout"
if git rev-parse --git-dir > /dev/null 2>&1; then
  git diff --quiet "$COMMIT" -- gmr experiments setup.py 2>/dev/null || fail "code: gmr/, experiments/ or setup.py differ from the runs' commit $COMMIT; run from a checkout of it (git worktree add --detach <dir> $COMMIT)"
  RUNS_COMMIT=$COMMIT
else
  [ "${GMR_RUNS_COMMIT:-}" = "$COMMIT" ] || fail "code: no .git here to check; set GMR_RUNS_COMMIT=$COMMIT if this copy was made from that commit"
  RUNS_COMMIT=$GMR_RUNS_COMMIT
fi
STOP_AFTER=$((BUDGET - 120))  # SIGTERM then; a run stops after its device call (<= 100 rounds) or evaluation
KILL_AFTER=$((BUDGET - 60))   # a run still going then is killed (it resumes from its last checkpoint)
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
smi() { timeout 10 nvidia-smi "$@" 2>/dev/null; }
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several processes share the GPU's memory

machine=$(
  echo "commit $RUNS_COMMIT, started $(date -u +%FT%TZ)"
  smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, jax, jaxlib, flax, optax, numpy, orbax.checkpoint as o; print('python', sys.version.split()[0], 'jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'numpy', numpy.__version__); print(jax.devices())" 2>&1
  lscpu | grep -E "^Model name|^CPU\(s\)" 2>&1)
echo "$machine"
python3 -c "import gmr.train, gmr.experiment, launch.snapshot" || fail "imports: gmr does not import with these libraries (above); fix the environment"
backend=$(python3 -c "import jax; print(jax.default_backend())" 2>/dev/null)
[ "$backend" = gpu ] || [ "${GMR_CLUSTERS40_ALLOW_CPU:-}" = 1 ] || fail "device: jax runs on '$backend', not a GPU; install jax's CUDA plugin (GMR_CLUSTERS40_ALLOW_CPU=1 tries this script on a CPU)"
orbax=$(python3 -c "import orbax.checkpoint as o; print(o.__version__)" 2>/dev/null)
[ "$orbax" = "$ORBAX" ] || fail "libraries: orbax-checkpoint $orbax, the runs' checkpoints are written by $ORBAX; install orbax-checkpoint==$ORBAX"
sha=$(python3 -m launch.snapshot digest --snapshot="$SNAP" | awk '{print $NF}')
[ "$sha" = "$CONTENT_SHA" ] || fail "snapshot: $SNAP holds other data (content sha256 $sha, the runs train on $CONTENT_SHA); build it with python -m launch.snapshot save at the runs' commit"
ROOT=$(mktemp -d)/clusters40_paper
LOGS=$(mktemp -d)
mkdir -p "$OUT_DIR" "$ROOT"
INFO=$OUT_DIR/gpu.txt
echo "$machine" > "$INFO"

if [ -d "$IN" ] && ls "$IN"/*/*.tar.xz > /dev/null 2>&1; then
  python3 -m launch.park restore --archive="$IN" --root="$ROOT" || fail "restore: the archives in $IN did not unpack (above)"
else
  echo "no archives in $IN: every run starts at round 0"
fi

V=${GMR_CLUSTERS40_CONFIG:-experiments/configs/clusters40.py:offline,checkpoint_every=1000,log_every=250,sparse_head_updates=true}
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
  echo "$(elapsed) s: $(alive) running; $(smi --query-gpu=utilization.gpu,power.draw,memory.used --format=csv,noheader)" | tee -a "$INFO"
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
fi
failed=0
for i in "${!RUNS[@]}"; do  # 0: finished, 143: stopped by SIGTERM with a checkpoint
  wait "${pids[$i]}"; rc=$?
  echo "${RUNS[$i]}: exit status $rc" | tee -a "$INFO"
  [ "$rc" = 0 ] || [ "$rc" = 143 ] || failed=1
done
status
for r in "${RUNS[@]}"; do
  m=${r%%:*}; s=${r##*:}
  echo "===== $m seed $s"; cat "$LOGS/${m}_$s.log"
done > "$OUT_DIR/logs.txt"
python3 -m launch.park save --root="$ROOT" --out="$OUT_DIR" || fail "park: the workdirs under $ROOT were not archived (above)"
for f in "$OUT_DIR"/*/*.tar.xz; do
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt "${PART_BYTES:-15000000}" ]; then
    split -b "${PART_BYTES:-15000000}" -d "$f" "$f.part" && rm "$f" && echo "split $f into $(ls "$f".part* | wc -l) parts"
  fi
done
echo "$(elapsed) s: done" | tee -a "$INFO"
exit $failed
