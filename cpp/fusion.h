// hvd_ps fused-buffer op: kernels and the engine glue share these declarations.
//
// A fused buffer is a list of arrays laid out back to back in one flat 1-D buffer; array i
// occupies elements [offset_i, offset_i + n_i) of the flat buffer.  Every kernel is one pass
// over the flat index space, split into contiguous ranges, one range per thread.
#ifndef HVD_PS_FUSION_H_
#define HVD_PS_FUSION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hvdps {

// MXNet's dtype codes (mshadow::TypeFlag) for the dtypes the op supports.
enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2 };

inline size_t dtype_size(int dtype) { return dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2; }
inline bool dtype_supported(int dtype) {
  return dtype == kFloat32 || dtype == kFloat64 || dtype == kFloat16;
}
const char* dtype_name(int dtype);

enum class OpKind : int {
  kPack = 0,       // flat = x                          (cast to the flat's dtype)
  kUnpack = 1,     // x = alpha * flat + beta * x       (beta == 0: x is not read)
  kPackAxpby = 2,  // flat = alpha * x + beta * aux     (aux: flat ref; may alias flat)
  kElastic = 3,    // d = alpha * (x - aux); flat = d; x -= d   (aux: flat centre)
};

// One array of the buffer: where it lives and where it goes in the flat buffer.
struct Segment {
  void* data;
  int dtype;
  int64_t size;    // elements
  int64_t offset;  // first element in the flat buffer
};

// Everything one op needs once its dependencies are met.  Pointers were taken at push time.
struct OpSpec {
  OpKind kind;
  std::vector<Segment> segments;  // zero-size arrays are left out
  int64_t total = 0;              // flat length
  void* flat = nullptr;           // pack / unpack source / axpby and elastic output
  int flat_dtype = kFloat32;
  const void* aux = nullptr;      // ref (pack_axpby) or centre (elastic)
  int aux_dtype = kFloat32;
  double alpha = 1.0;
  double beta = 0.0;
  int threads = 0;                // 0: min(4, hardware threads)
};

// Threads an op uses: requested if > 0, else min(4, hardware threads).
int resolve_threads(int requested);

// Runs the op on the calling thread plus helper threads of a process-wide pool.
void run_op(const OpSpec& spec);

// Float16 conversion (round to nearest even; inf, nan and subnormals handled).
// force_portable: skip the F16C path even when the CPU has it (tests compare the two).
void float_to_half(const float* src, uint16_t* dst, int64_t n, bool force_portable = false);
void half_to_float(const uint16_t* src, float* dst, int64_t n, bool force_portable = false);
bool have_f16c();

// ---------------------------------------------------------------------------------------------
// The compressed wire (hvd_ps/ps/protocol.py documents the format).  A bucket of `total` float32
// elements is cut into shards; shard k holds elements [bounds[k], bounds[k+1]) and its part
// starts at byte part_offset(k) of the wire buffer.
struct WireSpec {
  int bits = 8;            // 8 or 4
  int block = 128;         // elements per block (even)
  std::vector<int64_t> bounds;  // shard boundaries, bounds.front() == 0, bounds.back() == total
  std::vector<int64_t> offsets; // byte offset of each shard's part; offsets.back() == wire bytes
  float* src = nullptr;    // encode: what to send (float32), read
  float* residual = nullptr;  // encode: the sender's residual, read and written (null: none)
  float* shadow = nullptr;    // decode: the copy the reply is added to, read and written;
                              // encode (the servers' reply): what src's change is taken from
  uint8_t* wire = nullptr;
  int sender = 0;          // encode: the header's sender
  uint32_t seq = 0;        // encode: the header's sequence; decode: the sequence expected
  bool any_sender = false; // decode: take any sender and sequence (a server reading a push)
  int threads = 0;
};

constexpr int kWireHeader = 16;
constexpr int kWireMaxBlock = 32768;  // the header's limit (hvd_ps.ps.protocol.MAX_BLOCK)
inline int64_t wire_block_bytes(int bits, int block) { return 4 + block * bits / 8; }
inline int64_t wire_part_bytes(int64_t n, int bits, int block) {
  return kWireHeader + (n + block - 1) / block * wire_block_bytes(bits, block);
}

// Fills spec->offsets from spec->bounds; false if a shard is empty or too large for a header.
bool wire_layout(WireSpec* spec);
// v = src + residual per block; codes and scales into the parts; residual = v - decoded.
// With `shadow` set instead (the servers' reply): v = src - shadow; shadow += decoded.
void wire_encode(const WireSpec& spec);
// The same encode of `alpha * x + beta * ref` in one pass, x the float32 arrays of `segments`
// laid out flat (their offsets rise); also writes that value to `out` unless it is null.
void wire_encode_axpby(const WireSpec& spec, const std::vector<Segment>& segments,
                       const float* ref, float alpha, float beta, float* out);
// Checks every part's header (magic, version, bits, block, n, sender = servers, seq) and adds
// its decoded values to the shadow.  Returns an empty string, or what was wrong (nothing
// is added then).
std::string wire_decode_add(const WireSpec& spec);

// Calls fn(lo, hi) over [0, items) split into contiguous ranges, one per thread of the pool;
// items are blocks of the wire (at least 512 per thread).
void run_parallel(int64_t items, int threads, const std::function<void(int64_t, int64_t)>& fn);

// Element count under which an op runs on one thread.
constexpr int64_t kSingleThreadBelow = 256 * 1024;

}  // namespace hvdps

#endif  // HVD_PS_FUSION_H_
