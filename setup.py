"""Build of hvd_ps: the Python package, the fused-buffer op ``hvd_ps._fusion`` and ``hvdps-run``.

The op is compiled against the C API headers and the ``libmxnet.so`` shipped in the installed
mxnet wheel, so mxnet must be installed first and the build must see it:
``pip install --no-build-isolation -e .`` (scripts/bootstrap.sh does this).
"""

import glob
import importlib.util
import os
import re
import sys

from setuptools import Extension, find_packages, setup


def mxnet_dir() -> str:
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "hvd_ps: building the fused-buffer op needs mxnet==1.9.1 installed in this Python "
            "first; then run: pip install --no-build-isolation -e ."
        )
    return list(spec.submodule_search_locations)[0]


def version() -> str:
    """``__version__`` as written in hvd_ps/__init__.py (read as text: importing is not needed)."""
    with open(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "hvd_ps", "__init__.py")
    ) as f:
        m = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    if m is None:
        sys.exit("hvd_ps: no __version__ in hvd_ps/__init__.py")
    return m.group(1)


MX = mxnet_dir()
fusion = Extension(
    "hvd_ps._fusion",
    sources=sorted(glob.glob(os.path.join("cpp", "*.cc"))),
    include_dirs=["cpp", os.path.join(MX, "include")],
    library_dirs=[MX],
    runtime_library_dirs=[MX],
    extra_link_args=[os.path.join(MX, "libmxnet.so"), "-pthread"],
    extra_compile_args=["-O3", "-std=c++17", "-pthread", "-fvisibility=hidden", "-Wall"],
    language="c++",
)

setup(
    name="hvd_ps",
    version=version(),
    description="Horovod groups as clients of an MXNet parameter server (MXNET-MPI, rebuilt)",
    packages=find_packages(include=["hvd_ps", "hvd_ps.*"]),
    ext_modules=[fusion],
    python_requires=">=3.8",
    # Horovod 0.28.1 built with MXNet and MPI is needed too; it is not listed, because pip
    # would build it without MXNet support (docs/install.md says how to build it)
    install_requires=["numpy<1.24", "mxnet==1.9.1", "mpi4py>=3.1", "psutil>=5.9", "pyzmq>=22"],
    entry_points={"console_scripts": ["hvdps-run = hvd_ps.launch:main"]},
)
