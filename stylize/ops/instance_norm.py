"""The instance-normalization custom operator: schemas, CPU/CUDA kernels, fake and autograd.

Two ops in the `stylize` namespace, each declared once with its schema:

    instance_norm_fwd(x, weight?, bias?, eps, relu) -> (y, mean, rstd)
    instance_norm_bwd(dy, x, mean, rstd, weight?, bias?, relu) -> (dx, dweight, dbias)

x, y, dy, dx: (N, C, H, W), float32/float16/bfloat16, contiguous or channels_last (y and dx
keep x's layout).  weight/bias: float32 (C,) or (N, C), or None.  mean/rstd: float32 (N, C),
saved by the forward for the backward.  dweight/dbias: float32 (N, C) per-plane sums (the
autograd formula sums them over N for (C,) parameters).  float64 x is also accepted (then
parameters and statistics are float64, always on the PyTorch path): used by gradcheck.

Kernels: the CUDA extension (stylize/ops/csrc, built on first use by stylize.ops.build) on CUDA
tensors; the PyTorch implementation below on the CPU and on CUDA when the extension is
unavailable.  The autograd formula calls instance_norm_bwd, so the CUDA backward kernel runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stylize.ops import build

_FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _acc_dtype(x: Tensor) -> torch.dtype:
    """Statistics / parameter dtype: float32, or float64 for float64 x."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------- PyTorch implementation


def _layout(x: Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _empty_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    n, c = x.shape[:2]
    return x.new_zeros((n, c), dtype=_acc_dtype(x)), x.new_zeros((n, c), dtype=_acc_dtype(x))


def _variance(mean: Tensor, msq: Tensor) -> Tensor | None:
    """Biased variance E[x^2] - E[x]^2 per (N, C) plane from float32 means (msq is reused),
    or None when a plane is ill-conditioned for it (|mean| > 10 std, where float32
    cancellation would cost more than ~1e-5 relative)."""
    mean_sq = mean * mean
    var = msq.sub_(mean_sq).clamp_min_(0.0)  # (N, C)
    if bool((mean_sq > 100.0 * var).any()):
        return None
    return var


def _fold(mean: Tensor, rstd: Tensor, weight: Tensor | None,
          bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (N, C), with normalization and affine folded together:
    y = x * scale + shift (before the ReLU)."""
    scale = rstd if weight is None else rstd * weight  # (N, C)
    shift = mean * scale
    shift = shift.neg_() if bias is None else torch.sub(bias, shift)  # (N, C)
    return scale, shift


def _affine(mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
            eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(rstd, scale, shift), each (N, C): y = x * scale + shift (var is reused)."""
    rstd = var.add_(eps).rsqrt_()
    return rstd, *_fold(mean, rstd, weight, bias)


def _forward_sums(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                  relu: bool) -> tuple[Tensor, Tensor, Tensor] | None:
    """float32 NCHW on the CPU: sum and sum of squares (fast vectorized reductions), then one
    fused x * scale + shift pass.  None when a plane is ill-conditioned (see _affine)."""
    n, c, h, w = x.shape
    inv_hw = 1.0 / (h * w)
    mean = x.sum(dim=(2, 3)).mul_(inv_hw)  # (N, C)
    msq = torch.linalg.vector_norm(x, dim=(2, 3)).square_().mul_(inv_hw)  # (N, C) E[x^2]
    var = _variance(mean, msq)
    if var is None:
        return None
    rstd, scale, shift = _affine(mean, var, weight, bias, eps)
    y = torch.empty_like(x)
    torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None], out=y)
    if relu:
        y.relu_()
    return y, mean, rstd


# channels_last planes up to this size with C >= 16 keep torch's batch-norm kernel: there it
# is 20-50% faster than _forward_sums_nhwc and as accurate (its float32 error grows with the
# plane: ~3e-5 at 128x128, ~1e-3 at 1024x1024 against ~2e-5 for the sums).
_NHWC_BN_MAX_HW = 128 * 128
# Rows of x per statistics chunk in _forward_sums_nhwc: about 1 MiB of float32 per sample, so
# the chunk's squares are summed while still in cache (no full-size temporary).
_CHUNK_ELEMS = 1 << 18


