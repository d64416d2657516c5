// hvd_ps fused-buffer op: the extern "C" API loaded by hvd_ps/fusion.py with ctypes.
//
// hvdps_fusion_push() validates the NDArrays through MXNet's C API and pushes one operation to
// MXNet's dependency engine that reads the const arrays and writes the mutable ones.  The
// engine runs it after every earlier writer of what it reads or writes and before every later
// reader or writer, so the call returns at once and overlaps with compute.
//
// Data pointers: the buffer's own arrays are waited for and allocated once, when the buffer is
// made (hvdps_fusion_prepare); their pointers are then taken on the caller's thread at each push
// (MXNDArrayGetData also converts an MKLDNN-layout array back to the default layout there, which
// it could not do from inside an engine op holding the array).  The flat operands' pointers are
// taken inside the engine op, since their storage may still be allocated by an in-flight op.
#include <mxnet/c_api.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <mutex>
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

// An op that fails on an engine thread cannot report to its caller, who has long returned.
// The first such failure is kept here until the next call into this library (or
// hvdps_fusion_take_engine_error) hands it to Python, which raises it; until then the arrays the
// op was to write hold stale values, so nothing may go on as if it had run.
std::mutex g_engine_mu;
std::string g_engine_error;
std::string g_inject;  // tests: the next engine op fails with this message

void record_engine_error(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_engine_mu);
  if (g_engine_error.empty()) g_engine_error = message;
}

// Throws the recorded engine-op failure (once), so the call that meets it fails.
void raise_engine_error() {
  std::string message;
  {
    std::lock_guard<std::mutex> lock(g_engine_mu);
    message.swap(g_engine_error);
  }
  if (!message.empty()) {
    throw Failure{kMXNetError, "an earlier fused-buffer op failed: " + message};
  }
}

struct ArrayInfo {
  void* data = nullptr;
  int dtype = -1;
  int ndim = 0;
  int64_t size = 0;
};

void mx_check(int rc, const char* what) {
  if (rc != 0) throw Failure{kMXNetError, std::string(what) + ": " + MXGetLastError()};
}

