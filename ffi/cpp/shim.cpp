// The few libtorch C++ entry points that tch does not wrap, behind a C ABI for `lewel::ffi`:
//
// - c10d: a TCPStore rendezvous and one process group per process (ProcessGroupGloo on CPU, ProcessGroupNCCL on
//   CUDA when the build found NCCL), with the collectives the training loop needs, plus an all-reduce that autograd
//   can differentiate (its backward all-reduces the gradient), for SyncBatchNorm;
// - autocast on any device type (tch's `autocast` only toggles CUDA) and the AMP gradient unscale kernel;
// - memory formats (channels-last).
//
// Every function returns 0 on success; on a C++ exception it returns 1 and `lewel_shim_last_error()` gives the
// message (thread-local). Tensors cross as `at::Tensor*`, which is what tch's `C_tensor` is; tensors handed back
// are heap-allocated here and owned (and freed) by tch from then on.

#include <algorithm>
#include <chrono>
#include <memory>
#include <mutex>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <dlfcn.h>
#ifdef LEWEL_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

thread_local std::string last_error;

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank = 0;
  int world = 1;
  std::chrono::milliseconds timeout{0};
};

Group* group = nullptr;

Group& current() {
  TORCH_CHECK(group != nullptr, "no process group: lewel_dist_init was not called");
  return *group;
}

#define LEWEL_GUARD(body)                      \
  try {                                        \
    body;                                      \
    return 0;                                  \
  } catch (const std::exception& e) {          \
    last_error = e.what();                     \
    return 1;                                  \
  } catch (...) {                              \
    last_error = "unknown C++ exception";      \
    return 1;                                  \
  }

void wait_all(std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  for (auto& w : works) {
    w->wait(current().timeout);
  }
}

// In-place sum over the ranks.
void allreduce_sum(at::Tensor& t) {
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::SUM;
  std::vector<c10::intrusive_ptr<c10d::Work>> works{current().backend->allreduce(v, o)};
  wait_all(works);
}

// y = sum over ranks of x; dL/dx = sum over ranks of dL/dy (every rank's loss depends on every rank's x).
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(torch::autograd::AutogradContext*, at::Tensor x) {
    auto y = x.clone(at::MemoryFormat::Contiguous);
    allreduce_sum(y);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    auto g = grads[0].clone(at::MemoryFormat::Contiguous);
    allreduce_sum(g);
    return {g};
  }
};

at::DeviceType device_type(int d) { return d == 1 ? at::kCUDA : at::kCPU; }

std::vector<at::Tensor> list(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*ts[i]);
  return v;
}

// libtorch_cuda is not linked: loading it (and cuDNN, cuBLAS, NCCL behind it) costs a CPU-only tool about
// 0.35 s and 350 MB at every start. It is opened on demand, before libtorch first asks for its CUDA hooks
// (lewel_cuda_load), and the three entry points the NCCL group needs are looked up in it by name.
void* cuda_lib = nullptr;

void* cuda_symbol(const char* lib, const char* name) {
  void* h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
  if (h == nullptr) h = dlopen(lib, RTLD_NOW | RTLD_GLOBAL);
  TORCH_CHECK(h != nullptr, "could not open ", lib, ": ", dlerror());
  void* f = dlsym(h, name);
  TORCH_CHECK(f != nullptr, lib, " lacks ", name, " (a libtorch other than 2.11?)");
  return f;
}

#ifdef LEWEL_WITH_NCCL
// ProcessGroupNCCL(intrusive_ptr<Store>, int rank, int size, intrusive_ptr<Options>) and Options(bool), called
// through their exported symbols on memory we allocate (sizes from the same headers the library was built with).
using NcclCtor = void (*)(c10d::ProcessGroupNCCL*, c10::intrusive_ptr<c10d::Store>, int, int,
                          c10::intrusive_ptr<c10d::ProcessGroupNCCL::Options>);
using NcclOptionsCtor = void (*)(c10d::ProcessGroupNCCL::Options*, bool);
using SetDevice = void (*)(c10::DeviceIndex, bool);

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                            std::chrono::milliseconds timeout, int cuda_device) {
  auto set_device = reinterpret_cast<SetDevice>(cuda_symbol("libc10_cuda.so", "_ZN3c104cuda10set_deviceEab"));
  auto options_ctor =
      reinterpret_cast<NcclOptionsCtor>(cuda_symbol("libtorch_cuda.so", "_ZN4c10d16ProcessGroupNCCL7OptionsC1Eb"));
  auto ctor = reinterpret_cast<NcclCtor>(cuda_symbol(
      "libtorch_cuda.so",
      "_ZN4c10d16ProcessGroupNCCLC1EN3c1013intrusive_ptrINS_5StoreENS1_6detail34intrusive_target_default_null_"
      "typeIS3_EEEEiiNS2_INS0_7OptionsENS5_IS8_EEEE"));
  set_device(static_cast<c10::DeviceIndex>(cuda_device), false);
  auto* o = static_cast<c10d::ProcessGroupNCCL::Options*>(::operator new(sizeof(c10d::ProcessGroupNCCL::Options)));
  options_ctor(o, false);
  auto opts = c10::intrusive_ptr<c10d::ProcessGroupNCCL::Options>::unsafe_steal_from_new(o);
  opts->timeout = timeout;
  auto* pg = static_cast<c10d::ProcessGroupNCCL*>(::operator new(sizeof(c10d::ProcessGroupNCCL)));
  ctor(pg, store, rank, world, opts);
  return c10::intrusive_ptr<c10d::Backend>::unsafe_steal_from_new(pg);
}
#endif

} // namespace

