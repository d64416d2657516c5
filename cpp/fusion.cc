// hvd_ps fused-buffer op: the extern "C" API loaded by hvd_ps/fusion.py with ctypes.
//
// hvdps_fusion_push() validates the NDArrays through MXNet's C API, takes their data pointers
// on the caller's thread (which also allocates delayed storage), and pushes one operation to
// MXNet's dependency engine that reads the const arrays and writes the mutable ones.  The
// engine runs it after every earlier writer of what it reads or writes and before every later
// reader or writer, so the call returns at once and overlaps with compute.
#include <mxnet/c_api.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "fusion.h"

#define HVDPS_API extern "C" __attribute__((visibility("default")))

namespace hvdps {
namespace {

thread_local std::string g_error;

enum Status { kOk = 0, kBadArgument = 1, kMXNetError = 2 };

// The same layout as mxnet::Context (an int-sized enum, then int32_t).
struct EngineContext {
  int dev_type;
  int32_t dev_id;
};

struct Failure {
  Status status;
  std::string message;
};

struct ArrayInfo {
  void* data = nullptr;
  int dtype = -1;
  int ndim = 0;
  int64_t size = 0;
};

void mx_check(int rc, const char* what) {
  if (rc != 0) throw Failure{kMXNetError, std::string(what) + ": " + MXGetLastError()};
}

// Dtype, shape, storage and context of one array; its data pointer if it has elements.
ArrayInfo inspect(NDArrayHandle h, const std::string& name) {
  if (h == nullptr) throw Failure{kBadArgument, name + " is a null NDArray handle"};
  ArrayInfo info;
  int stype = 0;
  mx_check(MXNDArrayGetStorageType(h, &stype), "MXNDArrayGetStorageType");
  if (stype != 0) {
    throw Failure{kBadArgument,
                  name + " has sparse storage; fused buffers take dense (default) arrays"};
  }
  int dev_type = 0, dev_id = 0;
  mx_check(MXNDArrayGetContext(h, &dev_type, &dev_id), "MXNDArrayGetContext");
  if (dev_type != 1 && dev_type != 3 && dev_type != 5) {  // cpu, cpu_pinned, cpu_shared
    throw Failure{kBadArgument, name + " is not in CPU memory; fused buffers are CPU-only"};
  }
  mx_check(MXNDArrayGetDType(h, &info.dtype), "MXNDArrayGetDType");
  if (!dtype_supported(info.dtype)) {
    throw Failure{kBadArgument, name + " has dtype " + dtype_name(info.dtype) +
                                    "; supported: float32, float64, float16"};
  }
  const int64_t* shape64 = nullptr;
  mx_check(MXNDArrayGetShapeEx64(h, &info.ndim, &shape64), "MXNDArrayGetShapeEx64");
  // With numpy shape semantics on, ndim 0 is a scalar and -1 an unknown shape; off (MXNet's
  // legacy default), ndim 0 is an unknown shape, which holds no elements.
  int np_shape = 0;
  mx_check(MXIsNumpyShape(&np_shape), "MXIsNumpyShape");
  if (info.ndim < 0) throw Failure{kBadArgument, name + " has an unknown shape"};
  info.size = (info.ndim == 0 && !np_shape) ? 0 : 1;
  for (int d = 0; d < info.ndim; ++d) {
    if (shape64[d] < 0) throw Failure{kBadArgument, name + " has an unknown shape"};
    info.size *= shape64[d];
  }
  if (info.size > 0) {
    mx_check(MXNDArrayGetData(h, &info.data), "MXNDArrayGetData");
    if (info.data == nullptr) throw Failure{kBadArgument, name + " has no storage"};
  }
  return info;
}

// The engine would deadlock on an array declared twice, and overlapping arrays make no sense.
void check_no_overlap(std::vector<std::pair<const char*, const char*>> ranges,
                      const std::vector<std::string>& names) {
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&ranges](size_t a, size_t b) { return ranges[a].first < ranges[b].first; });
  for (size_t k = 1; k < order.size(); ++k) {
    const auto& prev = ranges[order[k - 1]];
    const auto& cur = ranges[order[k]];
    if (cur.first < prev.second) {
      throw Failure{kBadArgument, names[order[k - 1]] + " and " + names[order[k]] +
                                      " share memory (the same array twice, or views of one "
                                      "array); give each array once"};
    }
  }
}

void run_engine_op(void* /*run_context*/, void* param) { run_op(*static_cast<OpSpec*>(param)); }
void delete_op(void* param) { delete static_cast<OpSpec*>(param); }

const char* op_name(OpKind kind) {
  switch (kind) {
    case OpKind::kPack: return "hvd_ps_fused_pack";
    case OpKind::kUnpack: return "hvd_ps_fused_unpack";
    case OpKind::kPackAxpby: return "hvd_ps_fused_pack_axpby";
    case OpKind::kElastic: return "hvd_ps_fused_elastic";
  }
  return "hvd_ps_fused";
}

