#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests, then the MPI tests under mpirun at world
# sizes 1, 2 and 4 (five groupings). Installs what is missing first (scripts/bootstrap.sh).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh" || exit 1
set +e  # bootstrap runs with -e; from here on a failing step must not hide the others
cd "$ROOT"
OUT="${HVD_PS_TEST_OUT:-$ROOT/.venv/test-results}"; rm -rf "$OUT"; mkdir -p "$OUT"
status=0
step() { if [ -t 1 ]; then printf '\n\033[1m== %s\033[0m\n' "$*"; else printf '\n== %s\n' "$*"; fi; }
# HVD_PS_TEST_PHASES picks phases: lint, unit (all unit and job tests) or jobs (only those running
# whole jobs), mpi. Default "lint unit mpi": everything. scripts/stress.sh repeats some of them.
phases=" ${HVD_PS_TEST_PHASES:-lint unit mpi} "
phase() { [[ "$phases" == *" $1 "* ]]; }

if phase lint; then
  step "ruff (lint + format check)"
  ruff check hvd_ps tests examples benchmarks docs/hooks scripts setup.py || status=1
  ruff format --check hvd_ps tests examples benchmarks docs/hooks scripts setup.py || status=1
  step "mypy --strict hvd_ps (pyproject.toml)"
  mypy hvd_ps || status=1
  step "docs (mkdocs build --strict)"
  python -m mkdocs build --strict --site-dir "$OUT/site" || status=1
fi

if phase unit; then
  step "unit and job tests (pytest)"
  python -m pytest -q -p no:cacheprovider --junitxml="$OUT/unit.xml" --ignore=tests/mpi tests "$@"
  rc=$?; [ $rc -eq 0 ] || status=1
elif phase jobs; then  # only the tests that run whole jobs with tiers of their own
  step "job tests (pytest)"
  python -m pytest -q -p no:cacheprovider --junitxml="$OUT/unit.xml" tests/jobs/test_runtime_jobs.py \
    "$@"
  rc=$?; [ $rc -eq 0 ] || status=1
fi

# The MPI suite once per grouping: a process may call hvd_ps.init only once, so each grouping
# is a session of its own (tests/mpi/conftest.py reads HVD_PS_TEST_GROUPS).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MXNET_CPU_WORKER_NTHREADS="${MXNET_CPU_WORKER_NTHREADS:-1}"
export HVD_PS_TIMEOUT="${HVD_PS_TIMEOUT:-60}"
# np | groups | wire dtype | HVD_PS_BUCKET_MB | tier mode | tests (paths, space-separated)
#   [| front end: mxnet (the default) or torch, whose sessions run the PyTorch tests only]
# (the float16 run also splits every parameter into a PS key of its own; a tier runs in one
# mode per job, so the async rules have sessions of their own; so do the compressed wires,
# whose sessions use blocks of 8 values and two servers, so a bucket spans several shards)
runs=(
  "1|[[0]]|float32|4|sync|tests/mpi"
  "2|[[0,1]]|float32|4|sync|tests/mpi"
  "4|[[0,1],[2,3]]|float32|4|sync|tests/mpi"
  "4|[[0],[1,2,3]]|float32|4|sync|tests/mpi"
  "4|[[0],[1],[2],[3]]|float32|4|sync|tests/mpi"
  "4|[[0,1],[2,3]]|float16|0.00001|sync|tests/mpi/test_strategies.py"
  "1|[[0]]|float32|4|async|tests/mpi/test_async_rules.py tests/mpi/test_staleness.py"
  "2|[[0],[1]]|float32|4|async|tests/mpi/test_async_rules.py tests/mpi/test_staleness.py"
  "4|[[0,1],[2,3]]|float32|4|async|tests/mpi/test_async_rules.py tests/mpi/test_staleness.py"
  "4|[[0],[1,2,3]]|float32|4|async|tests/mpi/test_async_rules.py tests/mpi/test_staleness.py"
  "4|[[0],[1],[2],[3]]|float32|4|async|tests/mpi/test_async_rules.py tests/mpi/test_staleness.py"
  "1|[[0]]|int4|4|sync|tests/mpi/test_compressed_wire.py"
  "2|[[0],[1]]|int8|4|sync|tests/mpi/test_compressed_wire.py"
  "4|[[0,1],[2,3]]|int4|4|sync|tests/mpi/test_compressed_wire.py"
  "4|[[0],[1],[2],[3]]|int8|4|sync|tests/mpi/test_compressed_wire.py"
  "2|[[0],[1]]|int4|4|async|tests/mpi/test_compressed_wire.py"
  "4|[[0,1],[2,3]]|int8|4|async|tests/mpi/test_compressed_wire.py"
  "1|[[0]]|float32|4|sync|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "4|[[0,1],[2,3]]|float32|4|sync|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "4|[[0],[1,2,3]]|float32|4|sync|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "2|[[0],[1]]|float32|4|async|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "4|[[0,1],[2,3]]|float32|4|async|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "4|[[0,1],[2,3]]|float16|0.00001|sync|tests/mpi/test_torch_strategies.py|torch"
  "2|[[0],[1]]|int8|4|sync|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "4|[[0,1],[2,3]]|int4|4|sync|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
  "4|[[0,1],[2,3]]|int8|4|async|tests/mpi/test_torch_strategies.py tests/mpi/test_torch_checkpoint.py|torch"
)
phase mpi || runs=()
for run in "${runs[@]}"; do
  IFS='|' read -r np groups wire bucket mode tests framework <<< "$run"
  framework="${framework:-mxnet}"
  tag="np$np-g$(echo "$groups" | sed 's/\],\[/./g' | tr -d '[], ')-$wire"   # e.g. np4-g01.23-float32
  [ "$mode" = sync ] || tag="$tag-$mode"
  [ "$framework" = mxnet ] || tag="$tag-$framework"
  # HVD_PS_TEST_MPI_RUNS (a grep pattern over the tags) keeps only some runs, e.g. for stress.sh
  if [ -n "${HVD_PS_TEST_MPI_RUNS:-}" ] && ! grep -qE "$HVD_PS_TEST_MPI_RUNS" <<< "$tag"; then
    continue
  fi
  paths=(); for t in $tests; do paths+=("$ROOT/$t"); done
  extra=()
  case "$wire" in int8|int4) extra=(-x HVD_PS_WIRE_BLOCK=8 -x HVD_PS_NUM_SERVERS=2) ;; esac
  step "MPI tests, world size $np, groups $groups, wire $wire, buckets of $bucket MB, $mode tier, $framework (mpirun + pytest-mpi)"
  timeout -k 5 300 mpirun -np "$np" --oversubscribe --bind-to none -x OMP_NUM_THREADS \
    -x MXNET_CPU_WORKER_NTHREADS -x PATH -x HVD_PS_TIMEOUT -x HVD_PS_TEST_GROUPS="$groups" \
    -x HVD_PS_WIRE_DTYPE="$wire" -x HVD_PS_BUCKET_MB="$bucket" -x HVD_PS_TEST_MODE="$mode" \
    -x OMPI_MCA_mpi_yield_when_idle -x HVD_PS_TEST_FRAMEWORK="$framework" "${extra[@]}" \
    "$ROOT/scripts/mpi_rank.sh" "$OUT/$tag" -p no:cacheprovider --with-mpi "${paths[@]}" "$@"
  rc=$?; [ $rc -eq 0 ] || { status=1; echo "mpirun -np $np ($groups, $wire) exited $rc"; }
done

step "summary"
python "$ROOT/scripts/summarize.py" "$OUT" || status=1
exit $status
