"""Build the C half: ``libedgeseg`` and ``edgeseg-run`` (``csrc/``) against the installed openvino wheel.

    edgeseg build-c [--build-dir DIR] [--sanitize]

The openvino wheel ships OpenVINO's C headers, ``libopenvino_c`` and its CMake config
(``openvino/cmake``); this module finds that config, runs CMake's configure and build steps
with ``-Wall -Wextra -Werror``, and returns where the two targets are. Needs cmake >= 3.16
and a C11 compiler. The same thing by hand::

    cmake -S csrc -B build/c -DOpenVINO_DIR="$(python -c 'import openvino, pathlib;
        print(pathlib.Path(openvino.__file__).parent / "cmake")')" && cmake --build build/c

Torch-free: imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import EdgesegError

SOURCE_DIR = Path(__file__).resolve().parents[2] / "csrc"  # csrc/ of a git checkout or unpacked sdist
DEFAULT_BUILD_DIR = SOURCE_DIR.parent / "build" / "c"
LIBRARY_NAME = "libedgeseg.so"
PROGRAM_NAME = "edgeseg-run"


@dataclass(frozen=True)
class CBuild:
    """Where one build put its targets."""

    build_dir: Path
    library: Path  # libedgeseg.so
    program: Path  # edgeseg-run
    sanitize: bool  # built with AddressSanitizer + UndefinedBehaviorSanitizer


def openvino_cmake_dir() -> Path:
    """OpenVINO's CMake config folder inside the installed openvino wheel.

    Raises:
        EdgesegError: openvino is not installed, or its wheel lacks the CMake config.
    """
    spec = importlib.util.find_spec("openvino")
    if spec is None or not spec.origin:
        raise EdgesegError(
            "openvino is not installed; `pip install openvino` (or the dev extra:"
            " pip install -e '.[dev]') to build libedgeseg"
        )
    config = Path(spec.origin).parent / "cmake" / "OpenVINOConfig.cmake"
    if not config.is_file():
        raise EdgesegError(
            f"{config.parent}: this openvino wheel has no CMake config"
            " (OpenVINOConfig.cmake); install openvino >= 2024.0 from PyPI"
        )
    return config.parent


def why_cannot_build() -> str | None:
    """The reason ``build_c`` cannot run here (no sources, cmake, compiler or openvino), or None."""
    if not (SOURCE_DIR / "CMakeLists.txt").is_file():
        return (
            f"{SOURCE_DIR}: C sources not found; build-c runs from a git checkout or an unpacked sdist"
            " (its csrc/ beside edgeseg/), not from an installed wheel"
        )
    if shutil.which("cmake") is None:
        return "cmake is not on PATH; install cmake >= 3.16 (apt install cmake or pip install cmake)"
    if not any(shutil.which(cc) for cc in (os.environ.get("CC", "cc"), "cc", "gcc", "clang")):
        return "no C compiler on PATH; install gcc or clang (or set CC)"
    try:
        openvino_cmake_dir()
    except EdgesegError as exc:
        return str(exc)
    return None


def build_c(
    build_dir: Path | None = None, sanitize: bool = False, werror: bool = True, log: Callable[[str], None] | None = None
) -> CBuild:
    """Configure and build ``libedgeseg`` and ``edgeseg-run``.

    Args:
        build_dir: CMake build folder; default ``build/c`` in the repository.
        sanitize: build with ``-fsanitize=address,undefined`` (for tests, not for use).
        werror: compiler warnings are errors (``-Wall -Wextra -Werror``).
        log: progress messages, e.g. ``print``.

    Returns:
        The :class:`CBuild` with the paths of both targets.

    Raises:
        EdgesegError: a missing tool or dependency, or a failed configure or build step
            (its last lines of output in the message).
    """
    reason = why_cannot_build()
    if reason:
        raise EdgesegError(reason)
    build_dir = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    configure = [
        "cmake",
        "-S",
        str(SOURCE_DIR),
        "-B",
        str(build_dir),
        f"-DOpenVINO_DIR={openvino_cmake_dir()}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DEDGESEG_WERROR={'ON' if werror else 'OFF'}",
        f"-DEDGESEG_SANITIZE={'ON' if sanitize else 'OFF'}",
    ]
    jobs = str(max(1, min(os.cpu_count() or 1, 4)))
    for step, command in (
        ("configure", configure),
        ("build", ["cmake", "--build", str(build_dir), "--parallel", jobs]),
    ):
        if log:
            log(f"cmake {step}: {build_dir}")
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stdout + proc.stderr).strip().splitlines()
            first = next((ln.strip() for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
            raise EdgesegError(
                f"{build_dir}: cmake {step} failed: {first[:300]}; fix it and rerun"
                " `edgeseg build-c` (run the cmake command by hand for the full log)"
            )
    return CBuild(build_dir, build_dir / LIBRARY_NAME, build_dir / PROGRAM_NAME, sanitize)


def default_library() -> Path:
    """The ``libedgeseg.so`` to load: ``$EDGESEG_CLIB`` if set, else the default build's."""
    env = os.environ.get("EDGESEG_CLIB")
    return Path(env) if env else DEFAULT_BUILD_DIR / LIBRARY_NAME
