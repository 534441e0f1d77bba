// Instance-normalization kernels (forward and backward), raw pointers only: no torch headers,
// so nvcc compiles this file in seconds.  Bindings and argument checks live in
// instance_norm.cpp.
//
// Layouts and paths (chosen per call by make_plan):
// - NCHW "resident": one block per (n, c) plane, the plane held in registers (up to 16 values
//   per thread, 1024 threads: planes up to 16384 elements, e.g. 128x128), read once.  Exact
//   two-pass mean/variance from the registers.  16-byte vector loads when aligned.
// - NCHW "cluster" (sm_90+): planes of up to 8 x 16384 values (e.g. 256x256, 362x362) are
//   spread over a thread-block cluster of up to 8 blocks, each holding its chunk in
//   registers; partial sums are exchanged through distributed shared memory, so x is still
//   read once and the statistics are exact two-pass.  Falls back to "split" if the cluster
//   launch is refused.
// - NCHW "split": large planes (or too few planes to fill the GPU) are cut into chunks, one
//   block per chunk.  Phase 1 writes per-chunk shifted sums (shift = the plane's first value),
//   phase 2 combines them per plane and applies.  Phase 2 walks the chunks in reverse order so
//   the data phase 1 read last is still in L2.  Two reads, one write.
// - NHWC (channels_last): blocks of 32 channels x 8 pixel rows over a chunk of pixels; same
//   two-phase scheme with shifted sums per channel; warps read 32 consecutive channels.
// All statistics and arithmetic are float32 whatever the storage type.
// Backward: g = dy * (y > 0 if relu, y recomputed from x and the saved mean/rstd);
//   dbias_plane = sum(g), dweight_plane = sum(g * xhat),
//   dx = rstd * w * (g - dbias_plane / HW - xhat * dweight_plane / HW).

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "instance_norm.h"

namespace stylize {
namespace {

constexpr int kResidentValues = 16;     // values per thread held in registers
constexpr int kResidentMaxThreads = 1024;
constexpr int64_t kResidentMaxHW = kResidentValues * kResidentMaxThreads;  // 16384
constexpr int kSplitThreads = 512;
constexpr int kNhwcLanes = 32;  // channels per NHWC block (threadIdx.x)
constexpr int kNhwcRows = 8;    // pixel rows per NHWC block (threadIdx.y)
constexpr int64_t kMaxGrid = int64_t(1) << 30;
constexpr int kMaxCluster = 8;  // portable cluster size
namespace cg = cooperative_groups;

// ---------------------------------------------------------------- conversions and packs
template <typename T>
__device__ __forceinline__ float to_f(T v);
template <>
__device__ __forceinline__ float to_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// V consecutive elements moved as one (16-byte when V * sizeof(T) == 16) access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

__device__ __forceinline__ float relu_f(float v) { return v < 0.f ? 0.f : v; }  // keeps NaN

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide sums of a and b, returned to every thread.  1-D blocks, blockDim.x % 32 == 0.
// sh: 64 floats of shared memory; safe to call repeatedly.
__device__ __forceinline__ void block_sum2(float& a, float& b, float* sh) {
  a = warp_sum(a);
  b = warp_sum(b);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // earlier readers of sh are done
  if (lane == 0) {
    sh[wid] = a;
    sh[32 + wid] = b;
  }
  __syncthreads();
  a = warp_sum(lane < nw ? sh[lane] : 0.f);
  b = warp_sum(lane < nw ? sh[32 + lane] : 0.f);
}

struct PlaneParams {
  float w, b;
};

__device__ __forceinline__ PlaneParams plane_params(const InstanceNormArgs& a, int64_t plane) {
  const int64_t n = plane / a.c, c = plane - n * a.c;
  PlaneParams p;
  p.w = a.weight ? a.weight[n * a.weight_n_stride + c] : 1.f;
  p.b = a.bias ? a.bias[n * a.bias_n_stride + c] : 0.f;
  return p;
}

// Mean and rstd of a plane from shifted sums s1 = sum(x - shift), s2 = sum((x - shift)^2).
__device__ __forceinline__ void stats_from_sums(float shift, float s1, float s2, int64_t hw,
                                                float eps, float& mean, float& rstd) {
  const float inv = 1.f / static_cast<float>(hw);
  const float m1 = s1 * inv;
  const float var = fmaxf(s2 * inv - m1 * m1, 0.f);
  mean = shift + m1;
  rstd = rsqrtf(var + eps);
}

// ---------------------------------------------------------------- plane part in registers
// One thread's share of packs [begin, end) of a plane: packs j = begin + threadIdx.x + i *
// blockDim.x, i < VPT.  Shared by the register-resident kernels (the whole plane, begin = 0)
// and the cluster kernels (this block's part of the plane).

// Loads the thread's packs of x into v (zeros past end); returns their sum.
template <typename T, int V, int VPT>
__device__ __forceinline__ float load_part(const Pack<T, V>* xp, int64_t begin, int64_t end,
                                           float (&v)[VPT][V]) {
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t j = begin + threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < end) {
      const Pack<T, V> pk = xp[j];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v[i][k] = to_f(pk.v[k]);
        s += v[i][k];
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) v[i][k] = 0.f;
    }
  }
  return s;
}