// Dtype, shape, storage and context of one array; with fetch_data, its data pointer too (if it
// has elements), which allocates delayed storage.
ArrayInfo inspect(NDArrayHandle h, const std::string& name, bool fetch_data) {
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
  if (fetch_data && info.size > 0) {
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

// An op as pushed: the kernel spec plus the flat operands, whose data pointers are taken only
// when the engine runs the op.  A flat operand is typically fresh (a pull's or an MXNet op's
// output still being computed); its storage may be allocated by that in-flight op on an engine
// thread, so asking for its pointer on the caller's thread would race with that allocation.
// The op holds its own references to the flat operands (shallow copies: new NDArray objects
// sharing the storage), since the caller's may be freed before the engine runs it.
struct EngineOp {
  OpSpec spec;
  NDArrayHandle flat = nullptr;
  NDArrayHandle aux = nullptr;  // null when unused or when it is the flat buffer itself
  ~EngineOp() {
    if (flat != nullptr) MXNDArrayFree(flat);
    if (aux != nullptr) MXNDArrayFree(aux);
  }
};

const char* op_name(OpKind kind);

// Runs on an engine thread: nothing may escape it (the engine calls it through a C pointer),
// so every failure is recorded for the next call instead.
void run_engine_op(void* /*run_context*/, void* param) noexcept {
  EngineOp* op = static_cast<EngineOp*>(param);
  try {
    {
      std::lock_guard<std::mutex> lock(g_engine_mu);
      if (!g_inject.empty()) {
        std::string message;
        message.swap(g_inject);
        throw Failure{kMXNetError, message};
      }
    }
    void* flat = nullptr;
    void* aux = nullptr;
    if (MXNDArrayGetData(op->flat, &flat) != 0 ||
        (op->aux != nullptr && MXNDArrayGetData(op->aux, &aux) != 0) || flat == nullptr) {
      throw Failure{kMXNetError, std::string("no data pointer: ") + MXGetLastError()};
    }
    op->spec.flat = flat;
    if (op->spec.kind == OpKind::kPackAxpby || op->spec.kind == OpKind::kElastic) {
      op->spec.aux = op->aux != nullptr ? aux : flat;
    }
    run_op(op->spec);
  } catch (const Failure& e) {
    record_engine_error(std::string(op_name(op->spec.kind)) + ": " + e.message);
  } catch (const std::exception& e) {
    record_engine_error(std::string(op_name(op->spec.kind)) + ": " + e.what());
  } catch (...) {
    record_engine_error(std::string(op_name(op->spec.kind)) + ": unknown C++ exception");
  }
}
void delete_op(void* param) { delete static_cast<EngineOp*>(param); }

const char* op_name(OpKind kind) {
  switch (kind) {
    case OpKind::kPack: return "hvd_ps_fused_pack";
    case OpKind::kUnpack: return "hvd_ps_fused_unpack";
    case OpKind::kPackAxpby: return "hvd_ps_fused_pack_axpby";
    case OpKind::kElastic: return "hvd_ps_fused_elastic";
  }
  return "hvd_ps_fused";
}

// The buffer's arrays: validated, with their data pointers (taken on this thread: they were
// allocated by prepare(), so no in-flight op can be allocating them now).  Also checks that no
// two of them share memory, which the engine could not take (one variable declared twice).
std::vector<ArrayInfo> inspect_arrays(NDArrayHandle* arrays, int n) {
  if (n < 0) throw Failure{kBadArgument, "negative array count"};
  std::vector<ArrayInfo> infos;
  std::vector<std::pair<const char*, const char*>> ranges;
  std::vector<std::string> names;
  for (int i = 0; i < n; ++i) {
    const std::string name = "arrays[" + std::to_string(i) + "]";
    infos.push_back(inspect(arrays[i], name, true));
    const ArrayInfo& a = infos.back();
    if (a.size == 0) continue;
    const char* p = static_cast<const char*>(a.data);
    ranges.emplace_back(p, p + a.size * static_cast<int64_t>(dtype_size(a.dtype)));
    names.push_back(name);
  }
  check_no_overlap(ranges, names);
  return infos;
}

void prepare(NDArrayHandle* arrays, int n) {
  for (int i = 0; i < n; ++i) {
    inspect(arrays[i], "arrays[" + std::to_string(i) + "]", false);
    mx_check(MXNDArrayWaitToRead(arrays[i]), "MXNDArrayWaitToRead");
  }
  inspect_arrays(arrays, n);  // allocates delayed storage, now that no producer is in flight
}

void push(OpKind kind, NDArrayHandle* arrays, int n, NDArrayHandle flat, NDArrayHandle aux,
          double alpha, double beta, int threads) {
  const bool uses_aux = kind == OpKind::kPackAxpby || kind == OpKind::kElastic;
  auto op = std::make_unique<EngineOp>();
  OpSpec* spec = &op->spec;
  spec->kind = kind;
  spec->alpha = alpha;
  spec->beta = beta;
  spec->threads = threads;

  const std::vector<ArrayInfo> infos = inspect_arrays(arrays, n);
  std::vector<NDArrayHandle> nonempty;
  for (int i = 0; i < n; ++i) {
    const ArrayInfo& a = infos[i];
    if (flat == arrays[i] || (uses_aux && aux == arrays[i])) {
      throw Failure{kBadArgument, "arrays[" + std::to_string(i) +
                                      "] is also given as a flat operand; use a separate array"};
    }
    if (a.size == 0) continue;  // nothing to read or write: no dependency either
    spec->segments.push_back(Segment{a.data, a.dtype, a.size, spec->total});
    spec->total += a.size;
    nonempty.push_back(arrays[i]);
  }

  const ArrayInfo f = inspect(flat, "flat buffer", false);
  if (f.ndim != 1 || f.size != spec->total) {
    throw Failure{kBadArgument, "flat buffer must be 1-D with " + std::to_string(spec->total) +
                                    " elements (the arrays' total), got " +
                                    std::to_string(f.ndim) + "-D with " +
                                    std::to_string(f.size)};
  }
  spec->flat_dtype = f.dtype;
  bool aux_is_flat = false;
  if (uses_aux) {
    const char* what = kind == OpKind::kElastic ? "centre" : "ref";
    const ArrayInfo a = inspect(aux, what, false);
    if (a.ndim != 1 || a.size != spec->total) {
      throw Failure{kBadArgument, std::string(what) + " must be 1-D with " +
                                      std::to_string(spec->total) + " elements, got " +
                                      std::to_string(a.ndim) + "-D with " +
                                      std::to_string(a.size)};
    }
    spec->aux_dtype = a.dtype;
    aux_is_flat = aux == flat;  // pack_axpby may write its result over ref: then it is mutable
    if (aux_is_flat && kind == OpKind::kElastic) {
      throw Failure{kBadArgument, "the centre must not be the output array"};
    }
  }
  if (spec->total == 0) return;  // empty buffer: nothing to do
  mx_check(MXShallowCopyNDArray(flat, &op->flat), "MXShallowCopyNDArray");
  if (uses_aux && !aux_is_flat) mx_check(MXShallowCopyNDArray(aux, &op->aux), "MXShallowCopyNDArray");

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
  EngineOp* raw = op.release();
  const int rc = MXEnginePushSyncND(run_engine_op, raw, delete_op, &cpu, reads.data(),
                                    static_cast<int>(reads.size()), writes.data(),
                                    static_cast<int>(writes.size()), nullptr, 0, op_name(kind));
  mx_check(rc, "MXEnginePushSyncND");  // on failure raw may leak: MXNet may have freed it
}

// A compressed-wire op (encode or decode_add) as pushed; its arrays' pointers are taken when
// the engine runs it, as for the flat operands above.
struct WireOp {
  WireSpec spec;
  bool encode = true;
  NDArrayHandle data = nullptr;  // encode: src (or the fused encode's ref); decode: shadow
  NDArrayHandle aux = nullptr;   // encode: residual
  NDArrayHandle wire = nullptr;
  // the fused encode of alpha x + beta ref: x's arrays (pointers taken at push), optional out
  std::vector<Segment> segments;
  NDArrayHandle out = nullptr;
  float alpha = 1.0f, beta = 0.0f;
  ~WireOp() {
    for (NDArrayHandle h : {data, aux, wire, out}) {
      if (h != nullptr) MXNDArrayFree(h);
    }
  }
};

void run_wire_op(void* /*run_context*/, void* param) noexcept {
  WireOp* op = static_cast<WireOp*>(param);
  const char* name = op->encode ? "hvd_ps_wire_encode" : "hvd_ps_wire_decode_add";
  try {
    void *data = nullptr, *aux = nullptr, *wire = nullptr;
    if (MXNDArrayGetData(op->data, &data) != 0 || MXNDArrayGetData(op->wire, &wire) != 0 ||
        (op->aux != nullptr && MXNDArrayGetData(op->aux, &aux) != 0) || data == nullptr ||
        wire == nullptr) {
      throw Failure{kMXNetError, std::string("no data pointer: ") + MXGetLastError()};
    }
    op->spec.wire = static_cast<uint8_t*>(wire);
    if (op->encode && !op->segments.empty()) {
      void* out = nullptr;
      if (op->out != nullptr && MXNDArrayGetData(op->out, &out) != 0) {
        throw Failure{kMXNetError, std::string("no data pointer: ") + MXGetLastError()};
      }
      op->spec.residual = static_cast<float*>(aux);
      wire_encode_axpby(op->spec, op->segments, static_cast<const float*>(data), op->alpha,
                        op->beta, static_cast<float*>(out));
    } else if (op->encode) {
      op->spec.src = static_cast<float*>(data);
      op->spec.residual = static_cast<float*>(aux);
      wire_encode(op->spec);
    } else {
      op->spec.shadow = static_cast<float*>(data);
      const std::string why = wire_decode_add(op->spec);
      if (!why.empty()) throw Failure{kMXNetError, why};
    }
  } catch (const Failure& e) {
    record_engine_error(std::string(name) + ": " + e.message);
  } catch (const std::exception& e) {
    record_engine_error(std::string(name) + ": " + e.what());
  } catch (...) {
    record_engine_error(std::string(name) + ": unknown C++ exception");
  }
}
void delete_wire_op(void* param) { delete static_cast<WireOp*>(param); }

// A 1-D array of `dtype` and `size` elements, or a bad-argument failure naming it.
void check_flat(NDArrayHandle h, const std::string& name, int dtype, int64_t size) {
  if (h == nullptr) throw Failure{kBadArgument, name + " is a null NDArray handle"};
  int got = -1, ndim = 0, stype = 0;
  mx_check(MXNDArrayGetStorageType(h, &stype), "MXNDArrayGetStorageType");
  mx_check(MXNDArrayGetDType(h, &got), "MXNDArrayGetDType");
  const int64_t* shape = nullptr;
  mx_check(MXNDArrayGetShapeEx64(h, &ndim, &shape), "MXNDArrayGetShapeEx64");
  if (stype != 0 || got != dtype || ndim != 1 || shape[0] != size) {
    throw Failure{kBadArgument, name + " must be a dense 1-D " + dtype_name(dtype) + " array of " +
                                    std::to_string(size) + " elements"};
  }
}

void push_wire(bool encode, NDArrayHandle data, NDArrayHandle aux, NDArrayHandle wire,
               const int64_t* bounds, int nbounds, int bits, int block, int sender, uint32_t seq,
               int threads, NDArrayHandle* arrays = nullptr, int narrays = 0,
               NDArrayHandle out = nullptr, double alpha = 1.0, double beta = 0.0) {
  auto op = std::make_unique<WireOp>();
  std::vector<NDArrayHandle> xs;  // the fused encode's arrays (read)
  if (arrays != nullptr) {
    const std::vector<ArrayInfo> infos = inspect_arrays(arrays, narrays);
    int64_t total = 0;
    for (int i = 0; i < narrays; ++i) {
      if (infos[i].dtype != kFloat32) {
        throw Failure{kBadArgument, "the fused encode takes float32 arrays only"};
      }
      if (arrays[i] == data || arrays[i] == aux || arrays[i] == wire || arrays[i] == out) {
        throw Failure{kBadArgument, "an array of the buffer is also a flat operand"};
      }
      if (infos[i].size == 0) continue;
      op->segments.push_back(Segment{infos[i].data, kFloat32, infos[i].size, total});
      total += infos[i].size;
      xs.push_back(arrays[i]);
    }
    if (op->segments.empty()) throw Failure{kBadArgument, "the buffer is empty"};
    op->alpha = static_cast<float>(alpha);
    op->beta = static_cast<float>(beta);
  }
  WireSpec* spec = &op->spec;
  op->encode = encode;
  if (bits != 8 && bits != 4) throw Failure{kBadArgument, "bits must be 8 or 4"};
  if (block < 8 || block > kWireMaxBlock || block % 8 != 0) {
    throw Failure{kBadArgument, "block must be a multiple of 8, 8..32768"};
  }
  if (nbounds < 2 || bounds[0] != 0) throw Failure{kBadArgument, "shard bounds must start at 0"};
  spec->bits = bits;
  spec->block = block;
  spec->bounds.assign(bounds, bounds + nbounds);
  if (!wire_layout(spec)) throw Failure{kBadArgument, "a shard is empty or too large"};
  spec->sender = sender;
  spec->seq = seq;
  spec->threads = threads;
  const int64_t total = spec->bounds.back();
  check_flat(data, encode ? (arrays != nullptr ? "ref" : "src") : "shadow", kFloat32, total);
  if (arrays != nullptr && op->segments.back().offset + op->segments.back().size != total) {
    throw Failure{kBadArgument, "the buffer's size differs from the shards' total"};
  }
  if (out != nullptr) check_flat(out, "out", kFloat32, total);
  // the parts travel as float32 elements (MXNet's servers take float arrays only)
  check_flat(wire, "wire", kFloat32, spec->offsets.back() / 4);
  if (encode) check_flat(aux, "residual", kFloat32, total);
  if (data == wire || data == aux || aux == wire ||
      (out != nullptr && (out == data || out == aux || out == wire))) {
    throw Failure{kBadArgument, "the wire op's arrays must be distinct"};
  }
  mx_check(MXShallowCopyNDArray(data, &op->data), "MXShallowCopyNDArray");
  mx_check(MXShallowCopyNDArray(wire, &op->wire), "MXShallowCopyNDArray");
  if (encode) mx_check(MXShallowCopyNDArray(aux, &op->aux), "MXShallowCopyNDArray");
  if (out != nullptr) mx_check(MXShallowCopyNDArray(out, &op->out), "MXShallowCopyNDArray");
  std::vector<NDArrayHandle> reads, writes;
  if (encode) {
    reads = {data};
    reads.insert(reads.end(), xs.begin(), xs.end());
    writes = {aux, wire};
    if (out != nullptr) writes.push_back(out);
  } else {
    reads = {wire};
    writes = {data};
  }
  static const EngineContext cpu{1, 0};
  WireOp* raw = op.release();
  const int rc = MXEnginePushSyncND(
      run_wire_op, raw, delete_wire_op, &cpu, reads.data(), static_cast<int>(reads.size()),
      writes.data(), static_cast<int>(writes.size()), nullptr, 0,
      encode ? "hvd_ps_wire_encode" : "hvd_ps_wire_decode_add");
  mx_check(rc, "MXEnginePushSyncND");
}

}  // namespace
}  // namespace hvdps