extern "C" {

const char* lewel_shim_last_error() { return last_error.c_str(); }

int lewel_shim_has_nccl() {
#ifdef LEWEL_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

// Joins the group: the TCPStore at addr:port is hosted by rank 0 (rank0_hosts != 0) or by someone else (torchrun's
// agent); the group's keys live under `prefix`. `backend` is "gloo" or "nccl"; `cuda_device` is the device NCCL
// binds (ignored by Gloo). GLOO_SOCKET_IFNAME picks Gloo's interface, as in PyTorch.
int lewel_dist_init(const char* backend, const char* addr, int port, int rank, int world, int64_t timeout_ms,
                    int cuda_device, int rank0_hosts, const char* prefix) {
  LEWEL_GUARD({
    TORCH_CHECK(group == nullptr, "the process group is already initialised");
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank0_hosts != 0 && rank == 0;
    so.numWorkers = static_cast<std::size_t>(world);
    so.waitWorkers = true;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), so);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix) + "/default_pg", tcp);
    auto g = std::make_unique<Group>();
    g->store = tcp;
    g->rank = rank;
    g->world = world;
    g->timeout = timeout;
    if (std::strcmp(backend, "gloo") == 0) {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && *ifname != '\0') {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else {
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    } else if (std::strcmp(backend, "nccl") == 0) {
#ifdef LEWEL_WITH_NCCL
      g->backend = make_nccl(store, rank, world, timeout, cuda_device);
#else
      (void)cuda_device;
      TORCH_CHECK(false, "this build of lewel has no NCCL (its libtorch had no NCCL headers); use --device cpu (Gloo)");
#endif
    } else {
      TORCH_CHECK(false, "unknown c10d backend ", backend);
    }
    group = g.release();
  })
}

// Opens libtorch_cuda (once), so that libtorch sees CUDA. Must run before libtorch first asks for its CUDA hooks
// (which it caches): before any CUDA query, tensor or seed.
int lewel_cuda_load() {
  LEWEL_GUARD({
    if (cuda_lib == nullptr) {
      cuda_lib = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_GLOBAL);
      TORCH_CHECK(cuda_lib != nullptr, "could not open libtorch_cuda.so: ", dlerror());
    }
  })
}

int lewel_dist_rank() { return group ? group->rank : 0; }
int lewel_dist_world() { return group ? group->world : 1; }

// Sums (average != 0: averages) each tensor in place over the ranks; the reductions run concurrently.
int lewel_dist_allreduce(at::Tensor** tensors, int n, int average) {
  LEWEL_GUARD({
    auto& g = current();
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> v{*tensors[i]};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      works.push_back(g.backend->allreduce(v, o));
    }
    wait_all(works);
    if (average) {
      for (int i = 0; i < n; ++i) {
        tensors[i]->div_(g.world);
      }
    }
  })
}

// Copies rank `root`'s values into each tensor on every rank.
int lewel_dist_broadcast(at::Tensor** tensors, int n, int root) {
  LEWEL_GUARD({
    auto& g = current();
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int i = 0; i < n; ++i) {
      std::vector<at::Tensor> v{*tensors[i]};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      works.push_back(g.backend->broadcast(v, o));
    }
    wait_all(works);
  })
}

// out = the ranks' `in` concatenated along dim 0, in rank order (no gradient).
int lewel_dist_allgather(at::Tensor* in, at::Tensor** out) {
  LEWEL_GUARD({
    auto& g = current();
    auto x = in->contiguous();
    auto sizes = x.sizes().vec();
    sizes[0] *= g.world;
    auto y = at::empty(sizes, x.options());
    std::vector<c10::intrusive_ptr<c10d::Work>> works{g.backend->_allgather_base(y, x)};
    wait_all(works);
    *out = new at::Tensor(std::move(y));
  })
}