// Sum of squared deviations from mean of the thread's loaded values.
template <int V, int VPT>
__device__ __forceinline__ float sq_dev_part(const float (&v)[VPT][V], int64_t begin,
                                             int64_t end, float mean) {
  float m2 = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t j = begin + threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < end) {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float d = v[i][k] - mean;
        m2 = fmaf(d, d, m2);
      }
    }
  }
  return m2;
}

// y = v * scale + shift (then ReLU) for the thread's packs.
template <typename T, int V, int VPT>
__device__ __forceinline__ void store_affine_part(Pack<T, V>* yp, int64_t begin, int64_t end,
                                                  const float (&v)[VPT][V], float scale,
                                                  float shift, bool relu) {
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t j = begin + threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < end) {
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float o = fmaf(v[i][k], scale, shift);
        if (relu) o = relu_f(o);
        out.v[k] = from_f<T>(o);
      }
      yp[j] = out;
    }
  }
}

// Backward loads: xh = normalized x, g = dy masked by the ReLU recomputed from x and the
// saved statistics (scale/shift: the forward's folded affine); sg += sum(g), sgx += sum(g*xh).
template <typename T, int V, int VPT>
__device__ __forceinline__ void load_grad_part(const Pack<T, V>* xp, const Pack<T, V>* dyp,
                                               int64_t begin, int64_t end, float mean,
                                               float rstd, float scale, float shift, bool relu,
                                               float (&xh)[VPT][V], float (&g)[VPT][V],
                                               float& sg, float& sgx) {
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t j = begin + threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < end) {
      const Pack<T, V> px = xp[j];
      const Pack<T, V> pg = dyp[j];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float xv = to_f(px.v[k]);
        float gv = to_f(pg.v[k]);
        if (relu && !(fmaf(xv, scale, shift) > 0.f)) gv = 0.f;
        xh[i][k] = (xv - mean) * rstd;
        g[i][k] = gv;
        sg += gv;
        sgx = fmaf(gv, xh[i][k], sgx);
      }
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) xh[i][k] = g[i][k] = 0.f;
    }
  }
}

// dx = kx * (g - mg - xh * mgx) for the thread's packs.
template <typename T, int V, int VPT>
__device__ __forceinline__ void store_dx_part(Pack<T, V>* dxp, int64_t begin, int64_t end,
                                              const float (&xh)[VPT][V],
                                              const float (&g)[VPT][V], float kx, float mg,
                                              float mgx) {
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int64_t j = begin + threadIdx.x + static_cast<int64_t>(i) * blockDim.x;
    if (j < end) {
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) out.v[k] = from_f<T>(kx * (g[i][k] - mg - xh[i][k] * mgx));
      dxp[j] = out;
    }
  }
}

// ---------------------------------------------------------------- NCHW, plane in registers
template <typename T, int V, int VPT>
__global__ void __launch_bounds__(kResidentMaxThreads)
    fwd_resident_kernel(const InstanceNormArgs a) {
  __shared__ float sh[64];
  const int64_t planes = a.n * a.c, hw = a.hw, nvec = hw / V;
  const float inv_hw = 1.f / static_cast<float>(hw);
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    Pack<T, V>* yp = reinterpret_cast<Pack<T, V>*>(y + p * hw);
    float v[VPT][V];
    float s = load_part<T, V, VPT>(xp, 0, nvec, v), unused = 0.f;
    block_sum2(s, unused, sh);
    const float mean = s * inv_hw;
    float m2 = sq_dev_part<V, VPT>(v, 0, nvec, mean);
    block_sum2(m2, unused, sh);
    const float rstd = rsqrtf(m2 * inv_hw + a.eps);
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    if (threadIdx.x == 0 && a.mean != nullptr) {
      a.mean[p] = mean;
      a.rstd[p] = rstd;
    }
    store_affine_part<T, V, VPT>(yp, 0, nvec, v, scale, shift, a.relu);
  }
}

template <typename T, int V, int VPT>
__global__ void __launch_bounds__(kResidentMaxThreads)
    bwd_resident_kernel(const InstanceNormArgs a) {
  __shared__ float sh[64];
  const int64_t planes = a.n * a.c, hw = a.hw, nvec = hw / V;
  const float inv_hw = 1.f / static_cast<float>(hw);
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  T* dx = static_cast<T*>(a.dx);
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    const Pack<T, V>* dyp = reinterpret_cast<const Pack<T, V>*>(dy + p * hw);
    Pack<T, V>* dxp = reinterpret_cast<Pack<T, V>*>(dx + p * hw);
    const float mean = a.mean[p], rstd = a.rstd[p];
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    float xh[VPT][V], g[VPT][V];  // normalized x, masked dy
    float sg = 0.f, sgx = 0.f;
    load_grad_part<T, V, VPT>(xp, dyp, 0, nvec, mean, rstd, scale, shift, a.relu, xh, g,
                              sg, sgx);
    block_sum2(sg, sgx, sh);
    if (threadIdx.x == 0) {
      a.dbias[p] = sg;
      a.dweight[p] = sgx;
    }
    const float kx = rstd * pp.w, mg = sg * inv_hw, mgx = sgx * inv_hw;
    store_dx_part<T, V, VPT>(dxp, 0, nvec, xh, g, kx, mg, mgx);
  }
}