// ---------------------------------------------------------------------------------------------
// C API.  Every function returning int returns 0 on success, 1 for a bad argument and 2 for an
// MXNet error; hvdps_fusion_last_error() then says what went wrong (per calling thread).

HVDPS_API const char* hvdps_fusion_last_error() { return hvdps::g_error.c_str(); }

// kind: 0 pack, 1 unpack, 2 pack_axpby, 3 elastic (see OpKind).  aux: ref or centre, else NULL.
namespace hvdps {
namespace {

// Runs `body` for a C entry point: every exception becomes a status code and g_error, so none
// crosses the C API; an engine-op failure recorded since the last call is raised first.
template <class Body>
int guarded(Body body) noexcept {
  try {
    raise_engine_error();
    body();
    return kOk;
  } catch (const Failure& e) {
    g_error = e.message;
    return e.status;
  } catch (const std::exception& e) {
    g_error = e.what();
    return kMXNetError;
  } catch (...) {
    g_error = "unknown C++ exception";
    return kMXNetError;
  }
}

}  // namespace
}  // namespace hvdps

HVDPS_API int hvdps_fusion_push(int kind, NDArrayHandle* arrays, int n, NDArrayHandle flat,
                                NDArrayHandle aux, double alpha, double beta, int threads) {
  return hvdps::guarded([&] {
    if (kind < 0 || kind > 3) throw hvdps::Failure{hvdps::kBadArgument, "unknown op kind"};
    hvdps::push(static_cast<hvdps::OpKind>(kind), arrays, n, flat, aux, alpha, beta, threads);
  });
}

