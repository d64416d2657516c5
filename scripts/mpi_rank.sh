#!/usr/bin/env bash
# One rank of an MPI test run. Usage: mpi_rank.sh OUT_PREFIX PYTEST_ARGS...
#
# Every rank's whole output, stdout and stderr, is kept in OUT_PREFIX-rankN.log; pytest captures
# only Python's sys.stdout/stderr (--capture=sys), so what native code (ps-lite, MXNet, the C++
# runtime) and hvd_ps's fatal exits write to the file descriptors lands there even when the
# process dies in the middle of a test (pytest's default fd capture loses it with the process).
# Rank 0 also shows its own log live. When a rank fails, its whole log is printed. Python's
# faulthandler dumps every Python thread on a fatal signal. A rank that dies of a signal leaves a
# core in OUT_PREFIX-rankN.core/ and, when gdb is installed, every native thread's backtrace is
# appended to its log (what faulthandler cannot show).
prefix=$1; shift
rank=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}
log="$prefix-rank$rank.log"
cores="$prefix-rank$rank.core"
mkdir -p "$cores"
ulimit -c unlimited 2>/dev/null || true
export PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1
# the kernel writes a core named "core" into the dying process's working directory, so each
# rank runs in a directory of its own (test paths must be absolute)
here=$PWD
if [ "$rank" = 0 ]; then
  (cd "$cores" && exec python -X faulthandler -m pytest -c "$here/pyproject.toml" -q --capture=sys \
    --junitxml="$prefix-rank$rank.xml" "$@" 2>&1) | tee "$log"
  rc=${PIPESTATUS[0]}
else
  (cd "$cores" && exec python -X faulthandler -m pytest -c "$here/pyproject.toml" -q --capture=sys \
    --junitxml="$prefix-rank$rank.xml" "$@") > "$log" 2>&1
  rc=$?
fi
if [ $rc -gt 128 ] && [ -f "$cores/core" ] && command -v gdb >/dev/null; then
  {
    echo "---- native backtraces of rank $rank (signal $((rc - 128))):"
    timeout 120 gdb -q -batch -ex 'thread apply all bt 30' "$(command -v python)" "$cores/core"
  } >> "$log" 2>&1
fi
[ -f "$cores/core" ] || rmdir "$cores" 2>/dev/null
if [ $rc -ne 0 ] && [ "$rank" != 0 ]; then
  echo "---- rank $rank failed (exit $rc); its whole log ($log):"
  cat "$log"
  echo "---- end of rank $rank's log"
elif [ $rc -ne 0 ] && [ $rc -gt 128 ]; then
  echo "---- rank 0 died (exit $rc); native backtraces, if any, are in $log"
  sed -n '/^---- native backtraces/,$p' "$log"
fi
exit $rc
