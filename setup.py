"""The optional C part of the content store (`tutela.contentstore._native`).

Everything else is in pyproject.toml.  The extension needs a C compiler and the headers of
libzstd and OpenSSL (Debian: `gcc libzstd-dev libssl-dev`); without them the build only
warns and Tutela runs its Python path (`tutela.contentstore.native.available()` says which).
BLAKE3's C implementation (CC0 or Apache-2.0) is vendored under `_blake3/`; on x86-64 its
SIMD variants are the assembly files, chosen at run time by CPU.
"""

import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

B3 = "src/tutela/contentstore/_blake3/"
sources = [
    "src/tutela/contentstore/_native.c",
    B3 + "blake3.c",
    B3 + "blake3_dispatch.c",
    B3 + "blake3_portable.c",
]
macros = []
if platform.machine() in ("x86_64", "AMD64") and platform.system() == "Linux":
    sources += [B3 + f"blake3_{v}_x86-64_unix.S" for v in ("sse2", "sse41", "avx2", "avx512")]
else:
    macros += [(f"BLAKE3_NO_{v}", "1") for v in ("SSE2", "SSE41", "AVX2", "AVX512")]
    macros += [("BLAKE3_USE_NEON", "0")]


class BuildExt(build_ext):
    """Lets the compiler take BLAKE3's `.S` files (gcc and clang assemble them)."""

    def build_extensions(self):
        if ".S" not in self.compiler.src_extensions:
            self.compiler.src_extensions.append(".S")
        super().build_extensions()


setup(
    ext_modules=[
        Extension(
            "tutela.contentstore._native",
            sources=sources,
            define_macros=macros,
            libraries=["zstd", "crypto"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
