"""The instance-norm operator against an independent float64 reference.

The case list and `check_case` are shared with scripts/check_gpu.py, which runs every case on
CUDA (with poisoned output memory) where a GPU is available.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import pytest
import torch

from stylize.ops import backend_status, build, instance_norm
from stylize.ops.instance_norm import instance_norm_fwd

# ---------------------------------------------------------------- reference and cases


def reference(x, weight=None, bias=None, eps=1e-5, relu=False):
    """float64 instance norm written from the definition (two-pass mean / biased variance)."""
    x = x.double()
    n, c, h, w = x.shape
    planes = x.reshape(n, c, h * w)
    mean = planes.sum(-1, keepdim=True) / (h * w)
    var = ((planes - mean) ** 2).sum(-1, keepdim=True) / (h * w)
    y = ((planes - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    if weight is not None:
        y = y * weight.double().expand(n, c)[:, :, None, None]
    if bias is not None:
        y = y + bias.double().expand(n, c)[:, :, None, None]
    return torch.clamp_min(y, 0.0) if relu else y


# (rtol, atol) for outputs and for gradients, per dtype
TOL = {
    torch.float32: ((1e-4, 1e-4), (1e-3, 1e-3)),
    torch.float16: ((4e-3, 4e-3), (2e-2, 2e-2)),
    torch.bfloat16: ((2e-2, 2e-2), (6e-2, 6e-2)),
}
FORMS = ("none", "C", "NC")


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int, int]
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    weight: str = "C"  # "none" | "C" | "NC"
    bias: str = "C"
    relu: bool = False
    offset: bool = False  # x starts one element into its storage (unaligned data pointer)
    mean_shift: float = 0.0  # added to x: large values test cancellation-safe statistics

    @property
    def name(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        lay = "cl" if self.channels_last else "nchw"
        extra = ("-offset" if self.offset else "") + (
            f"-shift{self.mean_shift:g}" if self.mean_shift else "")
        return (f"{'x'.join(map(str, self.shape))}-{dt}-{lay}-w{self.weight}-b{self.bias}"
                f"{'-relu' if self.relu else ''}{extra}")


def _matrix() -> list[Case]:
    cases = []
    # every weight/bias form x activation x dtype x layout
    for wf, bf, relu, dt, cl in itertools.product(
        FORMS, FORMS, (False, True), TOL, (False, True)
    ):
        cases.append(Case((2, 3, 5, 7), dt, cl, wf, bf, relu))
    # odd, tiny, wide, vector-aligned, larger planes; both layouts
    for shape in [(1, 1, 1, 1), (2, 3, 1, 1), (1, 2, 3, 5), (1, 2, 1, 257), (2, 4, 8, 8),
                  (1, 40, 9, 11), (2, 3, 64, 65), (1, 2, 200, 100)]:
        for cl in (False, True):
            cases.append(Case(shape, torch.float32, cl, "NC", "C", True))
            cases.append(Case(shape, torch.bfloat16, cl, "C", "NC", False))
    cases.append(Case((2, 3, 16, 16), torch.float32, offset=True, relu=True))
    cases.append(Case((2, 3, 16, 16), torch.float16, offset=True, weight="NC"))
    cases.append(Case((2, 3, 8, 8), torch.float32, mean_shift=1000.0, relu=True))
    cases.append(Case((2, 3, 8, 8), torch.float32, True, mean_shift=1000.0))
    return cases


CASES = _matrix()


def _param(form: str, n: int, c: int, gen, device):
    if form == "none":
        return None
    shape = (c,) if form == "C" else (n, c)
    return (torch.rand(shape, generator=gen) * 1.5 + 0.25).to(device)


def make_inputs(case: Case, device="cpu", seed=0):
    """Fresh random x (case dtype/layout), dy, weight, bias (float32) on `device`."""
    gen = torch.Generator().manual_seed(seed)
    n, c = case.shape[:2]
    numel = n * c * case.shape[2] * case.shape[3]
    base = torch.randn(numel + 1, generator=gen) * 2.0 + 0.5 + case.mean_shift
    flat = base[1:] if case.offset else base[:numel]
    x = flat.to(device, case.dtype)
    if case.offset:  # keep the storage offset of 1 element after the move
        buf = torch.empty(numel + 1, dtype=case.dtype, device=device)
        buf[1:] = x
        x = buf[1:]
    x = x.view(case.shape)
    if case.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(case.shape, generator=gen).to(device, case.dtype)
    w = _param(case.weight, n, c, gen, device)
    b = _param(case.bias, n, c, gen, device)
    if b is not None:
        b = b - 0.9  # so ReLU cuts a good share of the outputs
    return x, dy, w, b


def _close(name, got, want, tol, failures, extra=None, skip=None):
    """allclose with an optional elementwise extra atol and a mask of elements to skip."""
    rtol, atol = tol
    got64 = got.detach().double().cpu()
    want64 = want.detach().double().cpu()
    if got64.shape != want64.shape:
        failures.append(f"{name}: shape {tuple(got64.shape)} != {tuple(want64.shape)}")
        return
    if not torch.isfinite(got64).all():
        failures.append(f"{name}: non-finite values")
        return
    excess = (got64 - want64).abs() - rtol * want64.abs() - atol
    if extra is not None:
        excess = excess - extra
    if skip is not None:
        excess = excess.masked_fill(skip, float("-inf"))
    if excess.numel() and excess.max() > 0:
        failures.append(f"{name}: error over tolerance by {excess.max().item():.3g} (atol {atol})")


def _conditioning(x64, w64):
    """Per-plane bound of float32 rounding in y: |x| * rstd * |w| * 8 ulp.  Matters only for
    ill-conditioned planes (constant planes, H*W == 1, |mean| >> std)."""
    n, c = x64.shape[:2]
    var, _ = torch.var_mean(x64, dim=(2, 3), correction=0, keepdim=True)
    rstd = (var + 1e-5).rsqrt()
    wabs = 1.0 if w64 is None else w64.detach().abs().expand(n, c)[:, :, None, None]
    maxabs = x64.detach().abs().amax(dim=(2, 3), keepdim=True)
    return 8 * 2.0**-24 * maxabs * rstd * wabs


def check_case(case: Case, device="cpu", seed=0, before_call=None) -> list[str]:
    """Forward and backward of `case` on `device` against the float64 reference; returns the
    list of failures (empty when the case passes).  before_call(x) runs right before each op
    call (check_gpu.py poisons the allocator there)."""
    x, dy, w, b = make_inputs(case, device, seed)
    ytol, gtol = TOL[case.dtype]
    failures: list[str] = []
    xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    wg = None if w is None else w.detach().clone().requires_grad_()
    bg = None if b is None else b.detach().clone().requires_grad_()
    if before_call:
        before_call(x)
    y = instance_norm(xg, wg, bg, 1e-5, "relu" if case.relu else None)
    if before_call:
        before_call(x)
    y.backward(dy)

    x64 = x.detach().double().cpu().requires_grad_()
    w64 = None if w is None else w.double().cpu().requires_grad_()
    b64 = None if b is None else b.double().cpu().requires_grad_()
    y64 = reference(x64, w64, b64, 1e-5, case.relu)
    y64.backward(dy.double().cpu())

    if y.dtype != x.dtype:
        failures.append(f"y dtype {y.dtype} != {x.dtype}")
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    if not y.is_contiguous(memory_format=fmt):
        failures.append(f"y lost the memory format (strides {y.stride()})")
    _close("y", y, y64, ytol, failures, extra=_conditioning(x64, w64))
    # ReLU mask: where the exact pre-activation is within float32 rounding of 0 the kernel may
    # decide either way; skip those elements for dx, and allow their whole contribution
    # (|dy| * (1 + |xhat|)) in the parameter gradients.
    ambiguous = None
    allowance = 0.0
    if case.relu:
        with torch.no_grad():
            pre = reference(x64, w64, b64, 1e-5, False)
            ambiguous = pre.abs() < 2e-5
            xhat = reference(x64, None, None, 1e-5, False)
            allowance = (dy.double().cpu().abs() * (1 + xhat.abs()))[ambiguous].sum().item()
    _close("dx", xg.grad, x64.grad, gtol, failures, skip=ambiguous)
    # parameter gradients are sums over H*W values: compare them scaled by 1/sqrt(H*W)
    hw = case.shape[2] * case.shape[3]
    scale = max(1.0, hw**0.5)
    for name, g, g64 in (("dweight", wg, w64), ("dbias", bg, b64)):
        if g is None:
            continue
        _close(name, g.grad / scale, g64.grad / scale, (gtol[0], gtol[1] + allowance / scale),
               failures)
    return failures


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_against_float64_reference(case):
    assert check_case(case) == []


def test_smoke_default_arguments():
    x = torch.randn(2, 4, 6, 6)
    y = instance_norm(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(2, 3), correction=0), torch.ones(2, 4), atol=1e-3,
                               rtol=0)


def test_matches_torch_instance_norm():
    x = torch.randn(3, 5, 9, 10)
    w, b = torch.randn(5), torch.randn(5)
    want = torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5)
    torch.testing.assert_close(instance_norm(x, w, b), want, atol=1e-5, rtol=1e-5)


def test_constant_planes_give_bias():
    x = torch.full((2, 3, 4, 4), 7.0)
    b = torch.tensor([1.0, -2.0, 3.0])
    y = instance_norm(x, torch.ones(3), b)
    # rstd = 1/sqrt(eps) ~ 316 amplifies float32 rounding of the mean: |x| * rstd * 2^-24 ~ 1e-4
    torch.testing.assert_close(y, b[None, :, None, None].expand_as(y), atol=1e-3, rtol=0)


def test_non_contiguous_input():
    base = torch.randn(2, 3, 10, 12)
    x = base[:, :, ::2, 1::3]  # neither contiguous nor channels_last
    w = torch.rand(2, 3)
    torch.testing.assert_close(instance_norm(x, w), reference(x, w).float(), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_zero_size(shape, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    n, c = shape[:2]
    w = torch.ones(c, requires_grad=True)
    b = torch.zeros(n, c, requires_grad=True)
    x.requires_grad_()
    y = instance_norm(x, w, b, activation="relu")
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape and w.grad.shape == (c,) and b.grad.shape == (n, c)
    assert not w.grad.any() and not b.grad.any()


GRADCHECK_FORMS = [("C", "C", True), ("NC", "NC", False), ("none", "NC", True),
                   ("NC", "none", False), ("none", "none", True)]


@pytest.mark.parametrize("wf,bf,relu", GRADCHECK_FORMS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_float64(wf, bf, relu, channels_last):
    gen = torch.Generator().manual_seed(1)
    n, c = 2, 3
    x = torch.randn(n, c, 4, 5, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = None if wf == "none" else torch.rand((c,) if wf == "C" else (n, c), generator=gen,
                                             dtype=torch.float64).add_(0.5).requires_grad_()
    b = None if bf == "none" else torch.randn((c,) if bf == "C" else (n, c), generator=gen,
                                              dtype=torch.float64).requires_grad_()
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*args):
        it = iter(args)
        xx = next(it)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return instance_norm(xx, ww, bb, 1e-5, "relu" if relu else None)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


OPCHECK_ARGS = [
    ((2, 3, 5, 6), torch.float32, False, "C", "NC", True),
    ((2, 3, 5, 6), torch.float32, True, "NC", "none", False),
    ((1, 4, 7, 3), torch.bfloat16, False, "none", "C", True),
    ((2, 2, 4, 4), torch.float16, True, "C", "C", False),
]


@pytest.mark.parametrize("shape,dtype,cl,wf,bf,relu", OPCHECK_ARGS)
def test_opcheck(shape, dtype, cl, wf, bf, relu):
    x = torch.randn(shape).to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    n, c = shape[:2]
    w = None if wf == "none" else torch.rand((c,) if wf == "C" else (n, c)).requires_grad_()
    b = None if bf == "none" else torch.randn((c,) if bf == "C" else (n, c)).requires_grad_()
    torch.library.opcheck(instance_norm_fwd, (x.requires_grad_(), w, b, 1e-5, relu))
    y, mean, rstd = instance_norm_fwd(x.detach(), w, b, 1e-5, relu)
    dy = torch.randn_like(y)
    params = [None if p is None else p.detach() for p in (w, b)]  # first-order op only
    torch.library.opcheck(torch.ops.stylize.instance_norm_bwd.default,
                          (dy, x.detach(), mean, rstd, *params, relu))


def test_inference_mode_and_no_grad():
    x = torch.randn(2, 3, 8, 8)
    w = torch.rand(3, requires_grad=True)
    with torch.inference_mode():
        y1 = instance_norm(x, w, None, activation="relu")
    with torch.no_grad():
        y2 = instance_norm(x, w, None, activation="relu")
    assert not y2.requires_grad
    torch.testing.assert_close(y1, y2)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    from stylize.nn.norm import ConditionalInstanceNorm2d, InstanceNorm2d

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.norm = InstanceNorm2d(8, activation="relu")
            self.cin = ConditionalInstanceNorm2d(8, 2)

        def forward(self, x, sw):
            return self.cin(self.norm(self.conv(x)), sw)

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
        net.cin.scale.uniform_(0.5, 1.5)
        net.cin.shift.normal_()
    x = torch.randn(2, 3, 12, 10)
    sw = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    compiled = torch.compile(net, fullgraph=True, backend="inductor")
    y_eager = net(x, sw)
    y_comp = compiled(x, sw)
    torch.testing.assert_close(y_comp, y_eager, atol=1e-5, rtol=1e-5)
    # backward through the compiled graph uses the registered autograd formula
    y_comp.square().sum().backward()
    g_comp = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    y_eager.square().sum().backward()
    for gc, ge in zip(g_comp, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(gc, ge, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"x": torch.randn(3, 4, 5)}, ValueError, r"\(N, C, H, W\)"),
        ({"x": torch.zeros(1, 2, 3, 3, dtype=torch.int64)}, TypeError, "float32"),
        ({"x": [[1.0]]}, TypeError, "Tensor"),
        ({"weight": torch.ones(5)}, ValueError, "weight must have shape"),
        ({"bias": torch.ones(2, 3)}, ValueError, "bias must have shape"),
        ({"weight": torch.ones(2, dtype=torch.int32)}, TypeError, "floating-point"),
        ({"weight": torch.ones(2, device="meta")}, ValueError, "meta"),
        ({"bias": 1.0}, TypeError, "bias must be a Tensor"),
        ({"activation": "gelu"}, ValueError, "activation"),
        ({"eps": -1.0}, ValueError, "eps"),
        ({"eps": float("nan")}, ValueError, "eps"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    args = {"x": torch.randn(3, 2, 4, 4)} | kwargs
    with pytest.raises(exc, match=match):
        instance_norm(**args)


# ---------------------------------------------------------------- backend selection


def test_backend_status_reports_both_devices(monkeypatch):
    monkeypatch.delenv("STYLIZE_NO_CUDA_EXT", raising=False)
    status = backend_status()
    assert set(status) >= {"cpu", "cuda"}
    assert "PyTorch" in status["cpu"]
    if not torch.cuda.is_available():
        assert status["cuda"] == "PyTorch fallback: no CUDA device"
    monkeypatch.setenv("STYLIZE_NO_CUDA_EXT", "1")
    assert "STYLIZE_NO_CUDA_EXT=1" in backend_status()["cuda"]


def test_get_extension_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setattr(build, "_state", {"done": False, "module": None, "reason": ""})
    monkeypatch.delenv("STYLIZE_NO_CUDA_EXT", raising=False)
    monkeypatch.setattr(build, "find_cuda_home", lambda: None)
    with pytest.warns(RuntimeWarning, match="no CUDA toolkit"):
        assert build.get_extension() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.get_extension() is None  # no second warning
    assert "no CUDA toolkit" in build.extension_reason()


def test_get_extension_disabled_by_env(monkeypatch):
    monkeypatch.setattr(build, "_state", {"done": False, "module": None, "reason": ""})
    monkeypatch.setenv("STYLIZE_NO_CUDA_EXT", "1")
    with pytest.warns(RuntimeWarning, match="STYLIZE_NO_CUDA_EXT"):
        assert build.get_extension() is None


def test_build_failure_reason_is_first_line(monkeypatch):
    monkeypatch.setattr(build, "_state", {"done": False, "module": None, "reason": ""})
    monkeypatch.delenv("STYLIZE_NO_CUDA_EXT", raising=False)
    monkeypatch.setattr(build, "find_cuda_home", lambda: "/somewhere")

    def fail(**_kwargs):
        raise build.ExtensionBuildError("RuntimeError: Error building extension\nline 2")

    monkeypatch.setattr(build, "build_extension", fail)
    with pytest.warns(RuntimeWarning):
        assert build.get_extension() is None
    assert build.extension_reason() == "build failed: RuntimeError: Error building extension"


def test_find_cuda_home_follows_shell_wrapper(tmp_path, monkeypatch):
    real = tmp_path / "toolkit" / "bin" / "nvcc"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"\x7fELF fake compiler")
    real.chmod(0o755)
    wrapper_dir = tmp_path / "wrappers"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(wrapper_dir))
    assert build.find_cuda_home() == tmp_path / "toolkit"
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    monkeypatch.setenv("PATH", "")
    assert build.find_cuda_home() == tmp_path / "toolkit"


# ---------------------------------------------------------------- the GPU scripts stay runnable


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_gpu_script_self_test_on_cpu(capsys):
    check_gpu = _load_script("check_gpu")
    assert check_gpu.main(["--device", "cpu", "-k", "1x2x256x256"]) == 0
    out = capsys.readouterr().out
    assert "PASS 1x2x256x256-float32-nchw" in out and "FAIL" not in out


def test_bench_script_runs_on_cpu(capsys):
    bench = _load_script("bench_instance_norm")
    assert bench.main(["--device", "cpu", "--shapes", "2x3x8x8", "--reps", "1",
                       "--dtypes", "fp32", "--layouts", "channels_last"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2x3x8x8")]
    assert len(rows) == 4  # 2 parameter forms x (fwd, fwd+bwd)
