"""Build the Cython state-counter kernel against numpy's headers."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "onnx_state._counter",
        ["onnx_state/_counter.pyx"],
        include_dirs=[np.get_include(), "onnx_state"],
        depends=["onnx_state/_pack.h", "onnx_state/_mem.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
