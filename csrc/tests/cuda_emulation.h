// A tiny CPU emulation of the CUDA features the panel kernels use, so that their indexing,
// tails, reductions and edge cases can be tested on machines without a GPU.
//
// emulate_cuda.py turns csrc/cuda/panel_kernels.cu into plain C++ that includes this header
// first: `kernel<<<grid, block, smem, stream>>>(args)` becomes emu::launch(...). A launch runs
// the blocks one after another on blockDim.x real threads, so __syncthreads() and warp
// shuffles are true barriers between concurrently running threads, and `__shared__`
// (a function-local static here) is private to the block that is running. It checks logic,
// not performance, and knows nothing of memory spaces: "device" pointers are host pointers.
#pragma once

#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct EmuDim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local EmuDim3 threadIdx, blockIdx;
inline EmuDim3 gridDim, blockDim;  // written before a launch's threads start

using cudaStream_t = struct EmuStream*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

namespace emu {

// The emulated device: its multiprocessor count and resident blocks per SM shape the grids
// of the grid-stride kernels; small values make every block walk several work items.
inline int sm_count = 3;
inline int blocks_per_sm = 2;
inline int launches = 0;

struct Warp {
  explicit Warp() : bar(32) {}
  std::barrier<> bar;
  uint64_t slot[32] = {};
};

struct BlockContext {
  explicit BlockContext(int threads) : bar(threads), warps(threads / 32) {
    for (auto& w : warps) w = std::make_unique<Warp>();
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline BlockContext* block = nullptr;
inline std::mutex atomic_mutex;

struct Config {
  unsigned grid, threads;
  size_t smem;
  cudaStream_t stream;
};

template <typename Kernel, typename... Args>
void launch(Config cfg, Kernel kernel, Args... args) {
  if (cfg.grid == 0 || cfg.threads == 0 || cfg.threads % 32 != 0 || cfg.threads > 1024)
    throw std::runtime_error("emulated launch: bad configuration");
  ++launches;
  gridDim = {cfg.grid, 1, 1};
  blockDim = {cfg.threads, 1, 1};
  BlockContext ctx(static_cast<int>(cfg.threads));
  block = &ctx;
  std::vector<std::thread> threads;
  threads.reserve(cfg.threads);
  for (unsigned t = 0; t < cfg.threads; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      for (unsigned b = 0; b < cfg.grid; ++b) {
        blockIdx = {b, 0, 0};
        kernel(args...);
        ctx.bar.arrive_and_wait();  // the block is done before the next reuses __shared__
      }
    });
  }
  for (auto& th : threads) th.join();
  block = nullptr;
}

}  // namespace emu

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }

template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  if (mask != 0xffffffffu) throw std::runtime_error("emulated __shfl_down_sync: partial masks unsupported");
  const unsigned lane = threadIdx.x % 32;
  emu::Warp& w = *emu::block->warps[threadIdx.x / 32];
  std::memcpy(&w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T out = v;
  if (lane + delta < 32) std::memcpy(&out, &w.slot[lane + delta], sizeof(T));
  w.bar.arrive_and_wait();
  return out;
}

template <typename T>
T atomicAdd(T* address, T value) {
  std::lock_guard<std::mutex> lock(emu::atomic_mutex);
  const T old = *address;
  *address = old + value;
  return old;
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr, int) {
  *value = emu::sm_count;
  return cudaSuccess;
}

template <typename Kernel>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int, size_t) {
  *blocks = emu::blocks_per_sm;
  return cudaSuccess;
}
