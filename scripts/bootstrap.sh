#!/usr/bin/env bash
# Installs everything hvd_ps needs, idempotently; sourced by scripts/demo.sh and scripts/test.sh.
#   1. Open MPI from the OS (skipped when mpicc is already there), a C++ compiler and stunnel
#   2. a virtualenv in .venv/
#   3. the pinned Python packages (requirements.txt, and PyTorch from requirements-torch.txt)
#   4. Horovod 0.28.1 built from source with MXNet + PyTorch + MPI (and two fixes:
#      scripts/patch_horovod.py), checked with horovodrun --check-build
#   5. hvd_ps itself (editable), which compiles the fused-buffer op in cpp/
# A stamp file per step makes a second run take seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
HOROVOD_VERSION=0.28.1

# One bootstrap at a time per checkout: two commands started together must not install into
# the same virtualenv at once (the lock is released once everything is in place).
exec 9> "$ROOT/.bootstrap.lock"
flock -w 1800 9 || { echo "[bootstrap] ERROR: another bootstrap of $ROOT held its lock for 30 min" >&2; exit 1; }

# bold only on a terminal: a log file or a pipe gets plain text
say() { if [ -t 1 ]; then printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; else printf '[bootstrap] %s\n' "$*"; fi; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root or sudo to run: $*"; fi
}

# 1. OS packages ----------------------------------------------------------------------------
missing=()
command -v mpicc >/dev/null || missing+=(openmpi-bin libopenmpi-dev)
command -v g++ >/dev/null || missing+=(g++)
# the TLS tunnels between the hosts of a job (hvd_ps/launch/tunnel_endpoint.py)
command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ -f "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] \
  || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing OS packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v mpicc >/dev/null || die "mpicc still missing after installing Open MPI"

