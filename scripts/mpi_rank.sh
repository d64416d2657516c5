#!/usr/bin/env bash
# One rank of an MPI test run: rank 0 prints pytest's report, the others log to a file that is
# shown only when that rank fails. Usage: mpi_rank.sh OUT_PREFIX PYTEST_ARGS...
prefix=$1; shift
rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}
if [ "$rank" = 0 ]; then
  exec python -m pytest -q --junitxml="$prefix-rank$rank.xml" "$@"
fi
python -m pytest -q --junitxml="$prefix-rank$rank.xml" "$@" > "$prefix-rank$rank.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then echo "---- rank $rank failed (exit $rc):"; tail -n 60 "$prefix-rank$rank.log"; fi
exit $rc
