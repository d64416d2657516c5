#!/usr/bin/env bash
# Runs the test suite's unit/job and MPI phases N times back to back in a fresh clone, to catch
# failures that show only now and then; counts failed runs per MPI configuration and keeps every
# failing run's logs. Not part of CI (it takes N x ~5 minutes).
#
#   bash scripts/stress.sh [N] [PHASES]      # default: 20 runs of "jobs mpi"
#
# PHASES are scripts/test.sh's: "jobs mpi" (the job tests, then the MPI phase: the sequence in
# which CI once saw a rank abort) takes ~3 minutes a run; "unit mpi" (all unit tests) ~6.
#
# HVD_PS_TEST_MPI_RUNS narrows the MPI phase to some of its runs (a pattern over tags such as
# np4-g0.1.2.3-float32: the four groups of one rank where CI saw the abort).
#
# The clone is made once from this repository's HEAD (so commit first) under
# ${STRESS_DIR:-/tmp/hvd_ps-stress}; before every run its __pycache__ directories are removed, as
# in a new clone. Exits non-zero if any run failed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=${1:-20}
phases=${2:-jobs mpi}
dir=${STRESS_DIR:-/tmp/hvd_ps-stress}
clone="$dir/clone"
rm -rf "$clone"; mkdir -p "$dir"
git clone -q "$ROOT" "$clone" || exit 1
echo "stress: $runs runs of phases '$phases' in $clone at $(git -C "$clone" rev-parse --short HEAD)"
(cd "$clone" && bash -c 'source scripts/bootstrap.sh' > "$dir/bootstrap.log" 2>&1) \
  || { echo "stress: bootstrap failed, see $dir/bootstrap.log"; exit 1; }

declare -A failed_by=()
failures=0
for i in $(seq 1 "$runs"); do
  find "$clone" -name __pycache__ -type d -prune -exec rm -rf {} +
  out="$dir/run$i"
  start=$(date +%s)
  (cd "$clone" && HVD_PS_TEST_PHASES="$phases" HVD_PS_TEST_OUT="$out" CI=true \
    bash scripts/test.sh < /dev/null) > "$dir/run$i.log" 2>&1
  rc=$?
  took=$(( $(date +%s) - start ))
  summary=$(grep -aE '^total:' "$dir/run$i.log" | tail -n 1)
  if [ $rc -eq 0 ]; then
    echo "run $i: ok in ${took}s ($summary)"
    rm -rf "$out" "$dir/run$i.log"
    continue
  fi
  failures=$((failures + 1))
  what=$(grep -aE '^mpirun -np .* exited' "$dir/run$i.log" | sed 's/ exited.*//')
  grep -aqE '^FAILED|^ERROR| failed' <(sed -n '/== unit and job tests\|== job tests/,/== MPI tests/p' \
    "$dir/run$i.log") && what="$what"$'\n'"unit/job tests"
  [ -n "$what" ] || what="unknown"
  while IFS= read -r w; do
    [ -n "$w" ] && failed_by["$w"]=$(( ${failed_by["$w"]:-0} + 1 ))
  done <<< "$what"
  echo "run $i: FAILED (exit $rc) in ${took}s: $(echo "$what" | paste -sd ';') ($summary)"
  echo "        log: $dir/run$i.log, rank logs and cores: $out"
done

echo
echo "stress: $failures of $runs runs failed"
for w in "${!failed_by[@]}"; do echo "  ${failed_by[$w]}x  $w"; done
[ $failures -eq 0 ]
