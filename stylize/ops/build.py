"""Just-in-time build of the CUDA instance-norm extension (torch.utils.cpp_extension + ninja).

`get_extension()` builds (once per process, cached on disk) and returns the module, or None
with the reason recorded for `backend_status()`.  `build_extension()` is the raw build used by
the tests: it returns the module or raises `ExtensionBuildError` with the compiler output.

Toolkit discovery: $CUDA_HOME / $CUDA_PATH, else the `nvcc` on PATH, following shell wrappers
(`exec /real/path/nvcc "$@"`) and symlinks to the real compiler.  Headers that the toolkit
lacks but torch's CUDA headers include (cusparse.h, cublas_v2.h, ...) come from pip-installed
`nvidia-*` packages, found through the `nvidia` namespace package.
Cache: $STYLIZE_CACHE_DIR or ~/.cache/stylize, subfolder ext/<hash of sources, torch, CUDA,
compiler, arch>.  STYLIZE_NO_CUDA_EXT=1 disables the extension.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("instance_norm.cpp", "instance_norm_kernels.cu")
HEADERS = ("instance_norm.h",)
COMPILE_ONLY_ARCH = "9.0"  # H100 / H200, used when no GPU is present


class ExtensionBuildError(RuntimeError):
    """The CUDA extension could not be built; the message holds the compiler output."""


_lock = threading.Lock()
_state: dict[str, object] = {"done": False, "module": None, "reason": "not tried yet"}


def extension_disabled() -> bool:
    """True when STYLIZE_NO_CUDA_EXT=1 forces the PyTorch fallback."""
    return os.environ.get("STYLIZE_NO_CUDA_EXT", "").strip().lower() in {"1", "true", "yes", "on"}


def _resolve_wrapper(path: Path, depth: int = 0) -> Path:
    """Follow symlinks and `exec /path/to/nvcc` shell wrappers to the real nvcc binary."""
    path = path.resolve()
    if depth > 8:
        return path
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return path
    if not head.startswith(b"#!"):
        return path
    text = head.decode("utf-8", "replace")
    for match in re.finditer(r"""(?:^|\s)exec\s+["']?([^\s"']*nvcc)["']?""", text):
        target = Path(match.group(1))
        if target.is_absolute() and target.exists():
            return _resolve_wrapper(target, depth + 1)
    return path


def find_cuda_home() -> Path | None:
    """The CUDA toolkit root (holding bin/nvcc), or None when there is no toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        value = os.environ.get(var)
        if value and (Path(value) / "bin" / "nvcc").exists():
            return Path(value)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        default = Path("/usr/local/cuda/bin/nvcc")
        if not default.exists():
            return None
        nvcc = str(default)
    real = _resolve_wrapper(Path(nvcc))
    home = real.parent.parent
    return home if (home / "bin" / "nvcc").exists() else None


def nvidia_include_dirs() -> list[str]:
    """Include folders of pip-installed nvidia-* packages (e.g. nvidia/cu13/include)."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    dirs: list[str] = []
    for root in spec.submodule_search_locations:
        for inc in sorted(Path(root).glob("*/include")):
            if inc.is_dir() and str(inc) not in dirs:
                dirs.append(str(inc))
    return dirs


def _nvcc_version(cuda_home: Path) -> str:
    try:
        out = subprocess.run(
            [str(cuda_home / "bin" / "nvcc"), "--version"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def _arch_for_device() -> str:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return COMPILE_ONLY_ARCH


def cache_root() -> Path:
    return Path(os.environ.get("STYLIZE_CACHE_DIR") or Path.home() / ".cache" / "stylize")


def _build_key(cuda_home: Path, arch: str) -> str:
    import torch

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    for part in (torch.__version__, str(torch.version.cuda), str(cuda_home),
                 _nvcc_version(cuda_home), arch, sys.version):
        h.update(part.encode())
    return h.hexdigest()[:16]


def build_extension(verbose: bool = False, arch: str | None = None) -> ModuleType:
    """Compile (or load from the cache) and import the extension; ExtensionBuildError if not."""
    cuda_home = find_cuda_home()
    if cuda_home is None:
        raise ExtensionBuildError("no CUDA toolkit found (no nvcc on PATH, CUDA_HOME unset)")
    import torch
    import torch.utils.cpp_extension as cpp_ext

    if torch.version.cuda is None:
        raise ExtensionBuildError("this torch build has no CUDA support")
    arch = arch or _arch_for_device()
    num = arch.replace(".", "")
    key = _build_key(cuda_home, arch)
    build_dir = cache_root() / "ext" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch guesses CUDA_HOME from the nvcc wrapper's folder (/usr/local): point it at the toolkit.
    cpp_ext.CUDA_HOME = str(cuda_home)
    os.environ["CUDA_HOME"] = str(cuda_home)
    isystem = [flag for d in nvidia_include_dirs() for flag in ("-isystem", d)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cpp_ext.load(
                name=f"stylize_inorm_{key}",
                sources=[str(CSRC / s) for s in SOURCES],
                extra_cflags=["-O3", *isystem],
                extra_cuda_cflags=[
                    "-O3", "--use_fast_math", "-lineinfo",
                    f"-gencode=arch=compute_{num},code=sm_{num}",
                    f"-gencode=arch=compute_{num},code=compute_{num}",
                    *isystem,
                ],
                build_directory=str(build_dir),
                verbose=verbose,
                with_cuda=True,
            )
    except Exception as exc:  # compiler errors, missing libraries, import failures
        raise ExtensionBuildError(f"{type(exc).__name__}: {exc}") from exc


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return text[:200]


def get_extension() -> ModuleType | None:
    """The built extension, or None (reason in `extension_reason()`); warns once on failure."""
    if _state["done"]:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if _state["done"]:
            return _state["module"]  # type: ignore[return-value]
        module, reason = None, ""
        if extension_disabled():
            reason = "disabled by STYLIZE_NO_CUDA_EXT=1"
        elif find_cuda_home() is None:
            reason = "no CUDA toolkit found (nvcc); install one or set CUDA_HOME"
        else:
            try:
                module = build_extension()
                reason = "built and used"
            except ExtensionBuildError as exc:
                reason = f"build failed: {_first_line(str(exc))}"
        if module is None:
            warnings.warn(
                f"stylize: CUDA instance-norm kernels unavailable ({reason}); "
                "using the PyTorch fallback", RuntimeWarning, stacklevel=3,
            )
        _state.update(done=True, module=module, reason=reason)
        return module


def extension_reason() -> str:
    """Why the extension is or is not in use (after get_extension() ran)."""
    return str(_state["reason"])


def extension_tried() -> bool:
    return bool(_state["done"])
