// Bindings for the CUDA instance-norm kernels: argument checks, output allocation, launch on
// the current stream, launch-error check.  The Python side (stylize/ops/instance_norm.py)
// registers these as the CUDA kernels of the stylize::instance_norm_{fwd,bwd} custom ops.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "instance_norm.h"

namespace {

using torch::Tensor;

stylize::DType dtype_of(const Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return stylize::DType::kFloat;
    case at::kHalf:
      return stylize::DType::kHalf;
    case at::kBFloat16:
      return stylize::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "instance_norm: unsupported dtype ", x.scalar_type(),
                  " (use float32, float16 or bfloat16)");
  }
}

// Layout of x: NCHW when contiguous, NHWC when channels_last (ambiguous tensors count as NCHW).
bool is_channels_last(const Tensor& x) {
  if (x.is_contiguous()) return false;
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "instance_norm: x must be contiguous or channels_last");
  return true;
}

void check_param(const std::optional<Tensor>& p, const Tensor& x, const char* name,
                 int64_t& n_stride) {
  n_stride = 0;
  if (!p.has_value()) return;
  const Tensor& t = *p;
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), "instance_norm: ", name,
              " must be on the device of x");
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), "instance_norm: ", name,
              " must be a contiguous float32 tensor");
  const int64_t n = x.size(0), c = x.size(1);
  if (t.dim() == 1) {
    TORCH_CHECK(t.size(0) == c, "instance_norm: ", name, " must have shape (C,) or (N, C)");
  } else {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == c, "instance_norm: ", name,
                " must have shape (C,) or (N, C)");
    n_stride = c;
  }
}

stylize::InstanceNormArgs common_args(const Tensor& x, const std::optional<Tensor>& weight,
                                      const std::optional<Tensor>& bias, bool relu) {
  TORCH_CHECK(x.is_cuda(), "instance_norm: x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 4, "instance_norm: x must have shape (N, C, H, W)");
  stylize::InstanceNormArgs a;
  a.dtype = dtype_of(x);
  a.channels_last = is_channels_last(x);
  a.n = x.size(0);
  a.c = x.size(1);
  a.hw = x.size(2) * x.size(3);
  a.relu = relu;
  check_param(weight, x, "weight", a.weight_n_stride);
  check_param(bias, x, "bias", a.bias_n_stride);
  a.weight = weight.has_value() ? weight->data_ptr<float>() : nullptr;
  a.bias = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
  a.sm_count = props->multiProcessorCount;
  a.cc_major = props->major;
  const char* no_cluster = std::getenv("STYLIZE_NO_CLUSTER");
  a.allow_cluster = no_cluster == nullptr || std::string(no_cluster) != "1";
  return a;
}

at::MemoryFormat format_of(const stylize::InstanceNormArgs& a) {
  return a.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// -> (y, mean, rstd); y like x, mean/rstd float32 (N, C).
std::vector<Tensor> forward(const Tensor& x, const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias, double eps, bool relu) {
  TORCH_CHECK(x.is_cuda(), "instance_norm: x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  stylize::InstanceNormArgs a = common_args(x, weight, bias, relu);
  TORCH_CHECK(eps >= 0.0, "instance_norm: eps must be >= 0");
  a.eps = static_cast<float>(eps);
  Tensor y = at::empty_like(x);  // x is dense: same strides (what the fake kernel promises)
  const auto stat_opts = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  Tensor mean = at::empty({a.n, a.c}, stat_opts);
  Tensor rstd = at::empty({a.n, a.c}, stat_opts);
  a.x = x.data_ptr();
  a.y = y.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  const int64_t ws = stylize::workspace_floats(a);
  Tensor workspace = at::empty({ws}, stat_opts);
  a.workspace = ws > 0 ? workspace.data_ptr<float>() : nullptr;
  stylize::launch_forward(a, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, mean, rstd};
}

// -> (dx, dweight, dbias); dx like x, dweight/dbias float32 (N, C) per-plane sums.
std::vector<Tensor> backward(const Tensor& dy_in, const Tensor& x, const Tensor& mean,
                             const Tensor& rstd, const std::optional<Tensor>& weight,
                             const std::optional<Tensor>& bias, bool relu) {
  TORCH_CHECK(x.is_cuda(), "instance_norm: x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  stylize::InstanceNormArgs a = common_args(x, weight, bias, relu);
  TORCH_CHECK(dy_in.sizes() == x.sizes() && dy_in.scalar_type() == x.scalar_type() &&
                  dy_in.device() == x.device(),
              "instance_norm backward: grad must match x in shape, dtype and device");
  for (const Tensor* s : {&mean, &rstd}) {
    TORCH_CHECK(s->device() == x.device() && s->scalar_type() == at::kFloat &&
                    s->is_contiguous() && s->numel() == a.n * a.c,
                "instance_norm backward: saved statistics must be float32 (N, C) on x's device");
  }
  const Tensor dy = dy_in.contiguous(format_of(a));
  Tensor dx = at::empty_like(x);
  const auto stat_opts = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  Tensor dweight = at::empty({a.n, a.c}, stat_opts);
  Tensor dbias = at::empty({a.n, a.c}, stat_opts);
  a.x = x.data_ptr();
  a.dy = dy.data_ptr();
  a.dx = dx.data_ptr();
  a.mean = mean.data_ptr<float>();
  a.rstd = rstd.data_ptr<float>();
  a.dweight = dweight.data_ptr<float>();
  a.dbias = dbias.data_ptr<float>();
  if (a.hw == 0) {  // empty planes: no gradient contributions
    dweight.zero_();
    dbias.zero_();
    return {dx, dweight, dbias};
  }
  const int64_t ws = stylize::workspace_floats(a);
  Tensor workspace = at::empty({ws}, stat_opts);
  a.workspace = ws > 0 ? workspace.data_ptr<float>() : nullptr;
  stylize::launch_backward(a, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dx, dweight, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "stylize instance-norm CUDA kernels";
  m.def("forward", &forward, "instance norm forward -> (y, mean, rstd)");
  m.def("backward", &backward, "instance norm backward -> (dx, dweight, dbias)");
}
