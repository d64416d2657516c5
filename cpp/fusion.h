// hvd_ps fused-buffer op: kernels and the engine glue share these declarations.
//
// A fused buffer is a list of arrays laid out back to back in one flat 1-D buffer; array i
// occupies elements [offset_i, offset_i + n_i) of the flat buffer.  Every kernel is one pass
// over the flat index space, split into contiguous ranges, one range per thread.
#ifndef HVD_PS_FUSION_H_
#define HVD_PS_FUSION_H_

#include <cstddef>
#include <cstdint>
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

// Element count under which an op runs on one thread.
constexpr int64_t kSingleThreadBelow = 256 * 1024;

}  // namespace hvdps

#endif  // HVD_PS_FUSION_H_