// Validates a buffer's arrays once: waits for their pending writes, allocates delayed storage
// and checks that no two share memory.  Blocks; call it when the buffer is made.
HVDPS_API int hvdps_fusion_prepare(NDArrayHandle* arrays, int n) {
  return hvdps::guarded([&] { hvdps::prepare(arrays, n); });
}

// The failure of an engine op recorded since the last call, if any: 0 none, 2 one (then
// hvdps_fusion_last_error() says what).  Called after waiting for the buffers' results.
HVDPS_API int hvdps_fusion_take_engine_error() {
  return hvdps::guarded([] {});
}

// Tests only: the next fused-buffer op that runs on the engine fails with `message`.
HVDPS_API void hvdps_fusion_inject_engine_error(const char* message) {
  try {
    std::lock_guard<std::mutex> lock(hvdps::g_engine_mu);
    hvdps::g_inject = message != nullptr && message[0] != '\0' ? message : "injected failure";
  } catch (...) {
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

// The compressed wire: kind 0 encodes `data` (src) plus `aux` (the residual) into `wire` and
// updates the residual; kind 1 checks the reply in `wire` (sequence `seq`) and adds it to
// `data` (the leader's copy).  `bounds`: the nbounds shard boundaries (0 .. elements).
HVDPS_API int hvdps_wire_push(int kind, NDArrayHandle data, NDArrayHandle aux, NDArrayHandle wire,
                              const int64_t* bounds, int nbounds, int bits, int block, int sender,
                              uint32_t seq, int threads) {
  return hvdps::guarded([&] {
    if (kind != 0 && kind != 1) throw hvdps::Failure{hvdps::kBadArgument, "unknown wire op"};
    hvdps::push_wire(kind == 0, data, aux, wire, bounds, nbounds, bits, block, sender, seq,
                     threads);
  });
}

// The compressed wire on host memory, run on the calling thread (and the pool's helpers): the
// servers' side, which has no engine to queue on.  kind 0 encodes `values` (plus `residual`
// unless null, which it then updates) into `wire`; kind 1 adds the decoded `wire` to `values`
// after checking that it is the servers' reply to exchange `seq`; kind 2 does the same for a
// leader's push, of any sender and sequence (the caller checked its header).  Every part's
// format, scales and codes are checked before anything is added.  kind 3 is the servers'
// reply: it encodes `values - residual` (their state less their shadow of a leader's copy)
// and adds the decoded values to that shadow, as the leader will to its copy.
HVDPS_API int hvdps_wire_host(int kind, float* values, float* residual, uint8_t* wire,
                              const int64_t* bounds, int nbounds, int bits, int block, int sender,
                              uint32_t seq, int threads) {
  return hvdps::guarded([&] {
    using hvdps::Failure;
    if (kind < 0 || kind > 3) throw Failure{hvdps::kBadArgument, "unknown wire op"};
    if (bits != 8 && bits != 4) throw Failure{hvdps::kBadArgument, "bits must be 8 or 4"};
    if (block < 8 || block > hvdps::kWireMaxBlock || block % 8 != 0) {
      throw Failure{hvdps::kBadArgument, "block must be a multiple of 8, 8..32768"};
    }
    if (nbounds < 2 || bounds[0] != 0) {
      throw Failure{hvdps::kBadArgument, "shard bounds must start at 0"};
    }
    if (values == nullptr || wire == nullptr) throw Failure{hvdps::kBadArgument, "null buffer"};
    hvdps::WireSpec spec;
    spec.bits = bits;
    spec.block = block;
    spec.bounds.assign(bounds, bounds + nbounds);
    if (!hvdps::wire_layout(&spec)) {
      throw Failure{hvdps::kBadArgument, "a shard is empty or too large"};
    }
    spec.sender = sender;
    spec.seq = seq;
    spec.threads = threads;
    spec.wire = wire;
    if (kind == 0 || kind == 3) {  // 3: the servers' reply, `residual` their shadow
      spec.src = values;
      (kind == 0 ? spec.residual : spec.shadow) = residual;
      hvdps::wire_encode(spec);
      return;
    }
    spec.shadow = values;
    spec.any_sender = kind == 2;
    const std::string why = hvdps::wire_decode_add(spec);
    if (!why.empty()) throw Failure{hvdps::kBadArgument, why};
  });
}

// The fused encode: `alpha * x + beta * ref` (x the buffer's float32 `arrays`, ref a flat
// array) plus `residual`, encoded into `wire` in one pass; that value also goes to `out`
// unless it is null.  As hvdps_wire_push's encode otherwise.
HVDPS_API int hvdps_wire_push_axpby(NDArrayHandle* arrays, int narrays, NDArrayHandle ref,
                                    double alpha, double beta, NDArrayHandle residual,
                                    NDArrayHandle wire, NDArrayHandle out, const int64_t* bounds,
                                    int nbounds, int bits, int block, int sender, uint32_t seq,
                                    int threads) {
  return hvdps::guarded([&] {
    hvdps::push_wire(true, ref, residual, wire, bounds, nbounds, bits, block, sender, seq,
                     threads, arrays, narrays, out, alpha, beta);
  });
}
