#!/usr/bin/env bash
# The README's main job: 4 ranks in 2 groups train an MLP on scikit-learn's digits with hvd_ps
# (EASGD through the embedded parameter server that rank 0 starts on loopback: nothing to
# configure). Rank 0 prints one whole line per epoch — the job's loss, the global model's test
# accuracy, then each group's own loss and accuracy in group order — then the final accuracy and
# where the plot is. horovodrun tags every line of rank 0 with "[1,0]<stdout>:"; the lines of
# this script itself start with "[demo]".
#
#   scripts/demo.sh                         # the default job (EASGD, sync, period 4)
#   scripts/demo.sh --sync diloco           # any other flag goes to examples/train_digits.py
#   DEMO_OUT=/some/dir DEMO_TIMEOUT=300 scripts/demo.sh
#
# Installs what is missing first (scripts/bootstrap.sh; the first run builds Horovod, about
# 6 minutes on 2 cores; later runs take seconds).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/bootstrap.sh
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"

OUT="${DEMO_OUT:-${TMPDIR:-/tmp}/hvd_ps-demo}"
mkdir -p "$OUT"
PLOT="$OUT/digits.png"
METRICS="$OUT/digits.json"
rm -f "$PLOT" "$METRICS"

# One thread per rank: 4 ranks may share very few cores.
export OMP_NUM_THREADS=1 MXNET_CPU_WORKER_NTHREADS=1
# horovodrun runs `mpirun -H localhost:4`, so Open MPI believes it has a core per rank and
# busy-polls; with fewer cores than ranks that makes every collective ~5x slower. Yield instead.
export OMPI_MCA_mpi_yield_when_idle=1

say() { if [ -t 1 ]; then printf '\033[1m[demo]\033[0m %s\n' "$*"; else printf '[demo] %s\n' "$*"; fi; }
say "horovodrun -np 4 python examples/train_digits.py --group-size 2${*:+ $*}"
rc=0
timeout -k 10 "${DEMO_TIMEOUT:-600}" \
  horovodrun -np 4 python examples/train_digits.py --group-size 2 \
  --plot "$PLOT" --json "$METRICS" "$@" || rc=$?
if [ "$rc" -ne 0 ]; then
  if [ "$rc" -eq 124 ]; then
    echo "[demo] the job did not finish within ${DEMO_TIMEOUT:-600} s" >&2
  fi
  echo "[demo] FAILED (exit code $rc)" >&2
  exit "$rc"
fi
python - "$METRICS" "$PLOT" <<'EOF'
import json
import sys

m = json.load(open(sys.argv[1]))
print(
    f"[demo] done: {100 * m['final_test_accuracy']:.2f}% test accuracy of the global model "
    f"after {m['epochs']} epochs ({m['train_time_s']:.1f} s of training, "
    f"{m['total_time_s']:.1f} s in the script)"
)
print(f"[demo] plot: {sys.argv[2]}")
print(f"[demo] metrics: {sys.argv[1]}")
EOF