void push(OpKind kind, NDArrayHandle* arrays, int n, NDArrayHandle flat, NDArrayHandle aux,
          double alpha, double beta, int threads) {
  const bool uses_aux = kind == OpKind::kPackAxpby || kind == OpKind::kElastic;
  if (n < 0) throw Failure{kBadArgument, "negative array count"};
  auto spec = std::make_unique<OpSpec>();
  spec->kind = kind;
  spec->alpha = alpha;
  spec->beta = beta;
  spec->threads = threads;

  std::vector<NDArrayHandle> nonempty;
  std::vector<std::pair<const char*, const char*>> ranges;
  std::vector<std::string> names;
  auto note_range = [&](const ArrayInfo& a, const std::string& name) {
    const char* p = static_cast<const char*>(a.data);
    ranges.emplace_back(p, p + a.size * static_cast<int64_t>(dtype_size(a.dtype)));
    names.push_back(name);
  };
  for (int i = 0; i < n; ++i) {
    const std::string name = "arrays[" + std::to_string(i) + "]";
    const ArrayInfo a = inspect(arrays[i], name);
    if (a.size == 0) continue;  // nothing to read or write: no dependency either
    spec->segments.push_back(Segment{a.data, a.dtype, a.size, spec->total});
    spec->total += a.size;
    nonempty.push_back(arrays[i]);
    note_range(a, name);
  }

  const ArrayInfo f = inspect(flat, "flat buffer");
  if (f.ndim != 1 || f.size != spec->total) {
    throw Failure{kBadArgument, "flat buffer must be 1-D with " + std::to_string(spec->total) +
                                    " elements (the arrays' total), got " +
                                    std::to_string(f.ndim) + "-D with " +
                                    std::to_string(f.size)};
  }
  spec->flat = f.data;
  spec->flat_dtype = f.dtype;
  bool aux_is_flat = false;
  if (uses_aux) {
    const char* what = kind == OpKind::kElastic ? "centre" : "ref";
    const ArrayInfo a = inspect(aux, what);
    if (a.ndim != 1 || a.size != spec->total) {
      throw Failure{kBadArgument, std::string(what) + " must be 1-D with " +
                                      std::to_string(spec->total) + " elements, got " +
                                      std::to_string(a.ndim) + "-D with " +
                                      std::to_string(a.size)};
    }
    spec->aux = a.data;
    spec->aux_dtype = a.dtype;
    // pack_axpby may write its result over ref (same array): then ref is only mutable.
    aux_is_flat = kind == OpKind::kPackAxpby && (aux == flat || (a.data == f.data &&
                                                                  a.dtype == f.dtype));
    if (!aux_is_flat) note_range(a, what);
  }
  if (spec->total == 0) return;  // empty buffer: nothing to do
  note_range(f, "flat buffer");
  check_no_overlap(ranges, names);

  std::vector<NDArrayHandle> reads, writes;
  switch (kind) {
    case OpKind::kPack:
      reads = nonempty;
      writes = {flat};
      break;
    case OpKind::kUnpack:
      reads = {flat};
      writes = nonempty;
      break;
    case OpKind::kPackAxpby:
      reads = nonempty;
      if (!aux_is_flat) reads.push_back(aux);
      writes = {flat};
      break;
    case OpKind::kElastic:
      reads = {aux};
      writes = nonempty;
      writes.push_back(flat);
      break;
  }
  static const EngineContext cpu{1, 0};
  OpSpec* raw = spec.release();
  const int rc = MXEnginePushSyncND(run_engine_op, raw, delete_op, &cpu, reads.data(),
                                    static_cast<int>(reads.size()), writes.data(),
                                    static_cast<int>(writes.size()), nullptr, 0, op_name(kind));
  mx_check(rc, "MXEnginePushSyncND");  // on failure raw may leak: MXNet may have freed it
}

}  // namespace
}  // namespace hvdps

// ---------------------------------------------------------------------------------------------
// C API.  Every function returning int returns 0 on success, 1 for a bad argument and 2 for an
// MXNet error; hvdps_fusion_last_error() then says what went wrong (per calling thread).

HVDPS_API const char* hvdps_fusion_last_error() { return hvdps::g_error.c_str(); }

// kind: 0 pack, 1 unpack, 2 pack_axpby, 3 elastic (see OpKind).  aux: ref or centre, else NULL.
HVDPS_API int hvdps_fusion_push(int kind, NDArrayHandle* arrays, int n, NDArrayHandle flat,
                                NDArrayHandle aux, double alpha, double beta, int threads) {
  try {
    if (kind < 0 || kind > 3) throw hvdps::Failure{hvdps::kBadArgument, "unknown op kind"};
    hvdps::push(static_cast<hvdps::OpKind>(kind), arrays, n, flat, aux, alpha, beta, threads);
    return hvdps::kOk;
  } catch (const hvdps::Failure& e) {
    hvdps::g_error = e.message;
    return e.status;
  } catch (const std::exception& e) {
    hvdps::g_error = e.what();
    return hvdps::kMXNetError;
  }
}

HVDPS_API int hvdps_fusion_threads(int requested) { return hvdps::resolve_threads(requested); }

HVDPS_API int hvdps_fusion_has_f16c() { return hvdps::have_f16c() ? 1 : 0; }

// Direct float16 conversion of host memory, for tests and benchmarks (portable: skip F16C).
HVDPS_API void hvdps_fusion_float_to_half(const float* src, uint16_t* dst, int64_t n,
                                          int portable) {
  hvdps::float_to_half(src, dst, n, portable != 0);
}

HVDPS_API void hvdps_fusion_half_to_float(const uint16_t* src, float* dst, int64_t n,
                                          int portable) {
  hvdps::half_to_float(src, dst, n, portable != 0);
}