// out = sum over the ranks of `in`, differentiable (the backward sums the gradients over the ranks).
int lewel_dist_allreduce_autograd(at::Tensor* in, at::Tensor** out) {
  LEWEL_GUARD({ *out = new at::Tensor(AllReduceSum::apply(*in)); })
}

int lewel_dist_barrier() {
  LEWEL_GUARD({
    std::vector<c10::intrusive_ptr<c10d::Work>> works{current().backend->barrier()};
    wait_all(works);
  })
}

// Leaves the group (rank 0's store goes with it).
void lewel_dist_shutdown() {
  if (group != nullptr) {
    try {
      group->backend->shutdown();
    } catch (...) {
    }
    delete group;
    group = nullptr;
  }
}

// ---- gradient all-reduce overlapped with the backward pass (DistributedDataParallel's reducer, small) ----
//
// The parameters are assigned to buckets of about `bucket_bytes` in reverse order (the backward pass produces
// the last layers' gradients first). A hook on each parameter copies its gradient into its bucket as autograd
// produces it; a full bucket starts its all-reduce at once (in bucket order, the same on every rank), while the
// backward pass goes on. finish() starts what is left, waits, divides by the world size and writes the averages
// into the parameters' .grad.

namespace {
struct Reducer {
  std::vector<at::Tensor> params;
  std::vector<unsigned> hooks;
  std::vector<int> bucket_of;
  std::vector<int64_t> offset;
  std::vector<at::Tensor> flats;
  std::vector<int> expected, pending;
  std::vector<bool> ready;
  std::vector<c10::intrusive_ptr<c10d::Work>> works;
  size_t next = 0;
  std::mutex mu;

  void launch_ready() {  // with mu held
    while (next < flats.size() && ready[next]) {
      std::vector<at::Tensor> v{flats[next]};
      c10d::AllreduceOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      works[next] = current().backend->allreduce(v, o);
      ++next;
    }
  }
};
} // namespace

int lewel_reducer_new(at::Tensor** params, int n, int64_t bucket_bytes, void** out) {
  LEWEL_GUARD({
    current();
    auto r = std::make_unique<Reducer>();
    r->params = list(params, n);
    r->bucket_of.assign(n, -1);
    r->offset.assign(n, 0);
    std::vector<std::vector<int>> buckets;
    int64_t bytes = 0;
    for (int i = n - 1; i >= 0; --i) {
      const auto& p = r->params[i];
      int64_t b = p.numel() * static_cast<int64_t>(p.element_size());
      bool same = !buckets.empty() && r->params[buckets.back().front()].scalar_type() == p.scalar_type();
      if (buckets.empty() || bytes + b > bucket_bytes || !same) {
        buckets.emplace_back();
        bytes = 0;
      }
      buckets.back().push_back(i);
      bytes += b;
    }
    for (size_t k = 0; k < buckets.size(); ++k) {
      int64_t at = 0;
      for (int i : buckets[k]) {
        r->bucket_of[i] = static_cast<int>(k);
        r->offset[i] = at;
        at += r->params[i].numel();
      }
      r->flats.push_back(at::zeros({at}, r->params[buckets[k].front()].options().requires_grad(false)));
      r->expected.push_back(static_cast<int>(buckets[k].size()));
    }
    r->pending = r->expected;
    r->ready.assign(r->flats.size(), false);
    r->works.resize(r->flats.size());
    Reducer* raw = r.get();
    for (int i = 0; i < n; ++i) {
      r->hooks.push_back(r->params[i].register_hook([raw, i](const at::TensorBase& grad) {
        std::lock_guard<std::mutex> lock(raw->mu);
        int b = raw->bucket_of[i];
        raw->flats[b].narrow(0, raw->offset[i], grad.numel()).copy_(at::Tensor(grad).reshape({-1}));
        if (--raw->pending[b] == 0) {
          raw->ready[b] = true;
          raw->launch_ready();
        }
      }));
    }
    *out = r.release();
  })
}

// Before a backward pass.
int lewel_reducer_prepare(void* reducer) {
  LEWEL_GUARD({
    auto* r = static_cast<Reducer*>(reducer);
    std::lock_guard<std::mutex> lock(r->mu);
    for (auto& f : r->flats) f.zero_();
    r->pending = r->expected;
    std::fill(r->ready.begin(), r->ready.end(), false);
    std::fill(r->works.begin(), r->works.end(), c10::intrusive_ptr<c10d::Work>());
    r->next = 0;
  })
}

