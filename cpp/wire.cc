// hvd_ps fused-buffer op: the compressed wire's kernels (blockwise absmax int8/int4 with the
// sender's residual, and the decoding of the servers' reply into the leader's copy).  The exact
// arithmetic is the one hvd_ps/ps/protocol.py states and hvd_ps/ps/codec.py does in numpy:
// float32 throughout, round half to even, so both give the same bytes.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>

#include "fusion.h"

namespace hvdps {

static const float kTiny = 1.17549435e-38f;  // 2^-126

bool wire_layout(WireSpec* spec) {
  spec->offsets.assign(1, 0);
  for (size_t k = 0; k + 1 < spec->bounds.size(); ++k) {
    const int64_t n = spec->bounds[k + 1] - spec->bounds[k];
    if (n <= 0 || n > 0xffffffffLL) return false;
    spec->offsets.push_back(spec->offsets.back() + wire_part_bytes(n, spec->bits, spec->block));
  }
  return true;
}

static void put_header(uint8_t* p, int bits, int sender, int block, uint32_t seq, uint32_t n) {
  p[0] = 'H';
  p[1] = 'Q';
  p[2] = 1;
  p[3] = static_cast<uint8_t>(bits);
  const uint16_t s = static_cast<uint16_t>(sender), b = static_cast<uint16_t>(block);
  std::memcpy(p + 4, &s, 2);  // little-endian hosts (x86-64)
  std::memcpy(p + 6, &b, 2);
  std::memcpy(p + 8, &seq, 4);
  std::memcpy(p + 12, &n, 4);
}

// The shard of global block g (blocks are numbered across shards), and the block within it.
static void locate(const WireSpec& spec, const std::vector<int64_t>& first_block, int64_t g,
                   size_t* shard, int64_t* local) {
  auto it = std::upper_bound(first_block.begin(), first_block.end(), g);
  *shard = static_cast<size_t>(it - first_block.begin()) - 1;
  *local = g - first_block[*shard];
}

static std::vector<int64_t> first_blocks(const WireSpec& spec) {
  std::vector<int64_t> out;
  int64_t acc = 0;
  for (size_t k = 0; k + 1 < spec.bounds.size(); ++k) {
    out.push_back(acc);
    acc += (spec.bounds[k + 1] - spec.bounds[k] + spec.block - 1) / spec.block;
  }
  out.push_back(acc);
  return out;
}

// Elements [first, first + n) of the flat layout of `segments` (float32 arrays) into dst.
static void gather(const std::vector<Segment>& segs, int64_t first, int64_t n, float* dst) {
  auto it = std::upper_bound(segs.begin(), segs.end(), first,
                             [](int64_t v, const Segment& s) { return v < s.offset + s.size; });
  int64_t done = 0;
  for (; it != segs.end() && done < n; ++it) {
    const int64_t a = first + done - it->offset;
    const int64_t m = std::min<int64_t>(n - done, it->size - a);
    std::memcpy(dst + done, static_cast<const float*>(it->data) + a, m * sizeof(float));
    done += m;
  }
}

void wire_encode(const WireSpec& spec) {
  wire_encode_axpby(spec, {}, nullptr, 1.0f, 0.0f, nullptr);
}

void wire_encode_axpby(const WireSpec& spec, const std::vector<Segment>& segments,
                       const float* ref, float alpha, float beta, float* out) {
  const bool fused = ref != nullptr;
  const std::vector<int64_t> fb = first_blocks(spec);
  const int64_t nblocks = fb.back();
  const int B = spec.block, bits = spec.bits;
  const float Q = static_cast<float>((1 << (bits - 1)) - 1);
  const int64_t rec = wire_block_bytes(bits, B);
  for (size_t k = 0; k + 1 < spec.bounds.size(); ++k) {
    put_header(spec.wire + spec.offsets[k], bits, spec.sender, B, spec.seq,
               static_cast<uint32_t>(spec.bounds[k + 1] - spec.bounds[k]));
  }
  run_parallel(nblocks, spec.threads, [&](int64_t lo, int64_t hi) {
    alignas(64) float v[kWireMaxBlock];
    alignas(64) float x[kWireMaxBlock];
    alignas(64) int8_t q[kWireMaxBlock];
    for (int64_t g = lo; g < hi; ++g) {
      size_t k;
      int64_t b;
      locate(spec, fb, g, &k, &b);
      const int64_t first = spec.bounds[k] + b * B;
      const int64_t n = std::min<int64_t>(B, spec.bounds[k + 1] - first);
      float* e = spec.residual == nullptr ? nullptr : spec.residual + first;
      float* sh = spec.shadow == nullptr ? nullptr : spec.shadow + first;  // the servers' reply
      const float* s = x;
      if (fused) {  // s = alpha x + beta ref, as pack_axpby computes it (and keeps it in out)
        gather(segments, first, n, x);
        const float* r = ref + first;
        for (int64_t i = 0; i < n; ++i) x[i] = alpha * x[i] + beta * r[i];
        if (out != nullptr) std::memcpy(out + first, x, n * sizeof(float));
      } else {
        s = spec.src + first;
      }
      for (int i = 0; i < B; ++i) v[i] = 0.0f;
      float amax = 0.0f;
      for (int64_t i = 0; i < n; ++i) {
        v[i] = sh != nullptr ? s[i] - sh[i] : e == nullptr ? s[i] : s[i] + e[i];
        amax = std::max(amax, std::fabs(v[i]));
      }
      uint8_t* r = spec.wire + spec.offsets[k] + kWireHeader + b * rec;
      float scale = 0.0f;
      if (amax >= kTiny) {  // also false for NaN: the leader refuses those before pushing
        const float inv = Q / amax;
        scale = amax / Q;
        // round half to even, as rint in the default rounding mode: adding and taking away
        // 1.5 * 2^23 leaves the nearest integer of any |x| < 2^22 (here |x| <= 127.01), and
        // unlike a call of nearbyint the loop vectorizes
        const float magic = 12582912.0f;
        for (int i = 0; i < B; ++i) {
          const float c = (v[i] * inv + magic) - magic;
          q[i] = static_cast<int8_t>(std::min(Q, std::max(-Q, c)));
        }
      } else {
        for (int i = 0; i < B; ++i) q[i] = 0;
      }
      std::memcpy(r, &scale, 4);
      if (bits == 8) {
        std::memcpy(r + 4, q, B);
      } else {
        for (int i = 0; i < B; i += 2) {
          r[4 + i / 2] = static_cast<uint8_t>((q[i] & 0x0f) | ((q[i + 1] & 0x0f) << 4));
        }
      }
      if (e != nullptr) {
        for (int64_t i = 0; i < n; ++i) e[i] = v[i] - static_cast<float>(q[i]) * scale;
      }
      if (sh != nullptr) {  // as a leader's decode adds the reply to its copy
        for (int64_t i = 0; i < n; ++i) sh[i] += static_cast<float>(q[i]) * scale;
      }
    }
  });
}

std::string wire_decode_add(const WireSpec& spec) {
  const int B = spec.block, bits = spec.bits;
  const int Q = (1 << (bits - 1)) - 1;
  for (size_t k = 0; k + 1 < spec.bounds.size(); ++k) {
    const uint8_t* p = spec.wire + spec.offsets[k];
    uint16_t sender, block;
    uint32_t seq, n;
    std::memcpy(&sender, p + 4, 2);
    std::memcpy(&block, p + 6, 2);
    std::memcpy(&seq, p + 8, 4);
    std::memcpy(&n, p + 12, 4);
    const std::string where =
        "shard " + std::to_string(k) + (spec.any_sender ? " of a push: " : " of the servers' reply: ");
    if (p[0] != 'H' || p[1] != 'Q' || p[2] != 1) return where + "not an hvd_ps wire part";
    if (p[3] != bits || block != B) return where + "another format or block size";
    if (n != static_cast<uint32_t>(spec.bounds[k + 1] - spec.bounds[k])) {
      return where + "another shard size";
    }
    if (!spec.any_sender && sender != 0xffff) return where + "not sent by the servers";
    if (!spec.any_sender && seq != spec.seq) {
      return where + "it answers exchange " + std::to_string(seq) + ", expected " +
             std::to_string(spec.seq) + " (a reply lost or read twice)";
    }
  }
  const std::vector<int64_t> fb = first_blocks(spec);
  const int64_t rec = wire_block_bytes(bits, B);
  // Check every block first (in parallel), so that a bad reply changes nothing.
  std::atomic<int> bad{0};  // 1: a scale, 2: a code
  run_parallel(fb.back(), spec.threads, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi && bad.load(std::memory_order_relaxed) == 0; ++g) {
      size_t k;
      int64_t b;
      locate(spec, fb, g, &k, &b);
      const uint8_t* r = spec.wire + spec.offsets[k] + kWireHeader + b * rec;
      float scale;
      std::memcpy(&scale, r, 4);
      if (!(scale >= 0.0f) || std::isinf(scale)) bad.store(1);
      int worst = 0;  // -128 (int8) or -8 (int4) is outside the format's range
      if (bits == 8) {
        for (int i = 0; i < B; ++i) worst |= r[4 + i] == 0x80;
      } else {
        for (int i = 0; i < B / 2; ++i) worst |= (r[4 + i] & 0x0f) == 8 || (r[4 + i] >> 4) == 8;
      }
      if (worst) bad.store(2);
    }
  });
  if (bad.load() == 1) return "a block scale of the reply is not finite";
  if (bad.load() == 2) return "a code of the reply is outside +-" + std::to_string(Q);
  run_parallel(fb.back(), spec.threads, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      size_t k;
      int64_t b;
      locate(spec, fb, g, &k, &b);
      const int64_t first = spec.bounds[k] + b * B;
      const int64_t n = std::min<int64_t>(B, spec.bounds[k + 1] - first);
      const uint8_t* r = spec.wire + spec.offsets[k] + kWireHeader + b * rec;
      float scale;
      std::memcpy(&scale, r, 4);
      float* s = spec.shadow + first;
      const uint8_t* c = r + 4;
      if (bits == 8) {
        const int8_t* q = reinterpret_cast<const int8_t*>(c);
        for (int64_t i = 0; i < n; ++i) s[i] += static_cast<float>(q[i]) * scale;
      } else {
        int64_t i = 0;
        for (; i + 1 < n; i += 2) {
          const int lo4 = c[i / 2] & 0x0f, hi4 = c[i / 2] >> 4;
          s[i] += static_cast<float>(lo4 > 7 ? lo4 - 16 : lo4) * scale;
          s[i + 1] += static_cast<float>(hi4 > 7 ? hi4 - 16 : hi4) * scale;
        }
        if (i < n) {
          const int lo4 = c[i / 2] & 0x0f;
          s[i] += static_cast<float>(lo4 > 7 ? lo4 - 16 : lo4) * scale;
        }
      }
    }
  });
  return std::string();
}

}  // namespace hvdps
