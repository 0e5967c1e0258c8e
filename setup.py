"""Build driver: setuptools hands the extension ``llp_kernels._C`` to CMake.

CMake (``CMakeLists.txt``) builds one pybind11 module from ``csrc/``: the CPU
kernels always, the CUDA kernels whenever it finds a CUDA compiler. Nothing here
imports torch, so build isolation works and one build serves every torch.

Environment knobs (all optional):
  LLP_CUDA=0|1          0 skips the CUDA probe; 1 makes a missing CUDA compiler an error
  LLP_CUDA_ARCHS        CUDA architectures, e.g. "80;90" (default "80;90")
  LLP_NATIVE_ARCH=0     do not compile the CPU kernels with -march=native
  LLP_WERROR=1          treat compiler warnings as errors (CI sets this)
  LLP_BUILD_TYPE        CMake build type (default Release)
  CMAKE_BUILD_PARALLEL_LEVEL   parallel build jobs (default: CPU count)
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_file = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_dir = out_file.parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        build_type = os.environ.get("LLP_BUILD_TYPE", "Release")

        args = [
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DLLP_OUTPUT_DIR={out_dir}",
            f"-DLLP_MODULE_SUFFIX={out_file.name[len('_C'):]}",
        ]
        for env, var in (("LLP_CUDA", "LLP_CUDA"), ("LLP_CUDA_ARCHS", "LLP_CUDA_ARCHS"),
                         ("LLP_NATIVE_ARCH", "LLP_NATIVE_ARCH"), ("LLP_WERROR", "LLP_WERROR")):
            if os.environ.get(env):
                args.append(f"-D{var}={os.environ[env]}")

        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", build_type,
                        "--parallel", jobs], check=True)
        if not out_file.exists():
            raise RuntimeError(f"CMake finished but {out_file} was not produced")


setup(
    ext_modules=[CMakeExtension("llp_kernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