# 2. virtualenv -------------------------------------------------------------------------------
if [ ! -x "$PY" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# 3. pinned packages --------------------------------------------------------------------------
req_hash=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-torch.txt" | sha1sum | cut -c1-12)
if [ ! -f "$VENV/.req-$req_hash" ]; then
  say "installing pinned Python packages"
  "${PIP[@]}" install -q -r "$ROOT/requirements.txt" 2> >(grep -v 'is ignored: it is neither' >&2)
  say "installing PyTorch (CPU only; requirements-torch.txt says why without its dependencies)"
  "${PIP[@]}" install -q --no-deps -r "$ROOT/requirements-torch.txt" \
    2> >(grep -v 'is ignored: it is neither' >&2)
  rm -f "$VENV"/.req-*; touch "$VENV/.req-$req_hash"
fi

# 4. Horovod from source, with MXNet and MPI --------------------------------------------------
hvd_ok() {
  # the report is read whole first: `horovodrun ... | grep -q` under pipefail failed whenever
  # grep quit before horovodrun had written the rest (a broken pipe), and set off a rebuild
  local report
  report=$("$VENV/bin/horovodrun" --check-build 2>/dev/null) || return 1
  grep -q '\[X\] MXNet' <<< "$report" && grep -q '\[X\] PyTorch' <<< "$report" &&
    grep -q '\[X\] MPI' <<< "$report" &&
    # torch first: torch imported after horovod.mxnet crashes (docs/troubleshooting.md)
    "$PY" -c 'import horovod.torch, horovod.mxnet' 2>/dev/null
}
# Once built and checked, the stamp stands for the check as long as Horovod's MXNet library is
# still there (the full check imports MXNet and Horovod: tens of seconds on a loaded machine).
hvd_patch=$(sha1sum "$ROOT/scripts/patch_horovod.py" | cut -c1-8)
hvd_stamped() {
  [ -f "$VENV/.horovod-$HOROVOD_VERSION-$hvd_patch" ] &&
    compgen -G "$VENV/lib/python3*/site-packages/horovod/mxnet/mpi_lib*.so" > /dev/null &&
    compgen -G "$VENV/lib/python3*/site-packages/horovod/torch/mpi_lib*.so" > /dev/null
}
# Built from the sdist with scripts/patch_horovod.py's fixes (a use-after-free in Horovod's
# broadcast); the wheel is kept in a cache of its own, so a second checkout installs it in seconds
# (pip caches no wheel built from a local directory).
# (it links against MXNet's and PyTorch's libraries: the cache is per Python, MXNet and torch)
hvd_key="$("$PY" -c 'import sys; print("py%d%d" % sys.version_info[:2])')-$(grep '^mxnet==' "$ROOT/requirements.txt" | tr -d '=')-$(grep '^torch==' "$ROOT/requirements-torch.txt" | tr -d '=')"
hvd_wheels="${XDG_CACHE_HOME:-$HOME/.cache}/hvd_ps/horovod-$HOROVOD_VERSION-$hvd_patch-$hvd_key"
if ! hvd_stamped; then
  if ! compgen -G "$hvd_wheels/horovod-*.whl" > /dev/null; then
    say "building Horovod $HOROVOD_VERSION with MXNet + PyTorch + MPI (about 3 minutes on 2 cores, once)"
    src=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps --no-binary :all: -d "$src" "horovod==$HOROVOD_VERSION"
    tar -xzf "$src"/horovod-"$HOROVOD_VERSION".tar.gz -C "$src"
    "$PY" "$ROOT/scripts/patch_horovod.py" "$src/horovod-$HOROVOD_VERSION" ||
      die "could not patch Horovod $HOROVOD_VERSION's sources"
    mkdir -p "$hvd_wheels"
    HOROVOD_WITH_MXNET=1 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_GLOO=1 CMAKE_POLICY_VERSION_MINIMUM=3.5 \
    MAKEFLAGS="-j$(nproc)" PATH="$VENV/bin:$PATH" \
      "${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$src/wheel" \
      "$src/horovod-$HOROVOD_VERSION" 2> >(grep -v 'is ignored: it is neither' >&2)
    mv "$src"/wheel/horovod-*.whl "$hvd_wheels/"
    rm -rf "$src"
  else
    say "installing Horovod $HOROVOD_VERSION (patched) from $hvd_wheels"
  fi
  # its dependencies are pinned in requirements.txt
  "${PIP[@]}" install -q --no-deps --force-reinstall "$hvd_wheels"/horovod-*.whl
  hvd_ok || { "$VENV/bin/horovodrun" --check-build || true
              die "Horovod was built without MXNet, PyTorch or MPI support (see the check above)"; }
  rm -f "$VENV"/.horovod-*; touch "$VENV/.horovod-$HOROVOD_VERSION-$hvd_patch"
fi

# 5. hvd_ps and its C++ op --------------------------------------------------------------------
src_hash=$(cat "$ROOT/setup.py" "$ROOT"/cpp/* 2>/dev/null | sha1sum | cut -c1-12)
# (the op's library is checked by name: `import hvd_ps` alone succeeds without it)
if [ ! -f "$VENV/.hvdps-$src_hash" ] || ! compgen -G "$ROOT/hvd_ps/_fusion*.so" > /dev/null ||
   ! "$PY" -c 'import hvd_ps' 2>/dev/null; then
  say "building hvd_ps and its fused-buffer op"
  (cd "$ROOT" && "${PIP[@]}" install -q --no-build-isolation --no-deps -e . \
    2> >(grep -v 'is ignored: it is neither' >&2))
  rm -f "$VENV"/.hvdps-*; touch "$VENV/.hvdps-$src_hash"
fi

exec 9>&-  # release the lock

export PATH="$VENV/bin:$PATH"
export OMP_NUM_THREADS=1 MXNET_CPU_WORKER_NTHREADS=1
# horovodrun declares one slot per rank; with more ranks than cores Open MPI must not busy-poll
export OMPI_MCA_mpi_yield_when_idle=1
# Open MPI refuses to run as root unless told; these are the documented switches.
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