// ---------------------------------------------------------------- NCHW, plane in a cluster
// Cluster c (blocks [c * size, (c + 1) * size)) handles planes c, c + clusters, ...; block
// rank r holds packs [r * cv, min(nvec, (r + 1) * cv)) of the plane in registers
// (cv <= VPT * blockDim.x).  part[] is this block's partial, read by the whole cluster.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define STYLIZE_HAS_CLUSTERS 1
#endif

#ifdef STYLIZE_HAS_CLUSTERS
// Sum over the cluster of part[idx] of every block; every warp computes it on its own.
__device__ __forceinline__ float cluster_sum(cg::cluster_group& cluster, float* part, int idx) {
  const unsigned lane = threadIdx.x & 31;
  float v = 0.f;
  if (lane < cluster.num_blocks()) v = cluster.map_shared_rank(part, lane)[idx];
  return warp_sum(v);
}
#endif

template <typename T, int V, int VPT>
__global__ void __launch_bounds__(kResidentMaxThreads)
    fwd_cluster_kernel(const InstanceNormArgs a, int64_t cv) {
#ifdef STYLIZE_HAS_CLUSTERS
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ float sh[64];
  __shared__ float part[2];
  const int64_t csize = cluster.num_blocks(), rank = cluster.block_rank();
  const int64_t planes = a.n * a.c, hw = a.hw, nvec = hw / V;
  const int64_t clusters = gridDim.x / csize;
  const float inv_hw = 1.f / static_cast<float>(hw);
  const int64_t begin = rank * cv, end = min(nvec, begin + cv);
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  for (int64_t p = blockIdx.x / csize; p < planes; p += clusters) {
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    Pack<T, V>* yp = reinterpret_cast<Pack<T, V>*>(y + p * hw);
    float v[VPT][V];
    float s = load_part<T, V, VPT>(xp, begin, end, v), unused = 0.f;
    block_sum2(s, unused, sh);
    if (threadIdx.x == 0) part[0] = s;
    cluster.sync();
    const float mean = cluster_sum(cluster, part, 0) * inv_hw;
    float m2 = sq_dev_part<V, VPT>(v, begin, end, mean);
    block_sum2(m2, unused, sh);
    if (threadIdx.x == 0) part[1] = m2;
    cluster.sync();
    const float rstd = rsqrtf(cluster_sum(cluster, part, 1) * inv_hw + a.eps);
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    if (rank == 0 && threadIdx.x == 0 && a.mean != nullptr) {
      a.mean[p] = mean;
      a.rstd[p] = rstd;
    }
    store_affine_part<T, V, VPT>(yp, begin, end, v, scale, shift, a.relu);
    cluster.sync();  // part[] is read by the other blocks until here
  }
#else
  __trap();  // built without cluster support: fail loudly, never leave y unwritten
#endif
}

template <typename T, int V, int VPT>
__global__ void __launch_bounds__(kResidentMaxThreads)
    bwd_cluster_kernel(const InstanceNormArgs a, int64_t cv) {
#ifdef STYLIZE_HAS_CLUSTERS
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ float sh[64];
  __shared__ float part[2];
  const int64_t csize = cluster.num_blocks(), rank = cluster.block_rank();
  const int64_t planes = a.n * a.c, hw = a.hw, nvec = hw / V;
  const int64_t clusters = gridDim.x / csize;
  const float inv_hw = 1.f / static_cast<float>(hw);
  const int64_t begin = rank * cv, end = min(nvec, begin + cv);
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  T* dx = static_cast<T*>(a.dx);
  for (int64_t p = blockIdx.x / csize; p < planes; p += clusters) {
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    const Pack<T, V>* dyp = reinterpret_cast<const Pack<T, V>*>(dy + p * hw);
    Pack<T, V>* dxp = reinterpret_cast<Pack<T, V>*>(dx + p * hw);
    const float mean = a.mean[p], rstd = a.rstd[p];
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    float xh[VPT][V], g[VPT][V];
    float sg = 0.f, sgx = 0.f;
    load_grad_part<T, V, VPT>(xp, dyp, begin, end, mean, rstd, scale, shift, a.relu, xh, g,
                              sg, sgx);
    block_sum2(sg, sgx, sh);
    if (threadIdx.x == 0) {
      part[0] = sg;
      part[1] = sgx;
    }
    cluster.sync();
    sg = cluster_sum(cluster, part, 0);
    sgx = cluster_sum(cluster, part, 1);
    if (rank == 0 && threadIdx.x == 0) {
      a.dbias[p] = sg;
      a.dweight[p] = sgx;
    }
    const float kx = rstd * pp.w, mg = sg * inv_hw, mgx = sgx * inv_hw;
    store_dx_part<T, V, VPT>(dxp, begin, end, xh, g, kx, mg, mgx);
    cluster.sync();  // part[] is read by the other blocks until here
  }
#else
  __trap();  // built without cluster support: fail loudly, never leave y unwritten
#endif
}

