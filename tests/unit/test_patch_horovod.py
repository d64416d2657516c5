"""scripts/patch_horovod.py: the fixes bootstrap applies to Horovod 0.28.1's sources."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "patch_horovod.py"


def _module():
    spec = importlib.util.spec_from_file_location("patch_horovod", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _site(kind: str) -> str:
    """An enqueue function's tail as Horovod 0.28.1 writes it (logging after the enqueue)."""
    return (
        f"Status Enqueue{kind}(const std::string& name) {{\n"
        "  Status status = process_set.tensor_queue.AddToTensorQueue(e, message);\n"
        "  if (status.ok()) {\n"
        "    LOG(TRACE, horovod_global.global_controller->GetRank())\n"
        '        << "Enqueued " << name;\n'
        "  }\n  return status;\n}\n"
    )


def test_the_name_is_copied_before_the_op_is_enqueued_and_logged_from_the_copy():
    mod = _module()
    source = "// head\n" + "".join(_site(k) for k in ("Broadcast", "Alltoall", "Join"))
    fixed = mod.patch(source)
    for k in ("Broadcast", "Alltoall", "Join"):
        body = fixed[fixed.index(f"Enqueue{k}") :]
        body = body[: body.index("return status;")]
        copy = body.index("const std::string enqueued_name = name;")
        assert copy < body.index("AddToTensorQueue"), k
        assert '<< "Enqueued " << enqueued_name;' in body, k
        assert '<< "Enqueued " << name;' not in body, k
    assert mod.patch(fixed) == fixed  # a second run changes nothing


def test_another_source_is_refused_naming_what_was_found():
    mod = _module()
    with pytest.raises(ValueError, match="found 1: not Horovod 0.28.1's operations.cc"):
        mod.patch(_site("Broadcast"))


#: the lines of Horovod 0.28.1's horovod/torch/CMakeLists.txt around the C++ standard
TORCH_CMAKE = (
    "add_definitions(-DPYTORCH_VERSION=${VERSION_DEC} -DTORCH_API_INCLUDE_EXTENSION_H=1)\n"
    'if(NOT Pytorch_VERSION VERSION_LESS "1.5.0")\n'
    "    set(CMAKE_CXX_STANDARD 14)\n"
    "endif()\n"
)


def test_the_pytorch_extension_is_built_as_cxx17_and_another_file_is_refused():
    mod = _module()
    fixed = mod.patch_torch_cmake(TORCH_CMAKE)
    assert "set(CMAKE_CXX_STANDARD 17)" in fixed and "STANDARD 14" not in fixed
    assert mod.patch_torch_cmake(fixed) == fixed  # a second run changes nothing
    with pytest.raises(ValueError, match="found 0: not Horovod 0.28.1's horovod/torch"):
        mod.patch_torch_cmake("project(other)\n")


def test_the_script_fixes_both_files_of_an_unpacked_sdist(tmp_path):
    import subprocess
    import sys

    common, torch_dir = tmp_path / "horovod" / "common", tmp_path / "horovod" / "torch"
    common.mkdir(parents=True)
    torch_dir.mkdir(parents=True)
    (common / "operations.cc").write_text(
        "".join(_site(k) for k in ("Broadcast", "Alltoall", "Join"))
    )
    (torch_dir / "CMakeLists.txt").write_text(TORCH_CMAKE)
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert "enqueued_name" in (common / "operations.cc").read_text()
    assert "STANDARD 17" in (torch_dir / "CMakeLists.txt").read_text()
    (torch_dir / "CMakeLists.txt").write_text("nothing\n")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True)
    assert done.returncode == 1 and b"CMakeLists.txt" in done.stderr
