"""Build the Cython state-counter kernel against numpy's headers."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "onnx_state.count._counter",
        ["onnx_state/count/_counter.pyx"],
        include_dirs=[np.get_include(), "onnx_state/count"],
        depends=["onnx_state/count/_pack.h", "onnx_state/count/_mem.h"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