// ---------------------------------------------------------------- NCHW, plane split in chunks
// Virtual block vb -> (plane, chunk); chunk = [k * cv, min(nvec, (k + 1) * cv)) in packs.
// Workspace: (planes, chunks, 2) floats.
constexpr int kUnroll = 4;

template <typename T, int V>
__global__ void __launch_bounds__(kSplitThreads)
    fwd_split_stats_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cv) {
  __shared__ float sh[64];
  const int64_t hw = a.hw, nvec = hw / V, total = a.n * a.c * chunks;
  const T* x = static_cast<const T*>(a.x);
  for (int64_t vb = blockIdx.x; vb < total; vb += gridDim.x) {
    const int64_t p = vb / chunks, k = vb - p * chunks;
    const int64_t begin = k * cv, end = min(nvec, begin + cv);
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    const float shift = to_f(x[p * hw]);
    float s1 = 0.f, s2 = 0.f;
    for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += int64_t(kUnroll) * blockDim.x) {
      Pack<T, V> pk[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + int64_t(u) * blockDim.x;
        if (j < end) pk[u] = xp[j];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j0 + int64_t(u) * blockDim.x < end) {
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const float d = to_f(pk[u].v[e]) - shift;
            s1 += d;
            s2 = fmaf(d, d, s2);
          }
        }
      }
    }
    block_sum2(s1, s2, sh);
    if (threadIdx.x == 0) {
      a.workspace[vb * 2] = s1;
      a.workspace[vb * 2 + 1] = s2;
    }
  }
}

// Sum of the (planes, chunks, 2) partials of plane p, computed by each warp on its own.
__device__ __forceinline__ void sum_partials(const float* ws, int64_t p, int64_t chunks,
                                             float& s1, float& s2) {
  s1 = 0.f;
  s2 = 0.f;
  const float* base = ws + p * chunks * 2;
  for (int64_t k = threadIdx.x & 31; k < chunks; k += 32) {
    s1 += base[2 * k];
    s2 += base[2 * k + 1];
  }
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
}

