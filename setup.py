"""Package metadata lives in pyproject.toml; this file declares the one C extension.

The extension is optional: without a C compiler the install still succeeds and the parser
counts bytes with numpy instead (same values, slower; see pe_assets/_bytecount.c).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "pe_assets._bytecount",
            sources=["pe_assets/_bytecount.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