// After the backward pass: the averaged gradients in .grad (parameters without a gradient keep none).
int lewel_reducer_finish(void* reducer) {
  LEWEL_GUARD({
    auto* r = static_cast<Reducer*>(reducer);
    std::lock_guard<std::mutex> lock(r->mu);
    std::fill(r->ready.begin(), r->ready.end(), true);  // buckets with unused parameters go as they are
    r->launch_ready();
    auto& g = current();
    for (auto& w : r->works) w->wait(g.timeout);
    for (auto& f : r->flats) f.div_(g.world);
    for (size_t i = 0; i < r->params.size(); ++i) {
      auto grad = r->params[i].grad();
      if (!grad.defined()) continue;
      auto& f = r->flats[r->bucket_of[i]];
      grad.copy_(f.narrow(0, r->offset[i], grad.numel()).view(grad.sizes()));
    }
  })
}

void lewel_reducer_free(void* reducer) {
  auto* r = static_cast<Reducer*>(reducer);
  for (size_t i = 0; i < r->hooks.size(); ++i) {
    try {
      r->params[i].remove_hook(r->hooks[i]);
    } catch (...) {
    }
  }
  delete r;
}

// Autocast on device type `device` (0 CPU, 1 CUDA) with `dtype` (an at::ScalarType, as tch's Kind numbers them);
// the previous state goes to *prev_enabled / *prev_dtype for lewel_autocast_exit.
int lewel_autocast_enter(int device, int dtype, int* prev_enabled, int* prev_dtype) {
  LEWEL_GUARD({
    auto dt = device_type(device);
    *prev_enabled = at::autocast::is_autocast_enabled(dt) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(dt));
    at::autocast::set_autocast_enabled(dt, true);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(dtype));
    at::autocast::increment_nesting();
  })
}

int lewel_autocast_exit(int device, int prev_enabled, int prev_dtype) {
  LEWEL_GUARD({
    auto dt = device_type(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(dt, prev_enabled != 0);
    at::autocast::set_autocast_dtype(dt, static_cast<at::ScalarType>(prev_dtype));
  })
}

// GradScaler's unscale: grads *= inv_scale in place; found_inf (a 1-element float tensor) becomes 1 if any
// gradient holds an inf or NaN.
int lewel_amp_unscale(at::Tensor** grads, int n, at::Tensor* found_inf, at::Tensor* inv_scale) {
  LEWEL_GUARD({
    std::vector<at::Tensor> v;
    v.reserve(n);
    for (int i = 0; i < n; ++i) {
      v.push_back(*grads[i]);
    }
    at::_amp_foreach_non_finite_check_and_unscale_(v, *found_inf, *inv_scale);
  })
}

// ---- multi-tensor ("foreach") kernels: one launch for a whole list, as torch.optim's foreach paths --------


// a[i] *= s
int lewel_foreach_mul_scalar_(at::Tensor** a, int n, double s) {
  LEWEL_GUARD({ at::_foreach_mul_(list(a, n), s); })
}

// a[i] *= s[i]
int lewel_foreach_mul_scalars_(at::Tensor** a, int n, const double* s) {
  LEWEL_GUARD({
    std::vector<at::Scalar> sc(s, s + n);
    at::_foreach_mul_(list(a, n), sc);
  })
}

// out[i] = a[i] * s[i] (new tensors)
int lewel_foreach_mul_scalars(at::Tensor** a, int n, const double* s, at::Tensor** out) {
  LEWEL_GUARD({
    std::vector<at::Scalar> sc(s, s + n);
    auto r = at::_foreach_mul(list(a, n), sc);
    for (int i = 0; i < n; ++i) out[i] = new at::Tensor(std::move(r[i]));
  })
}

// a[i] += alpha * b[i]
int lewel_foreach_add_(at::Tensor** a, at::Tensor** b, int n, double alpha) {
  LEWEL_GUARD({ at::_foreach_add_(list(a, n), list(b, n), alpha); })
}

// out[i] = a[i] + alpha * b[i] (new tensors)
int lewel_foreach_add(at::Tensor** a, at::Tensor** b, int n, double alpha, at::Tensor** out) {
  LEWEL_GUARD({
    auto r = at::_foreach_add(list(a, n), list(b, n), alpha);
    for (int i = 0; i < n; ++i) out[i] = new at::Tensor(std::move(r[i]));
  })
}

// *out = the L2 norms of a[i], stacked into one 1-D tensor (float64)
int lewel_foreach_norms(at::Tensor** a, int n, at::Tensor** out) {
  LEWEL_GUARD({
    auto r = at::_foreach_norm(list(a, n), 2);
    *out = new at::Tensor(at::stack(r, 0).to(at::kDouble));
  })
}

// *out = `in` in channels-last (channels_last != 0) or the default contiguous memory format.
int lewel_memory_format(at::Tensor* in, int channels_last, at::Tensor** out) {
  LEWEL_GUARD({
    auto f = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    *out = new at::Tensor(in->contiguous(f));
  })
}

int lewel_is_channels_last(at::Tensor* in) { return in->is_contiguous(at::MemoryFormat::ChannelsLast) ? 1 : 0; }

} // extern "C"
