"""The CUDA extension compiles and links on this GPU-less machine (same code path as runtime).

Skips when no nvcc can be found, unless STYLIZE_REQUIRE_CUDA_BUILD=1 (CI), which turns a
missing toolkit into a failure.  The build is cached (~/.cache/stylize/ext/<hash>), so only a
change of the sources, torch, or the toolkit recompiles.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from stylize.ops import build

pytestmark = [pytest.mark.cuda_build, pytest.mark.slow]


def _require() -> bool:
    return os.environ.get("STYLIZE_REQUIRE_CUDA_BUILD", "") in {"1", "true", "yes"}


@pytest.fixture(scope="module")
def ext():
    missing = None
    if torch.version.cuda is None:
        missing = "this torch build has no CUDA support"
    elif build.find_cuda_home() is None:
        missing = "no nvcc found (PATH, CUDA_HOME)"
    if missing:
        if _require():
            pytest.fail(f"STYLIZE_REQUIRE_CUDA_BUILD=1 but {missing}")
        pytest.skip(f"cannot build the CUDA extension: {missing}")
    start = time.perf_counter()
    module = build.build_extension(verbose=False, arch=None)  # sm_90 without a GPU
    print(f"extension ready in {time.perf_counter() - start:.1f} s: {module.__file__}")
    return module


def test_extension_builds_links_and_imports(ext):
    so = Path(ext.__file__)
    assert so.is_file() and so.suffix == ".so"
    assert so.parent.parent == build.cache_root() / "ext"
    assert callable(ext.forward) and callable(ext.backward)


def test_bindings_reject_cpu_tensors_cleanly(ext):
    # Exercises the compiled argument checks without a GPU: a clear error, not a crash.
    x = torch.randn(1, 2, 3, 3)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        ext.forward(x, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match="must be a CUDA tensor"):
        ext.backward(x, x, torch.zeros(1, 2), torch.ones(1, 2), None, None, True)


def test_build_key_changes_with_sources(tmp_path, monkeypatch):
    home = build.find_cuda_home()
    if home is None:
        pytest.skip("no nvcc found")
    key = build._build_key(home, "9.0")
    assert key == build._build_key(home, "9.0")
    assert key != build._build_key(home, "8.0")
    for name in build.SOURCES + build.HEADERS:
        (tmp_path / name).write_bytes((build.CSRC / name).read_bytes())
    (tmp_path / build.SOURCES[1]).write_bytes(b"// changed\n")
    monkeypatch.setattr(build, "CSRC", tmp_path)
    assert build._build_key(home, "9.0") != key
