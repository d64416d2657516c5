"""Two fixes to Horovod 0.28.1's sources before scripts/bootstrap.sh builds them.

``python scripts/patch_horovod.py HOROVOD_SOURCE_DIR`` (the unpacked sdist). Idempotent.

1. A use-after-free. In ``horovod/common/operations.cc`` the broadcast, alltoall and join
enqueue functions log the op's ``name`` *after* handing the op to Horovod's background thread.
With MXNet, ``name`` lives in the op's parameters, which MXNet frees as soon as the op
completes, and a broadcast inside a process set of one rank (or whose peers were all waiting)
completes at once on the background thread. The MXNet engine thread that enqueued it then reads
a freed string: mostly harmless, but seen here as a segfault in the middle of an MPI test
session and as a process that spent two minutes copying a garbage "name" at exit. The fix keeps
a copy of the name, taken before the op is enqueued, for the log line.

2. Building against PyTorch 2.1 or later. ``horovod/torch/CMakeLists.txt`` compiles the PyTorch
extension as C++14, which PyTorch's headers refuse since 2.1 (they need C++17). Horovod's own
fix (set C++17 for PyTorch >= 2.1) is merged upstream but in no release; this sets C++17 for
the PyTorch extension alone, as that fix does for the PyTorch versions hvd_ps pins.
"""

from __future__ import annotations

import sys
from pathlib import Path

ENQUEUE = "  Status status = process_set.tensor_queue.AddToTensorQueue(e, message);\n"
OK = "  if (status.ok()) {\n"
TRACE = "    LOG(TRACE, horovod_global.global_controller->GetRank())\n"
LOG_NAME = '        << "Enqueued " << name;\n'
COPY = "  const std::string enqueued_name = name;  // hvd_ps: name may be freed once enqueued\n"
LOG_COPY = '        << "Enqueued " << enqueued_name;\n'
EXPECTED = 3  # broadcast, alltoall, join
#: the PyTorch extension's C++ standard (inside ``if(NOT Pytorch_VERSION VERSION_LESS "1.5.0")``)
CXX14 = "    set(CMAKE_CXX_STANDARD 14)\n"
CXX17 = "    set(CMAKE_CXX_STANDARD 17)  # hvd_ps: PyTorch >= 2.1 needs C++17\n"


def patch(text: str) -> str:
    """The fixed source; raises ValueError if ``text`` is not the 0.28.1 file it expects."""
    if text.count(COPY) == EXPECTED:
        return text  # patched already
    block = ENQUEUE + OK + TRACE
    found = text.count(block + LOG_NAME)
    if found != EXPECTED:
        raise ValueError(
            f"expected {EXPECTED} enqueue sites that log the name afterwards, found {found}: "
            "not Horovod 0.28.1's operations.cc"
        )
    return text.replace(block + LOG_NAME, COPY + block + LOG_COPY)


def patch_torch_cmake(text: str) -> str:
    """The PyTorch extension's CMakeLists.txt built as C++17; raises ValueError if ``text`` is
    not the 0.28.1 file it expects."""
    if text.count(CXX17) == 1:
        return text  # patched already
    found = text.count(CXX14)
    if found != 1:
        raise ValueError(
            f"expected one line setting C++14 for PyTorch, found {found}: not Horovod "
            "0.28.1's horovod/torch/CMakeLists.txt"
        )
    return text.replace(CXX14, CXX17)


#: each source file and its fix
FIXES = (
    (("horovod", "common", "operations.cc"), patch),
    (("horovod", "torch", "CMakeLists.txt"), patch_torch_cmake),
)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    for parts, fix in FIXES:
        path = Path(sys.argv[1]).joinpath(*parts)
        try:
            path.write_text(fix(path.read_text()))
        except (OSError, ValueError) as err:
            print(f"patch_horovod: {path}: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
