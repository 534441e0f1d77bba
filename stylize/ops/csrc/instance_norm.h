// Raw-pointer interface between the bindings (instance_norm.cpp, which sees torch) and the
// kernels (instance_norm_kernels.cu, which does not, so nvcc compiles it quickly).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace stylize {

enum class DType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

// One call of the forward or backward operator.  Tensors are (N, C, H, W) with either the
// contiguous (NCHW) or the channels_last (NHWC) layout; x, y, dy, dx share that layout.
// weight/bias are float32, either (C,) (param_n_stride == 0) or (N, C) (param_n_stride == C),
// or null.  mean/rstd/dweight/dbias are float32 (N, C) contiguous.
struct InstanceNormArgs {
  DType dtype = DType::kFloat;
  bool channels_last = false;
  int64_t n = 0, c = 0, hw = 0;
  float eps = 1e-5f;
  bool relu = false;
  const void* x = nullptr;
  void* y = nullptr;         // forward output
  const void* dy = nullptr;  // backward input
  void* dx = nullptr;        // backward output
  const float* weight = nullptr;
  const float* bias = nullptr;
  int64_t weight_n_stride = 0, bias_n_stride = 0;
  float* mean = nullptr;  // forward: written (may be null); backward: read
  float* rstd = nullptr;
  float* dweight = nullptr;  // backward: per-plane sums, (N, C)
  float* dbias = nullptr;
  float* workspace = nullptr;  // workspace_floats(...) floats, or null when that is 0
  int sm_count = 1;
  int cc_major = 0;           // compute capability of the device (clusters need >= 9)
  bool allow_cluster = true;  // STYLIZE_NO_CLUSTER=1 turns the cluster path off
};

// Number of float32 workspace elements the launch needs (0 when none).
int64_t workspace_floats(const InstanceNormArgs& a);

// Enqueue the kernels on `stream`; the caller checks cudaGetLastError afterwards.
void launch_forward(const InstanceNormArgs& a, cudaStream_t stream);
void launch_backward(const InstanceNormArgs& a, cudaStream_t stream);

}  // namespace stylize
