"""Build the Cython kernels (state counter, Hamming distances) against numpy's headers."""

import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# Every x86-64 CPU of the last 15 years has POPCNT; without the flag gcc emits a bit-twiddling
# sequence several times slower for the Hamming kernel.
POPCNT = ["-mpopcnt"] if platform.machine().lower() in ("x86_64", "amd64") else []

extensions = [
    Extension(
        "onnx_state.count._counter",
        ["onnx_state/count/_counter.pyx"],
        include_dirs=[np.get_include(), "onnx_state/count"],
        depends=["onnx_state/count/_pack.h", "onnx_state/count/_mem.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    ),
    Extension(
        "onnx_state.count._hamming",
        ["onnx_state/count/_hamming.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3", *POPCNT],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