template <typename T, int V>
__global__ void __launch_bounds__(kSplitThreads)
    fwd_split_apply_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cv) {
  const int64_t hw = a.hw, nvec = hw / V, total = a.n * a.c * chunks;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  for (int64_t rb = blockIdx.x; rb < total; rb += gridDim.x) {
    const int64_t vb = total - 1 - rb;  // reverse order: L2 still holds phase 1's last reads
    const int64_t p = vb / chunks, k = vb - p * chunks;
    const int64_t begin = k * cv, end = min(nvec, begin + cv);
    float s1, s2, mean, rstd;
    sum_partials(a.workspace, p, chunks, s1, s2);
    stats_from_sums(to_f(x[p * hw]), s1, s2, hw, a.eps, mean, rstd);
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    if (k == 0 && threadIdx.x == 0 && a.mean != nullptr) {
      a.mean[p] = mean;
      a.rstd[p] = rstd;
    }
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    Pack<T, V>* yp = reinterpret_cast<Pack<T, V>*>(y + p * hw);
    for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += int64_t(kUnroll) * blockDim.x) {
      Pack<T, V> pk[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + int64_t(u) * blockDim.x;
        if (j < end) pk[u] = xp[j];
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + int64_t(u) * blockDim.x;
        if (j < end) {
          Pack<T, V> out;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            float o = fmaf(to_f(pk[u].v[e]), scale, shift);
            if (a.relu) o = relu_f(o);
            out.v[e] = from_f<T>(o);
          }
          yp[j] = out;
        }
      }
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kSplitThreads)
    bwd_split_stats_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cv) {
  __shared__ float sh[64];
  const int64_t hw = a.hw, nvec = hw / V, total = a.n * a.c * chunks;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  for (int64_t vb = blockIdx.x; vb < total; vb += gridDim.x) {
    const int64_t p = vb / chunks, k = vb - p * chunks;
    const int64_t begin = k * cv, end = min(nvec, begin + cv);
    const float mean = a.mean[p], rstd = a.rstd[p];
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    const Pack<T, V>* dyp = reinterpret_cast<const Pack<T, V>*>(dy + p * hw);
    float sg = 0.f, sgx = 0.f;
    for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += int64_t(kUnroll) * blockDim.x) {
      Pack<T, V> px[kUnroll], pg[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + int64_t(u) * blockDim.x;
        if (j < end) {
          px[u] = xp[j];
          pg[u] = dyp[j];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (j0 + int64_t(u) * blockDim.x < end) {
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const float xv = to_f(px[u].v[e]);
            float gv = to_f(pg[u].v[e]);
            if (a.relu && !(fmaf(xv, scale, shift) > 0.f)) gv = 0.f;
            sg += gv;
            sgx = fmaf(gv, (xv - mean) * rstd, sgx);
          }
        }
      }
    }
    block_sum2(sg, sgx, sh);
    if (threadIdx.x == 0) {
      a.workspace[vb * 2] = sg;
      a.workspace[vb * 2 + 1] = sgx;
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kSplitThreads)
    bwd_split_apply_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cv) {
  const int64_t hw = a.hw, nvec = hw / V, total = a.n * a.c * chunks;
  const float inv_hw = 1.f / static_cast<float>(hw);
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  T* dx = static_cast<T*>(a.dx);
  for (int64_t rb = blockIdx.x; rb < total; rb += gridDim.x) {
    const int64_t vb = total - 1 - rb;
    const int64_t p = vb / chunks, k = vb - p * chunks;
    const int64_t begin = k * cv, end = min(nvec, begin + cv);
    float sg, sgx;
    sum_partials(a.workspace, p, chunks, sg, sgx);
    const float mean = a.mean[p], rstd = a.rstd[p];
    const PlaneParams pp = plane_params(a, p);
    const float scale = rstd * pp.w, shift = pp.b - mean * scale;
    if (k == 0 && threadIdx.x == 0) {
      a.dbias[p] = sg;
      a.dweight[p] = sgx;
    }
    const float kx = rstd * pp.w, mg = sg * inv_hw, mgx = sgx * inv_hw;
    const Pack<T, V>* xp = reinterpret_cast<const Pack<T, V>*>(x + p * hw);
    const Pack<T, V>* dyp = reinterpret_cast<const Pack<T, V>*>(dy + p * hw);
    Pack<T, V>* dxp = reinterpret_cast<Pack<T, V>*>(dx + p * hw);
    for (int64_t j0 = begin + threadIdx.x; j0 < end; j0 += int64_t(kUnroll) * blockDim.x) {
      Pack<T, V> px[kUnroll], pg[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + int64_t(u) * blockDim.x;
        if (j < end) {
          px[u] = xp[j];
          pg[u] = dyp[j];
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t j = j0 + int64_t(u) * blockDim.x;
        if (j < end) {
          Pack<T, V> out;
#pragma unroll
          for (int e = 0; e < V; ++e) {
            const float xv = to_f(px[u].v[e]);
            float gv = to_f(pg[u].v[e]);
            if (a.relu && !(fmaf(xv, scale, shift) > 0.f)) gv = 0.f;
            out.v[e] = from_f<T>(kx * (gv - mg - (xv - mean) * rstd * mgx));
          }
          dxp[j] = out;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- NHWC (channels_last)
// Block (32 channel lanes, 8 pixel rows).  Virtual block vb -> (n, channel tile, chunk);
// chunk = pixels [k * cp, min(hw, (k + 1) * cp)).  Workspace: (N * C, chunks, 2) floats.
struct NhwcBlock {
  int64_t n, c, k, begin, end;
  bool valid;  // this lane's channel exists
};

__device__ __forceinline__ NhwcBlock nhwc_block(const InstanceNormArgs& a, int64_t vb,
                                                int64_t chunks, int64_t cp) {
  const int64_t ctiles = (a.c + kNhwcLanes - 1) / kNhwcLanes;
  NhwcBlock b;
  b.k = vb % chunks;
  const int64_t t = vb / chunks;
  b.n = t / ctiles;
  b.c = (t - b.n * ctiles) * kNhwcLanes + threadIdx.x;
  b.begin = b.k * cp;
  b.end = min(a.hw, b.begin + cp);
  b.valid = b.c < a.c;
  return b;
}

// Sum of v over the 8 rows of the block; the result is valid in row 0.  sh: 8 x 33 floats.
__device__ __forceinline__ float rows_sum(float v, float* sh) {
  __syncthreads();
  sh[threadIdx.y * (kNhwcLanes + 1) + threadIdx.x] = v;
  __syncthreads();
  float s = 0.f;
  if (threadIdx.y == 0) {
#pragma unroll
    for (int r = 0; r < kNhwcRows; ++r) s += sh[r * (kNhwcLanes + 1) + threadIdx.x];
  }
  return s;
}

// Per-channel sums of the chunk partials, split across the rows; valid in row 0.
__device__ __forceinline__ void nhwc_sum_partials(const float* ws, int64_t plane, bool valid,
                                                  int64_t chunks, float* sh, float& s1,
                                                  float& s2) {
  s1 = 0.f;
  s2 = 0.f;
  if (valid) {
    const float* base = ws + plane * chunks * 2;
    for (int64_t k = threadIdx.y; k < chunks; k += kNhwcRows) {
      s1 += base[2 * k];
      s2 += base[2 * k + 1];
    }
  }
  s1 = rows_sum(s1, sh);
  s2 = rows_sum(s2, sh);
}

template <typename T>
__global__ void __launch_bounds__(kNhwcLanes* kNhwcRows)
    fwd_nhwc_stats_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cp) {
  __shared__ float sh[kNhwcRows * (kNhwcLanes + 1)];
  const int64_t C = a.c, ctiles = (C + kNhwcLanes - 1) / kNhwcLanes;
  const int64_t total = a.n * ctiles * chunks;
  const T* x = static_cast<const T*>(a.x);
  for (int64_t vb = blockIdx.x; vb < total; vb += gridDim.x) {
    const NhwcBlock b = nhwc_block(a, vb, chunks, cp);
    float s1 = 0.f, s2 = 0.f;
    if (b.valid) {
      const T* xc = x + b.n * a.hw * C + b.c;
      const float shift = to_f(xc[0]);
      for (int64_t q = b.begin + threadIdx.y; q < b.end; q += kNhwcRows) {
        const float d = to_f(xc[q * C]) - shift;
        s1 += d;
        s2 = fmaf(d, d, s2);
      }
    }
    s1 = rows_sum(s1, sh);
    s2 = rows_sum(s2, sh);
    if (threadIdx.y == 0 && b.valid) {
      float* w = a.workspace + ((b.n * C + b.c) * chunks + b.k) * 2;
      w[0] = s1;
      w[1] = s2;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kNhwcLanes* kNhwcRows)
    fwd_nhwc_apply_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cp) {
  __shared__ float sh[kNhwcRows * (kNhwcLanes + 1)];
  __shared__ float scale_sh[kNhwcLanes], shift_sh[kNhwcLanes];
  const int64_t C = a.c, ctiles = (C + kNhwcLanes - 1) / kNhwcLanes;
  const int64_t total = a.n * ctiles * chunks;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  for (int64_t rb = blockIdx.x; rb < total; rb += gridDim.x) {
    const int64_t vb = total - 1 - rb;
    const NhwcBlock b = nhwc_block(a, vb, chunks, cp);
    const int64_t plane = b.n * C + b.c;
    float s1, s2;
    nhwc_sum_partials(a.workspace, plane, b.valid, chunks, sh, s1, s2);
    if (threadIdx.y == 0 && b.valid) {
      float mean, rstd;
      stats_from_sums(to_f(x[b.n * a.hw * C + b.c]), s1, s2, a.hw, a.eps, mean, rstd);
      const PlaneParams pp = plane_params(a, plane);
      const float scale = rstd * pp.w;
      scale_sh[threadIdx.x] = scale;
      shift_sh[threadIdx.x] = pp.b - mean * scale;
      if (b.k == 0 && a.mean != nullptr) {
        a.mean[plane] = mean;
        a.rstd[plane] = rstd;
      }
    }
    __syncthreads();
    if (b.valid) {
      const float scale = scale_sh[threadIdx.x], shift = shift_sh[threadIdx.x];
      const T* xc = x + b.n * a.hw * C + b.c;
      T* yc = y + b.n * a.hw * C + b.c;
      for (int64_t q = b.begin + threadIdx.y; q < b.end; q += kNhwcRows) {
        float o = fmaf(to_f(xc[q * C]), scale, shift);
        if (a.relu) o = relu_f(o);
        yc[q * C] = from_f<T>(o);
      }
    }
    __syncthreads();  // scale_sh is rewritten by the next virtual block
  }
}

template <typename T>
__global__ void __launch_bounds__(kNhwcLanes* kNhwcRows)
    bwd_nhwc_stats_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cp) {
  __shared__ float sh[kNhwcRows * (kNhwcLanes + 1)];
  const int64_t C = a.c, ctiles = (C + kNhwcLanes - 1) / kNhwcLanes;
  const int64_t total = a.n * ctiles * chunks;
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  for (int64_t vb = blockIdx.x; vb < total; vb += gridDim.x) {
    const NhwcBlock b = nhwc_block(a, vb, chunks, cp);
    const int64_t plane = b.n * C + b.c;
    float sg = 0.f, sgx = 0.f;
    if (b.valid) {
      const float mean = a.mean[plane], rstd = a.rstd[plane];
      const PlaneParams pp = plane_params(a, plane);
      const float scale = rstd * pp.w, shift = pp.b - mean * scale;
      const T* xc = x + b.n * a.hw * C + b.c;
      const T* gc = dy + b.n * a.hw * C + b.c;
      for (int64_t q = b.begin + threadIdx.y; q < b.end; q += kNhwcRows) {
        const float xv = to_f(xc[q * C]);
        float gv = to_f(gc[q * C]);
        if (a.relu && !(fmaf(xv, scale, shift) > 0.f)) gv = 0.f;
        sg += gv;
        sgx = fmaf(gv, (xv - mean) * rstd, sgx);
      }
    }
    sg = rows_sum(sg, sh);
    sgx = rows_sum(sgx, sh);
    if (threadIdx.y == 0 && b.valid) {
      float* w = a.workspace + (plane * chunks + b.k) * 2;
      w[0] = sg;
      w[1] = sgx;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kNhwcLanes* kNhwcRows)
    bwd_nhwc_apply_kernel(const InstanceNormArgs a, int64_t chunks, int64_t cp) {
  __shared__ float sh[kNhwcRows * (kNhwcLanes + 1)];
  __shared__ float sg_sh[kNhwcLanes], sgx_sh[kNhwcLanes];
  const int64_t C = a.c, ctiles = (C + kNhwcLanes - 1) / kNhwcLanes;
  const int64_t total = a.n * ctiles * chunks;
  const float inv_hw = 1.f / static_cast<float>(a.hw);
  const T* x = static_cast<const T*>(a.x);
  const T* dy = static_cast<const T*>(a.dy);
  T* dx = static_cast<T*>(a.dx);
  for (int64_t rb = blockIdx.x; rb < total; rb += gridDim.x) {
    const int64_t vb = total - 1 - rb;
    const NhwcBlock b = nhwc_block(a, vb, chunks, cp);
    const int64_t plane = b.n * C + b.c;
    float sg, sgx;
    nhwc_sum_partials(a.workspace, plane, b.valid, chunks, sh, sg, sgx);
    if (threadIdx.y == 0 && b.valid) {
      sg_sh[threadIdx.x] = sg;
      sgx_sh[threadIdx.x] = sgx;
      if (b.k == 0) {
        a.dbias[plane] = sg;
        a.dweight[plane] = sgx;
      }
    }
    __syncthreads();
    if (b.valid) {
      sg = sg_sh[threadIdx.x];
      sgx = sgx_sh[threadIdx.x];
      const float mean = a.mean[plane], rstd = a.rstd[plane];
      const PlaneParams pp = plane_params(a, plane);
      const float scale = rstd * pp.w, shift = pp.b - mean * scale;
      const float kx = rstd * pp.w, mg = sg * inv_hw, mgx = sgx * inv_hw;
      const T* xc = x + b.n * a.hw * C + b.c;
      const T* gc = dy + b.n * a.hw * C + b.c;
      T* dc = dx + b.n * a.hw * C + b.c;
      for (int64_t q = b.begin + threadIdx.y; q < b.end; q += kNhwcRows) {
        const float xv = to_f(xc[q * C]);
        float gv = to_f(gc[q * C]);
        if (a.relu && !(fmaf(xv, scale, shift) > 0.f)) gv = 0.f;
        dc[q * C] = from_f<T>(kx * (gv - mg - (xv - mean) * rstd * mgx));
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- planning and launching
struct Plan {
  bool nhwc = false, resident = false, vec = false;
  int cluster = 0;  // blocks per cluster (cluster path), 0 otherwise
  int threads = 0;
  int64_t chunks = 1, chunk_len = 0;  // chunk_len: packs (NCHW) or pixels (NHWC)
  int64_t grid = 0;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int elem_size(DType t) { return t == DType::kFloat ? 4 : 2; }

Plan make_plan(const InstanceNormArgs& a, bool backward);

// Launch a cluster kernel; false (and the error cleared) when the launch is refused.
template <typename Kernel>
bool launch_cluster(Kernel kernel, const Plan& pl, const InstanceNormArgs& a, cudaStream_t s) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(pl.grid));
  cfg.blockDim = dim3(pl.threads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = s;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = pl.cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, a, pl.chunk_len);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return true;
}

Plan make_plan(const InstanceNormArgs& a, bool backward) {
  Plan pl;
  const int64_t planes = a.n * a.c;
  const int64_t sms = std::max(a.sm_count, 1);
  if (a.channels_last && a.c > 1 && a.hw > 1) {  // otherwise NHWC memory == NCHW memory
    pl.nhwc = true;
    pl.threads = kNhwcLanes * kNhwcRows;
    const int64_t base = a.n * ceil_div(a.c, kNhwcLanes);
    int64_t chunks = ceil_div(sms * 8, base);
    chunks = std::max<int64_t>(1, std::min({chunks, ceil_div(a.hw, 64), int64_t(1024)}));
    pl.chunk_len = ceil_div(a.hw, chunks);
    pl.chunks = ceil_div(a.hw, pl.chunk_len);
    pl.grid = std::min(base * pl.chunks, kMaxGrid);
    return pl;
  }
  const int v = 16 / elem_size(a.dtype);
  pl.vec = a.hw % v == 0 && aligned16(a.x) && aligned16(a.y) && aligned16(a.dy) &&
           aligned16(a.dx);
  const int64_t V = pl.vec ? v : 1;
  const int64_t nvec = a.hw / V;
  pl.resident = a.hw <= kResidentMaxHW && (planes >= sms || a.hw <= 4096);
  if (pl.resident) {
    const int64_t per_thread = kResidentValues / V;  // packs per thread (VPT)
    pl.threads = static_cast<int>(std::min<int64_t>(
        kResidentMaxThreads, std::max<int64_t>(32, ceil_div(ceil_div(nvec, per_thread), 32) * 32)));
    pl.grid = std::min(planes, kMaxGrid);
    return pl;
  }
  if (a.allow_cluster && a.cc_major >= 9 && a.hw <= kMaxCluster * kResidentMaxHW) {
    // smallest blocks (512 or 1024 threads) that keep the plane in a cluster of <= 8
    const int64_t per_thread = kResidentValues / V;
    for (const int threads : {kSplitThreads, kResidentMaxThreads}) {
      const int64_t size = ceil_div(nvec, per_thread * threads);
      if (size <= kMaxCluster) {
        pl.cluster = static_cast<int>(std::max<int64_t>(2, size));
        pl.threads = threads;
        pl.chunk_len = ceil_div(nvec, pl.cluster);  // packs per block
        pl.grid = std::min(planes, kMaxGrid / kMaxCluster) * pl.cluster;
        return pl;
      }
    }
  }
  pl.threads = kSplitThreads;
  int64_t chunks = ceil_div(a.hw, kResidentMaxHW);
  chunks = std::max(chunks, ceil_div(sms * 4, planes));
  chunks = std::max<int64_t>(1, std::min(chunks, nvec / kSplitThreads));
  pl.chunk_len = ceil_div(nvec, chunks);
  pl.chunks = ceil_div(nvec, pl.chunk_len);
  pl.grid = std::min(planes * pl.chunks, kMaxGrid);
  (void)backward;
  return pl;
}

template <typename T, bool kBackward>
void launch_typed(const InstanceNormArgs& a, const Plan& pl, cudaStream_t s) {
  constexpr int VV = 16 / sizeof(T);
  const dim3 grid(static_cast<unsigned>(pl.grid));
  if (pl.nhwc) {
    const dim3 block(kNhwcLanes, kNhwcRows);
    if (kBackward) {
      bwd_nhwc_stats_kernel<T><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
      bwd_nhwc_apply_kernel<T><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
    } else {
      fwd_nhwc_stats_kernel<T><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
      fwd_nhwc_apply_kernel<T><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
    }
    return;
  }
  const dim3 block(pl.threads);
  if (pl.cluster > 0) {
    bool ok;
    if (kBackward) {
      ok = pl.vec ? launch_cluster(bwd_cluster_kernel<T, VV, kResidentValues / VV>, pl, a, s)
                  : launch_cluster(bwd_cluster_kernel<T, 1, kResidentValues>, pl, a, s);
    } else {
      ok = pl.vec ? launch_cluster(fwd_cluster_kernel<T, VV, kResidentValues / VV>, pl, a, s)
                  : launch_cluster(fwd_cluster_kernel<T, 1, kResidentValues>, pl, a, s);
    }
    if (ok) return;
    // Refused (e.g. no GPC with enough free SMs): take the split path; workspace_floats()
    // sized the workspace for it.
    InstanceNormArgs no_cluster = a;
    no_cluster.allow_cluster = false;
    launch_typed<T, kBackward>(no_cluster, make_plan(no_cluster, kBackward), s);
    return;
  }
  if (pl.resident) {
    if (kBackward) {
      if (pl.vec) {
        bwd_resident_kernel<T, VV, kResidentValues / VV><<<grid, block, 0, s>>>(a);
      } else {
        bwd_resident_kernel<T, 1, kResidentValues><<<grid, block, 0, s>>>(a);
      }
    } else {
      if (pl.vec) {
        fwd_resident_kernel<T, VV, kResidentValues / VV><<<grid, block, 0, s>>>(a);
      } else {
        fwd_resident_kernel<T, 1, kResidentValues><<<grid, block, 0, s>>>(a);
      }
    }
    return;
  }
  if (kBackward) {
    if (pl.vec) {
      bwd_split_stats_kernel<T, VV><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
      bwd_split_apply_kernel<T, VV><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
    } else {
      bwd_split_stats_kernel<T, 1><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
      bwd_split_apply_kernel<T, 1><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
    }
  } else {
    if (pl.vec) {
      fwd_split_stats_kernel<T, VV><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
      fwd_split_apply_kernel<T, VV><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
    } else {
      fwd_split_stats_kernel<T, 1><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
      fwd_split_apply_kernel<T, 1><<<grid, block, 0, s>>>(a, pl.chunks, pl.chunk_len);
    }
  }
}

template <bool kBackward>
void launch(const InstanceNormArgs& a, cudaStream_t s) {
  if (a.n * a.c == 0 || a.hw == 0) return;
  const Plan pl = make_plan(a, kBackward);
  switch (a.dtype) {
    case DType::kFloat:
      launch_typed<float, kBackward>(a, pl, s);
      break;
    case DType::kHalf:
      launch_typed<__half, kBackward>(a, pl, s);
      break;
    case DType::kBFloat16:
      launch_typed<__nv_bfloat16, kBackward>(a, pl, s);
      break;
  }
}

}  // namespace

int64_t workspace_floats(const InstanceNormArgs& a) {
  if (a.n * a.c == 0 || a.hw == 0) return 0;
  InstanceNormArgs no_cluster = a;  // sized for the split path, the cluster path's fallback
  no_cluster.allow_cluster = false;
  const Plan pl = make_plan(no_cluster, a.dy != nullptr);
  if (pl.resident) return 0;
  return a.n * a.c * pl.chunks * 2;
}

void launch_forward(const InstanceNormArgs& a, cudaStream_t stream) { launch<false>(a, stream); }

void launch_backward(const InstanceNormArgs& a, cudaStream_t stream) { launch<true>(a, stream); }

}  // namespace stylize