def _column_sums(rows: Tensor, center: Tensor | None) -> tuple[Tensor, Tensor]:
    """Sums over H of d and d^2, d = rows - center: rows (N, H, W*C) float32, center None or
    (N, 1, W*C).  Chunks of rows go through one small buffer; returns two (N, W*C)."""
    n, h, wc = rows.shape
    step = max(1, _CHUNK_ELEMS // wc)  # rows per chunk
    buf = rows.new_empty((n, min(step, h), wc))  # (N, rows, W*C) one chunk of d^2
    s = rows.new_zeros((n, wc))  # (N, W*C) column sums of d
    q = rows.new_zeros((n, wc))  # (N, W*C) column sums of d^2
    for i in range(0, h, step):
        part = rows[:, i:i + step]
        b = buf[:, :part.shape[1]]
        if center is not None:
            part = torch.sub(part, center, out=b)
        s += part.sum(1)
        q += torch.mul(part, part, out=b).sum(1)
    return s, q


def _forward_sums_nhwc(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                       relu: bool) -> tuple[Tensor, Tensor, Tensor] | None:
    """float32 channels_last on the CPU: the same computation as _forward_sums on the
    (N, H, W*C) view of the memory.  Sums over H are reductions over an outer dimension (fast,
    vectorized along W*C); squares are formed chunk by chunk in a small buffer.  A plane
    ill-conditioned for E[x^2] - E[x]^2 (|mean| > 10 std: common after the first conv of an
    image) gets a second pass on x - mean (two-pass variance).  Then one fused
    x * scale + shift pass writing y in channels_last, and ReLU in place.

    Against torch's batch-norm kernel on channels_last (measured, 1 thread): much faster with
    few channels (1x4x1024x1024: ~5 ms against ~28 ms), 10-20% slower at C = 32, and far
    more accurate on large planes (1x32x1024x1024: max |error| ~1e-6 against ~1e-3 vs
    float64)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).view(n, h, w * c)  # (N, H, W*C): x's memory
    inv_hw = 1.0 / (h * w)
    s, q = _column_sums(rows, None)
    mean = s.view(n, w, c).sum(1).mul_(inv_hw)  # (N, C)
    msq = q.view(n, w, c).sum(1).mul_(inv_hw)  # (N, C) E[x^2]
    var = _variance(mean, msq)
    if var is None:  # second pass on d = x - mean: E[d] ~ 0, so E[d^2] - E[d]^2 is exact
        s, q = _column_sums(rows, mean.repeat(1, w)[:, None, :])
        mean_d = s.view(n, w, c).sum(1).mul_(inv_hw)  # (N, C) E[d], rounding of mean
        var = _variance(mean_d, q.view(n, w, c).sum(1).mul_(inv_hw))
        if var is None:
            return None
        mean += mean_d
    rstd, scale, shift = _affine(mean, var, weight, bias, eps)
    y = torch.empty_like(x)  # channels_last, like x
    if c >= 16:  # (N, 1, C) broadcast along H*W: the inner loop runs over C
        torch.addcmul(shift[:, None, :], x.permute(0, 2, 3, 1).view(n, h * w, c),
                      scale[:, None, :], out=y.permute(0, 2, 3, 1).view(n, h * w, c))
    else:  # few channels: parameters tiled along W, (N, 1, W*C), the inner loop runs over W*C
        torch.addcmul(shift.repeat(1, w)[:, None, :], rows, scale.repeat(1, w)[:, None, :],
                      out=y.permute(0, 2, 3, 1).view(n, h, w * c))
    if relu:
        y.relu_()
    return y, mean, rstd


def _forward_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                        relu: bool) -> tuple[Tensor, Tensor, Tensor]:
    """torch's batch-norm kernel in training mode on planes viewed as channels: statistics
    (float32 for half types) and the per-plane affine in one fused call writing into y, then
    ReLU in place.  NCHW: one call on the (1, N*C, H, W) view; NHWC: one call per sample."""
    n, c, h, w = x.shape
    acc = _acc_dtype(x)
    y = torch.empty_like(x)  # keeps x's layout
    mean = x.new_empty((n, c), dtype=acc)
    rstd = x.new_empty((n, c), dtype=acc)
    # float32 weight and bias even when absent: that selects the mixed-precision kernel whose
    # statistics are float32 for half inputs (without them they would be rounded to half).
    wt = (x.new_ones((n, c), dtype=acc) if weight is None else weight.expand(n, c)).contiguous()
    bs = (x.new_zeros((n, c), dtype=acc) if bias is None else bias.expand(n, c)).contiguous()
    bn = torch.ops.aten.native_batch_norm.out
    if x.is_contiguous():
        bn(x.view(1, n * c, h, w), wt.view(-1), bs.view(-1), None, None, True, 0.0, eps,
           out=y.view(1, n * c, h, w), save_mean=mean.view(-1), save_invstd=rstd.view(-1))
    else:  # channels_last: (1, C, H, W) slices are channels_last-contiguous
        for i in range(n):
            bn(x[i:i + 1], wt[i], bs[i], None, None, True, 0.0, eps,
               out=y[i:i + 1], save_mean=mean[i], save_invstd=rstd[i])
    if relu:
        y.relu_()
    return y, mean, rstd


def forward_torch(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, relu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd) with PyTorch kernels, picking the fastest exact-enough route measured
    on CPUs (scripts/bench_instance_norm.py): sum-based statistics for float32 NCHW and
    channels_last on the CPU (except small channels_last planes with many channels), torch's
    fused batch-norm kernel otherwise.  At most
    three passes over the data."""
    if x.numel() == 0:
        return (torch.empty_like(x), *_empty_stats(x))
    if x.device.type == "cpu" and x.dtype == torch.float32:
        out = None
        if x.is_contiguous():
            out = _forward_sums(x, weight, bias, eps, relu)
        elif x.is_contiguous(memory_format=torch.channels_last) and (
            x.shape[1] < 16 or x.shape[2] * x.shape[3] > _NHWC_BN_MAX_HW
        ):
            out = _forward_sums_nhwc(x, weight, bias, eps, relu)
        if out is not None:
            return out
    return _forward_batch_norm(x, weight, bias, eps, relu)


def backward_torch(
    dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor,
    weight: Tensor | None, bias: Tensor | None, relu: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """dx, and per-plane dweight = sum(g * xhat), dbias = sum(g), g the ReLU-masked dy.

    The ReLU mask is recomputed from x and the saved statistics (one fused pass), then
    torch's batch-norm backward kernel runs on the planes viewed as channels (NCHW: the
    (1, N*C, H, W) view; NHWC: one call per sample), writing dx in x's layout."""
    n, c, h, w = x.shape
    if x.numel() == 0:
        return (torch.empty_like(x), *_empty_stats(x))
    acc = _acc_dtype(x)
    wt = (x.new_ones((n, c), dtype=acc) if weight is None else weight.expand(n, c)).contiguous()
    if relu:
        scale, shift = _fold(mean, rstd, weight, bias)  # (N, C) each
        # pre-activation rounded to x's dtype, like the forward's output before its ReLU
        pre = torch.addcmul(shift[:, :, None, None], x, scale[:, :, None, None],
                            out=torch.empty_like(x))
        dy = torch.ops.aten.threshold_backward(dy.to(x.dtype), pre, 0.0)  # dy * (pre > 0)
    dy = dy.contiguous(memory_format=_layout(x))
    dx = torch.empty_like(x)
    dweight = x.new_empty((n, c), dtype=acc)
    dbias = x.new_empty((n, c), dtype=acc)
    bnb = torch.ops.aten.native_batch_norm_backward.out
    mask = [True, True, True]
    if x.is_contiguous():
        v = (1, n * c, h, w)
        bnb(dy.view(v), x.view(v), wt.view(-1), None, None, mean.view(-1), rstd.view(-1), True,
            0.0, mask, out0=dx.view(v), out1=dweight.view(-1), out2=dbias.view(-1))
    else:
        for i in range(n):
            s = slice(i, i + 1)
            bnb(dy[s], x[s], wt[i], None, None, mean[i], rstd[i], True, 0.0, mask,
                out0=dx[s], out1=dweight[i], out2=dbias[i])
    return dx, dweight, dbias


# ---------------------------------------------------------------- custom ops

@torch.library.custom_op(
    "stylize::instance_norm_fwd",
    mutates_args=(),
    schema="(Tensor x, Tensor? weight, Tensor? bias, float eps, bool relu)"
    " -> (Tensor, Tensor, Tensor)",
)
def instance_norm_fwd(x, weight, bias, eps, relu):
    return forward_torch(x, weight, bias, eps, relu)


@torch.library.custom_op(
    "stylize::instance_norm_bwd",
    mutates_args=(),
    schema="(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias,"
    " bool relu) -> (Tensor, Tensor, Tensor)",
)
def instance_norm_bwd(dy, x, mean, rstd, weight, bias, relu):
    return backward_torch(dy, x, mean, rstd, weight, bias, relu)


@instance_norm_fwd.register_kernel("cuda")
def _fwd_cuda(x, weight, bias, eps, relu):
    ext = build.get_extension() if x.dtype != torch.float64 else None
    if ext is None or x.numel() == 0:
        return forward_torch(x, weight, bias, eps, relu)
    y, mean, rstd = ext.forward(x, weight, bias, eps, relu)
    return y, mean, rstd


@instance_norm_bwd.register_kernel("cuda")
def _bwd_cuda(dy, x, mean, rstd, weight, bias, relu):
    ext = build.get_extension() if x.dtype != torch.float64 else None
    if ext is None or x.numel() == 0:
        return backward_torch(dy, x, mean, rstd, weight, bias, relu)
    dx, dweight, dbias = ext.backward(dy, x, mean, rstd, weight, bias, relu)
    return dx, dweight, dbias


@instance_norm_fwd.register_fake
def _fwd_fake(x, weight, bias, eps, relu):
    n, c = x.shape[:2]
    stats = x.new_empty((n, c), dtype=_acc_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@instance_norm_bwd.register_fake
def _bwd_fake(dy, x, mean, rstd, weight, bias, relu):
    return torch.empty_like(x), torch.empty_like(mean), torch.empty_like(mean)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, _eps, relu = inputs
    _y, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, weight, bias, mean, rstd)
    ctx.relu = relu


def _backward(ctx, dy, _dmean, _drstd):
    x, weight, bias, mean, rstd = ctx.saved_tensors
    dx, dw, db = instance_norm_bwd(
        dy.contiguous(memory_format=_layout(x)), x, mean, rstd, weight, bias, ctx.relu
    )
    dweight = None if weight is None else (dw if weight.dim() == 2 else dw.sum(0))
    dbias = None if bias is None else (db if bias.dim() == 2 else db.sum(0))
    return dx, dweight, dbias, None, None


instance_norm_fwd.register_autograd(_backward, setup_context=_setup_context)

# ---------------------------------------------------------------- public function


def _check_param(p: object, name: str, x: Tensor) -> Tensor | None:
    """None, or p as a contiguous (C,) / (N, C) tensor of x's statistics dtype (float32, or
    float64 for float64 x); the cast is differentiable."""
    if p is None:
        return None
    if not isinstance(p, Tensor):
        raise TypeError(f"instance_norm: {name} must be a Tensor or None, got {type(p).__name__}")
    n, c = x.shape[:2]
    if tuple(p.shape) not in {(c,), (n, c)}:
        raise ValueError(
            f"instance_norm: {name} must have shape (C,)=({c},) or (N, C)=({n}, {c}), "
            f"got {tuple(p.shape)}"
        )
    if not p.is_floating_point():
        raise TypeError(f"instance_norm: {name} must be a floating-point tensor, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"instance_norm: {name} is on {p.device} but x is on {x.device}")
    return p.to(_acc_dtype(x)).contiguous()


def _export_composite(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      relu: bool) -> Tensor:
    """Plain torch ops with the same result, for torch.onnx.export / torch.jit.trace (which
    cannot see into the custom op): ONNX InstanceNormalization plus affine and Relu."""
    w_c = weight is not None and weight.dim() == 1
    b_c = bias is not None and bias.dim() == 1 and w_c
    y = torch.nn.functional.instance_norm(
        x, weight=weight if w_c else None, bias=bias if b_c else None, eps=eps)
    if weight is not None and not w_c:
        y = y * weight[:, :, None, None].to(y.dtype)
    if bias is not None and not b_c:
        y = y + (bias.view(1, -1, 1, 1) if bias.dim() == 1 else bias[:, :, None, None]).to(
            y.dtype)
    return torch.relu(y) if relu else y


def instance_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    activation: str | None = None,
) -> Tensor:
    """Normalize each (n, c) plane of x (N, C, H, W) over H*W, then y = xhat * weight + bias,
    then the optional activation ("relu").  weight/bias: None, (C,) or (N, C) (per sample).
    Statistics in float32 (biased variance); the output has x's dtype and memory format."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return _export_composite(x, weight, bias, eps, activation == "relu")
    if not isinstance(x, Tensor):
        raise TypeError(f"instance_norm: x must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"instance_norm: x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.dtype not in _FLOAT_TYPES:
        raise TypeError(
            f"instance_norm: x must be float32, float16, bfloat16 (or float64), got {x.dtype}"
        )
    if activation not in (None, "relu"):
        raise ValueError(f"instance_norm: activation must be None or 'relu', got {activation!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"instance_norm: eps must be a number >= 0, got {eps!r}")
    w = _check_param(weight, "weight", x)
    b = _check_param(bias, "bias", x)
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()
    y, _mean, _rstd = instance_norm_fwd(x, w, b, float(eps), activation == "relu")
    return y
