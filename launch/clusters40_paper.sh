#!/bin/bash
# Section V-C at the paper's schedule (results/clusters40_paper_notes.md): the long runs,
# started or resumed by the same command after any stop, from the root of a gmr checkout:
#
#   bash launch/clusters40_paper.sh start    # restore, then run the chain in the background
#   bash launch/clusters40_paper.sh restore  # the worktree, the data snapshot, the workdirs
#   bash launch/clusters40_paper.sh stop     # SIGTERM (each run checkpoints), then park
#   bash launch/clusters40_paper.sh park     # pack the workdirs into results/ (runs may go on)
#
# The runs use a git worktree at one fixed commit ($COMMIT), so every resume runs the same code
# while this checkout moves on. Their workdirs travel between machines (which keep no disk
# between sessions) as archives in results/clusters40_paper_state/ (python -m launch.park),
# committed with the progress table. The chain: Gumbel-Matrix seeds 0 and 1, one process per
# core at nice 19; once both have finished, shared bottom seed 0 on core 0 and Gumbel-Matrix
# seed 2 on core 1 (on both cores once shared bottom has finished). A run already going on in
# a workdir refuses a second process (its lock).
set -euo pipefail

COMMIT=caa29036369868738f7d4db2dd172c905f23262b                      # the code of every run (results record it)
# the data the runs train on: launch.snapshot digest's content_sha256 of the suite snapshot
# (the file's own sha256: ef9b936af7cc92087548c4f4c911e0650a48c74ead6774c13d57df29542ffaba)
CONTENT_SHA=de49e4b2721b7ae873887f9c10139875397c5deeb8d516b509771960b1c83266
# the numerical libraries of every run (a venv in the worktree; pip alone would give whatever
# is newest on the day of each resume)
PINS="jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
      numpy==2.4.6 ml_collections==1.1.0 absl-py==2.5.1 tensorstore==0.1.86 scipy==1.17.1"
MAIN=$(cd "$(dirname "$0")/.." && pwd)
WT=${GMR_CLUSTERS40_WORKTREE:-$(dirname "$MAIN")/vc2}
ROOT=$WT/runs/clusters40_paper
STATE=$MAIN/results/clusters40_paper_state
SNAP=$WT/runs/c40.npz.xz
LOGS=$WT/runs/logs
PY=$WT/.venv/bin/python
export GMR_DATA_DIR=${GMR_DATA_DIR:-$(dirname "$MAIN")/shared/datasets}

fail() { echo "error: $1" >&2; exit 2; }

park() { (cd "$MAIN" && python -m launch.park save --root="$ROOT" --out="$STATE"); }

run_one() {  # <method> <seed> <cpus>: one run, resumed from its checkpoint if it has one
  local v=experiments/configs/clusters40.py:offline,checkpoint_every=1000,log_every=250,sparse_head_updates=true
  (cd "$WT" && taskset -c "$3" nice -n 19 "$PY" -m launch.snapshot run --snapshot="$SNAP" -- \
      --config="$v,$1" --workdir="runs/clusters40_paper/$1/seed_$2" --config.seed="$2" \
      --config.eval_batch_size=500 >> "$LOGS/$1_$2.log" 2>&1)
}

finished() { [ -f "$ROOT/$1/seed_$2/results.json" ]; }

chain() {
  run_one gumbel_matrix 0 0 & a=$!
  run_one gumbel_matrix 1 1 & b=$!
  wait $a || true
  wait $b || true
  finished gumbel_matrix 0 && finished gumbel_matrix 1 || exit 1  # stopped: start again
  if finished shared_bottom 0; then  # the last run alone: both cores
    run_one gumbel_matrix 2 0,1 || true
    return
  fi
  run_one shared_bottom 0 0 & a=$!
  run_one gumbel_matrix 2 1 & b=$!
  wait $a || true
  wait $b || true
}

content_sha() {  # <snapshot file>
  (cd "$MAIN" && python -m launch.snapshot digest --snapshot="$1") | awk '{print $NF}'
}

prepare() {
  if [ ! -d "$WT" ]; then
    git -C "$MAIN" worktree prune
    git -C "$MAIN" worktree add --detach "$WT" "$COMMIT" > /dev/null
  fi
  local at
  at=$(git -C "$WT" rev-parse HEAD)
  [ "$at" = "$COMMIT" ] || fail "worktree: $WT is at $at, not $COMMIT; run git -C $WT checkout --detach $COMMIT (its runs/ folder stays)"
  mkdir -p "$ROOT" "$LOGS"
  if [ ! -x "$PY" ] || ! "$PY" -m pip freeze 2>/dev/null | grep -qx "jax==0.10.2"; then
    python -m venv "$WT/.venv"
    # shellcheck disable=SC2086
    "$PY" -m pip install -q -e "$WT" $PINS
  fi
  if [ ! -f "$SNAP" ]; then  # rebuilt from the raw data; kept only if it holds the runs' data
    (cd "$WT" && "$PY" -m launch.snapshot save --config=experiments/configs/clusters40.py:offline --out="$SNAP.new")
    local built
    built=$(content_sha "$SNAP.new")
    [ "$built" = "$CONTENT_SHA" ] || fail "snapshot: $SNAP.new (built from GMR_DATA_DIR=$GMR_DATA_DIR) holds other data (content sha256 $built, the runs trained on $CONTENT_SHA); point GMR_DATA_DIR at the canonical raw files, remove $SNAP.new and start again"
    mv "$SNAP.new" "$SNAP"
  fi
  local sha
  sha=$(content_sha "$SNAP")
  [ "$sha" = "$CONTENT_SHA" ] || fail "snapshot: $SNAP holds other data (content sha256 $sha, the runs trained on $CONTENT_SHA); remove it and start again to rebuild it from the raw data"
  if [ -d "$STATE" ]; then
    (cd "$MAIN" && python -m launch.park restore --archive="$STATE" --root="$ROOT")
  fi
}

case "${1:-}" in
  start)
    prepare
    nohup bash "$0" chain >> "$LOGS/chain.log" 2>&1 &
    echo "started the chain (pid $!); log: $LOGS/chain.log";;
  restore)
    prepare;;
  chain)
    echo "chain started $(date -u +%FT%TZ)"
    chain
    echo "chain ended $(date -u +%FT%TZ)";;
  stop)  # the runs of this worktree only (their working directory is $WT)
    ours() {
      for p in $(pgrep -f "launch.snapshot run" || true); do
        [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$WT" ] && echo "$p"
      done
      return 0
    }
    pids=$(ours)
    [ -z "$pids" ] || kill -TERM $pids
    for _ in $(seq 180); do  # SIGTERM acts after the current chunk or evaluation (minutes)
      [ -z "$(ours)" ] && break
      sleep 5
    done
    [ -z "$(ours)" ] || fail "stop: runs $(ours | tr '\n' ' ')still going after 15 minutes; wait for them, then run: bash $0 park"
    park;;
  park)
    park;;
  *)
    fail "command: give start, restore, stop or park; see the top of $0";;
esac
