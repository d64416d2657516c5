// hvd_ps fused-buffer op: float16 conversion, the per-element kernels and the thread pool.
// Nothing here knows about MXNet; fusion.cc takes the pointers and pushes run_op to the engine.
#include <immintrin.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "fusion.h"

namespace hvdps {

const char* dtype_name(int dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kFloat16: return "float16";
    case 3: return "uint8";
    case 4: return "int32";
    case 5: return "int8";
    case 6: return "int64";
    case 7: return "bool";
    case 12: return "bfloat16";
    default: return "unknown";
  }
}

// ---------------------------------------------------------------------------------------------
// float16 <-> float32.  Portable versions are exact IEEE round-to-nearest-even; the F16C versions
// do the same in hardware, 8 lanes at a time, and are used when the CPU has the instructions.

static inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static inline float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t half_from_float_bits(uint32_t x) {
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf stays inf; nan stays a (quiet) nan with its top payload bits
    return static_cast<uint16_t>(
        sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0u));
  }
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: rounds to inf
  if (ax >= 0x38800000u) {  // normal half: drop 13 mantissa bits with round-to-nearest-even
    ax += 0xfffu + ((ax >> 13) & 1u);
    ax -= (127u - 15u) << 23;
    return static_cast<uint16_t>(sign | (ax >> 13));
  }
  if (ax < 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25: rounds to (signed) zero
  // Subnormal half: value / 2^-24, rounded to nearest even.  A carry into bit 10 correctly
  // produces the smallest normal number.
  const uint32_t e = ax >> 23;                      // 102..112
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;  // 24-bit significand
  const uint32_t shift = 126u - e;                  // 14..24
  uint32_t r = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
  if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

static inline float float_from_half(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return float_of(sign | 0x7f800000u | (m << 13));
  if (e != 0) return float_of(sign | ((e + 112u) << 23) | (m << 13));
  const float mag = static_cast<float>(m) * 5.9604644775390625e-08f;  // m * 2^-24, exact
  return sign ? -mag : mag;
}

// double -> half without double rounding: round to float with round-to-odd (so the float keeps
// a sticky bit), then round that float to half with round-to-nearest-even.
static inline uint16_t half_from_double(double d) {
  float f = static_cast<float>(d);
  if (std::isfinite(f) && static_cast<double>(f) != d) {
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
    f = float_of(bits_of(f) | 1u);
  } else if (std::isinf(f) && !std::isinf(d)) {
    f = std::copysign(3.4028234663852886e38f, f);  // beyond float range: far beyond half's too
  }
  return half_from_float_bits(bits_of(f));
}

__attribute__((target("avx,f16c"))) static void float_to_half_f16c(const float* src,
                                                                    uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = half_from_float_bits(bits_of(src[i]));
}

__attribute__((target("avx,f16c"))) static void half_to_float_f16c(const uint16_t* src,
                                                                    float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = float_from_half(src[i]);
}

bool have_f16c() {
  static const bool ok = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return ok;
}

void float_to_half(const float* src, uint16_t* dst, int64_t n, bool force_portable) {
  if (!force_portable && have_f16c()) return float_to_half_f16c(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = half_from_float_bits(bits_of(src[i]));
}

void half_to_float(const uint16_t* src, float* dst, int64_t n, bool force_portable) {
  if (!force_portable && have_f16c()) return half_to_float_f16c(src, dst, n);
  for (int64_t i = 0; i < n; ++i) dst[i] = float_from_half(src[i]);
}

// ---------------------------------------------------------------------------------------------
// Kernels.  Arithmetic runs in blocks of kBlock elements in a compute type T: double when any
// operand is float64, else float.  load() returns the operand as T (the array itself when its
// dtype is T, else a converted copy in a stack buffer); results go straight to the destination
// when its dtype is T, else through a buffer and store().

constexpr int64_t kBlock = 1024;

template <typename T>
struct Buf {
  alignas(64) T v[kBlock];
};

// Plain conversion of n elements: memcpy when the dtypes agree.
static void convert(const void* src, int st, void* dst, int dt, int64_t n) {
  if (st == dt) {
    std::memcpy(dst, src, n * dtype_size(st));
    return;
  }
  if (st == kFloat32 && dt == kFloat16) {
    return float_to_half(static_cast<const float*>(src), static_cast<uint16_t*>(dst), n);
  }
  if (st == kFloat16 && dt == kFloat32) {
    return half_to_float(static_cast<const uint16_t*>(src), static_cast<float*>(dst), n);
  }
  if (st == kFloat32 && dt == kFloat64) {
    const float* s = static_cast<const float*>(src);
    double* d = static_cast<double*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    return;
  }
  if (st == kFloat64 && dt == kFloat32) {
    const double* s = static_cast<const double*>(src);
    float* d = static_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
    return;
  }
  if (st == kFloat64 && dt == kFloat16) {
    const double* s = static_cast<const double*>(src);
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = half_from_double(s[i]);
    return;
  }
  // float16 -> float64, through float (exact)
  Buf<float> tmp;
  const uint16_t* s = static_cast<const uint16_t*>(src);
  double* d = static_cast<double*>(dst);
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    half_to_float(s + i, tmp.v, m);
    for (int64_t k = 0; k < m; ++k) d[i + k] = tmp.v[k];
  }
}

template <typename T>
constexpr int dtype_of() {
  return sizeof(T) == 8 ? kFloat64 : kFloat32;
}

static inline const char* at(const void* p, int dtype, int64_t i) {
  return static_cast<const char*>(p) + i * static_cast<int64_t>(dtype_size(dtype));
}
static inline char* at(void* p, int dtype, int64_t i) {
  return static_cast<char*>(p) + i * static_cast<int64_t>(dtype_size(dtype));
}

// Elements [i, i+n) of src as T.  n <= kBlock.
template <typename T>
static const T* load(const void* src, int dtype, int64_t i, int64_t n, Buf<T>* buf) {
  if (dtype == dtype_of<T>()) return reinterpret_cast<const T*>(at(src, dtype, i));
  convert(at(src, dtype, i), dtype, buf->v, dtype_of<T>(), n);
  return buf->v;
}

// Where to compute elements [i, i+n) of dst, and how to finish.
template <typename T>
static T* target(void* dst, int dtype, int64_t i, Buf<T>* buf) {
  if (dtype == dtype_of<T>()) return reinterpret_cast<T*>(at(dst, dtype, i));
  return buf->v;
}
template <typename T>
static void finish(const T* vals, void* dst, int dtype, int64_t i, int64_t n) {
  if (dtype != dtype_of<T>()) convert(vals, dtype_of<T>(), at(dst, dtype, i), dtype, n);
}

// x = alpha * f + beta * x over elements [lo, hi) of segment s.
template <typename T>
static void unpack_range(const OpSpec& op, const Segment& s, int64_t lo, int64_t hi) {
  const T a = static_cast<T>(op.alpha), b = static_cast<T>(op.beta);
  Buf<T> fb, xb, ob;
  for (int64_t i = lo; i < hi; i += kBlock) {
    const int64_t n = std::min(kBlock, hi - i);
    const T* f = load<T>(op.flat, op.flat_dtype, s.offset + i, n, &fb);
    T* o = target<T>(s.data, s.dtype, i, &ob);
    if (op.beta == 0.0) {
      for (int64_t k = 0; k < n; ++k) o[k] = a * f[k];
    } else {
      const T* x = load<T>(s.data, s.dtype, i, n, &xb);
      for (int64_t k = 0; k < n; ++k) o[k] = a * f[k] + b * x[k];
    }
    finish<T>(o, s.data, s.dtype, i, n);
  }
}

// flat = alpha * x + beta * ref over elements [lo, hi) of segment s.
template <typename T>
static void axpby_range(const OpSpec& op, const Segment& s, int64_t lo, int64_t hi) {
  const T a = static_cast<T>(op.alpha), b = static_cast<T>(op.beta);
  Buf<T> xb, rb, ob;
  for (int64_t i = lo; i < hi; i += kBlock) {
    const int64_t n = std::min(kBlock, hi - i), j = s.offset + i;
    const T* x = load<T>(s.data, s.dtype, i, n, &xb);
    const T* r = load<T>(op.aux, op.aux_dtype, j, n, &rb);
    T* o = target<T>(op.flat, op.flat_dtype, j, &ob);
    for (int64_t k = 0; k < n; ++k) o[k] = a * x[k] + b * r[k];
    finish<T>(o, op.flat, op.flat_dtype, j, n);
  }
}

// d = alpha * (x - c); flat = d; x -= d, over elements [lo, hi) of segment s.  x is updated
// with d as stored in the flat buffer (after its cast), so x + c changes by exactly what a
// server adding the flat buffer to c will add.
template <typename T>
static void elastic_range(const OpSpec& op, const Segment& s, int64_t lo, int64_t hi) {
  const T a = static_cast<T>(op.alpha);
  Buf<T> xb, cb, db, ob;
  for (int64_t i = lo; i < hi; i += kBlock) {
    const int64_t n = std::min(kBlock, hi - i), j = s.offset + i;
    const T* x = load<T>(s.data, s.dtype, i, n, &xb);
    const T* c = load<T>(op.aux, op.aux_dtype, j, n, &cb);
    T* d = target<T>(op.flat, op.flat_dtype, j, &db);
    for (int64_t k = 0; k < n; ++k) d[k] = a * (x[k] - c[k]);
    if (op.flat_dtype != dtype_of<T>()) {  // round d to the wire dtype and read it back
      finish<T>(d, op.flat, op.flat_dtype, j, n);
      convert(at(op.flat, op.flat_dtype, j), op.flat_dtype, db.v, dtype_of<T>(), n);
      d = db.v;
    }
    T* o = target<T>(s.data, s.dtype, i, &ob);
    for (int64_t k = 0; k < n; ++k) o[k] = x[k] - d[k];
    finish<T>(o, s.data, s.dtype, i, n);
  }
}

static void run_piece(const OpSpec& op, const Segment& s, int64_t lo, int64_t hi) {
  const bool wide = s.dtype == kFloat64 || op.flat_dtype == kFloat64 ||
                    (op.aux != nullptr && op.aux_dtype == kFloat64);
  switch (op.kind) {
    case OpKind::kPack:
      convert(at(s.data, s.dtype, lo), s.dtype, at(op.flat, op.flat_dtype, s.offset + lo),
              op.flat_dtype, hi - lo);
      break;
    case OpKind::kUnpack:
      if (op.alpha == 1.0 && op.beta == 0.0) {
        convert(at(op.flat, op.flat_dtype, s.offset + lo), op.flat_dtype, at(s.data, s.dtype, lo),
                s.dtype, hi - lo);
      } else if (wide) {
        unpack_range<double>(op, s, lo, hi);
      } else {
        unpack_range<float>(op, s, lo, hi);
      }
      break;
    case OpKind::kPackAxpby:
      if (wide) {
        axpby_range<double>(op, s, lo, hi);
      } else {
        axpby_range<float>(op, s, lo, hi);
      }
      break;
    case OpKind::kElastic:
      if (wide) {
        elastic_range<double>(op, s, lo, hi);
      } else {
        elastic_range<float>(op, s, lo, hi);
      }
      break;
  }
}

// Flat elements [lo, hi): the segments that overlap it, each clipped to it.
static void run_range(const OpSpec& op, int64_t lo, int64_t hi) {
  const auto& segs = op.segments;
  auto it = std::upper_bound(segs.begin(), segs.end(), lo,
                             [](int64_t v, const Segment& s) { return v < s.offset + s.size; });
  for (; it != segs.end() && it->offset < hi; ++it) {
    const int64_t a = std::max(lo, it->offset) - it->offset;
    const int64_t b = std::min(hi, it->offset + it->size) - it->offset;
    if (a < b) run_piece(op, *it, a, b);
  }
}

// ---------------------------------------------------------------------------------------------
// Thread pool: persistent helpers that the engine thread running an op hands ranges to.  One
// process-wide pool, created on first use and never destroyed (no exit-order hazards); a fork
// child starts a fresh one, since the parent's helper threads do not exist there.

class Pool {
 public:
  // Calls fn(0..n-1), fn(0) on the calling thread, and returns when all are done.
  void run(int n, const std::function<void(int)>& fn) {
    if (n <= 1) {
      fn(0);
      return;
    }
    struct Latch {
      std::mutex m;
      std::condition_variable cv;
      int left;
    } latch;
    latch.left = n - 1;
    {
      std::lock_guard<std::mutex> g(m_);
      while (static_cast<int>(workers_.size()) < n - 1) workers_.emplace_back([this] { loop(); });
      for (int i = 1; i < n; ++i) {
        tasks_.emplace_back([&fn, &latch, i] {
          fn(i);
          std::lock_guard<std::mutex> lg(latch.m);  // notify under the lock: latch outlives it
          if (--latch.left == 0) latch.cv.notify_one();
        });
      }
    }
    cv_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lk(latch.m);
    latch.cv.wait(lk, [&latch] { return latch.left == 0; });
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [this] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> workers_;
};

static std::atomic<Pool*> g_pool{nullptr};

static void fresh_pool_after_fork() { g_pool.store(nullptr); }  // the old one is leaked

static Pool& pool() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, fresh_pool_after_fork); });
  Pool* p = g_pool.load();
  if (p == nullptr) {
    Pool* fresh = new Pool();
    if (g_pool.compare_exchange_strong(p, fresh)) {
      p = fresh;
    } else {
      delete fresh;  // another thread won; p now holds its pool
    }
  }
  return *p;
}

int resolve_threads(int requested) {
  if (requested > 0) return std::min(requested, 64);
  const unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::max(1u, std::min(4u, hw)));
}

void run_parallel(int64_t items, int threads, const std::function<void(int64_t, int64_t)>& fn) {
  if (items <= 0) return;
  const int n = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(resolve_threads(threads), items / 512)));
  const int64_t chunk = (items + n - 1) / n;
  pool().run(n, [&fn, chunk, items](int t) {
    const int64_t lo = t * chunk, hi = std::min(items, lo + chunk);
    if (lo < hi) fn(lo, hi);
  });
}

void run_op(const OpSpec& op) {
  if (op.total <= 0 || op.segments.empty()) return;
  int n = op.total < kSingleThreadBelow ? 1 : resolve_threads(op.threads);
  // at least 64K elements per thread, so small ops do not pay for a hand-off
  n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, op.total / (64 * 1024))));
  const int64_t chunk = ((op.total + n - 1) / n + 63) / 64 * 64;  // whole cache lines
  pool().run(n, [&op, chunk](int t) {
    const int64_t lo = t * chunk, hi = std::min(op.total, lo + chunk);
    if (lo < hi) run_range(op, lo, hi);
  });
}

}  // namespace hvdps
