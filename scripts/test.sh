#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, then the MPI tests under mpirun at world
# sizes 1, 2 and 4. Installs what is missing first (scripts/bootstrap.sh).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh" || exit 1
cd "$ROOT"
OUT="$ROOT/.venv/test-results"; rm -rf "$OUT"; mkdir -p "$OUT"
status=0
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "ruff (lint + format check)"
ruff check hvd_ps tests examples benchmarks setup.py || status=1
ruff format --check hvd_ps tests examples benchmarks setup.py || status=1
step "mypy hvd_ps"
mypy hvd_ps || status=1

step "unit and job tests (pytest)"
python -m pytest -q -p no:cacheprovider --junitxml="$OUT/unit.xml" --ignore=tests/mpi tests "$@"
rc=$?; [ $rc -eq 0 ] || status=1

for np in 1 2 4; do
  step "MPI tests, world size $np (mpirun + pytest-mpi)"
  timeout 900 mpirun -np "$np" --oversubscribe --bind-to none -x OMP_NUM_THREADS \
    -x MXNET_CPU_WORKER_NTHREADS -x PATH \
    "$ROOT/scripts/mpi_rank.sh" "$OUT/np$np" -p no:cacheprovider --with-mpi tests/mpi "$@"
  rc=$?; [ $rc -eq 0 ] || { status=1; echo "mpirun -np $np exited $rc"; }
done

step "summary"
python "$ROOT/scripts/summarize.py" "$OUT" || status=1
exit $status
