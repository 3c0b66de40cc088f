// One GRU layer on CPU for many nets at once, as two XLA FFI custom calls.
//
// XLA:CPU runs the time loop of our tiny nets (hidden 12) far below the machine's
// arithmetic rate: every time step becomes a few small fused loops and batched dots, and
// a scan's per-step slice of its input is read element by element. These kernels run a
// whole layer (input projection, recurrence, and in the backward pass the weight and
// input gradients) in one call per layer, with sequences in the SIMD lanes.
//
// Layout, per net: a batch of sequences is (features, T, B): feature-major, then time,
// then the B sequences. Leading axes (nets, vmapped axes) are flattened into one net axis;
// every argument has the same leading axes.
//   mlds_gru_forward(w_ih [.., 3H, I], w_hh [.., 3H, H], b_ih [.., 3H], b_hh [.., 3H],
//                    xs [.., I, T, B])
//       -> hs [.., H, T, B], saved [.., 4, H, T, B] (r, z, n and W_hn h + b_hn, per step)
//   mlds_gru_backward(w_ih, w_hh, xs, hs, saved, dhs [.., H, T, B])
//       -> dw_ih, dw_hh, db_ih, db_hh (shapes of the weights), dxs [.., I, T, B]
// Equations are torch.nn.GRU's: gate order r, z, n; n = tanh(W_in x + b_in + r * (W_hn h
// + b_hn)); h' = (1 - z) n + z h; the initial state is zero.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// A block of kBlock sequences, one per lane: GCC vector extensions give full-width SIMD
// arithmetic (one AVX-512 register, two AVX2 ones) without intrinsics.
constexpr int64_t kBlock = 16;
constexpr int64_t kMaxWidth = 128;  // hidden and input sizes; per-block state is on the stack
typedef float Vec __attribute__((vector_size(kBlock * sizeof(float))));

inline Vec Splat(float x) { return Vec{} + x; }

// Eigen's float tanh (the one XLA:CPU uses): a 13/6 rational, accurate to a few ulp on
// [-9, 9] and +-1 outside. A NaN lane stays NaN (both comparisons are false).
inline Vec Tanh(Vec a) {
  const Vec hi = Splat(9.f), lo = Splat(-9.f);
  Vec x = a > hi ? hi : (a < lo ? lo : a);
  Vec x2 = x * x;
  Vec p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = x2 * p + -8.60467152213735e-11f;
  p = x2 * p + 5.12229709037114e-08f;
  p = x2 * p + 1.48572235717979e-05f;
  p = x2 * p + 6.37261928875436e-04f;
  p = x2 * p + 4.89352455891786e-03f;
  p = x * p;
  Vec q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = x2 * q + 2.26843463243900e-03f;
  q = x2 * q + 4.89352518554385e-03f;
  return p / q;
}

inline Vec Sigmoid(Vec x) { return 0.5f + 0.5f * Tanh(0.5f * x); }

// Lanes [0, nb) from/to memory; a partial block's other lanes read as 0 and are not written.
inline Vec Load(const float* p, int64_t nb) {
  Vec v{};
  if (nb == kBlock) {
    __builtin_memcpy(&v, p, sizeof(Vec));
  } else {
    for (int64_t b = 0; b < nb; ++b) v[b] = p[b];
  }
  return v;
}

inline void Store(float* p, Vec v, int64_t nb) {
  if (nb == kBlock) {
    __builtin_memcpy(p, &v, sizeof(Vec));
  } else {
    for (int64_t b = 0; b < nb; ++b) p[b] = v[b];
  }
}

// Runs body(0..n-1) on the caller and the XLA intra-op pool. The caller takes items too
// and only waits for items other threads have already started, so it never deadlocks,
// even when the pool is busy or has no threads.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& body) {
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto drain = [n](Shared& s, const F& f) {
    for (int64_t i; (i = s.next.fetch_add(1)) < n;) {
      f(i);
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t h = 0; h < helpers; ++h) {
    // A helper that starts after all items are taken touches neither body nor the caller.
    pool.Schedule([shared, drain, &body] { drain(*shared, body); });
  }
  drain(*shared, body);
  while (shared->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

struct Dims {
  int64_t nets, h, in, t, b;
};

// Leading axes of `buf` (all but the last `inner`) flattened into a count of nets.
int64_t Leading(const ffi::Buffer<ffi::F32>& buf, size_t inner) {
  auto d = buf.dimensions();
  int64_t n = 1;
  for (size_t i = 0; i + inner < d.size(); ++i) n *= d[i];
  return n;
}

ffi::Error CheckDims(const ffi::Buffer<ffi::F32>& w_ih, const ffi::Buffer<ffi::F32>& w_hh,
                     const ffi::Buffer<ffi::F32>& xs, Dims* d) {
  auto wi = w_ih.dimensions(), wh = w_hh.dimensions(), sd = xs.dimensions();
  if (wi.size() < 2 || wh.size() < 2 || sd.size() < 3) {
    return ffi::Error::InvalidArgument("mlds gru: arguments of too low rank");
  }
  d->h = wh[wh.size() - 1];
  d->in = wi[wi.size() - 1];
  d->t = sd[sd.size() - 2];
  d->b = sd[sd.size() - 1];
  d->nets = Leading(w_hh, 2);
  if (wh[wh.size() - 2] != 3 * d->h || wi[wi.size() - 2] != 3 * d->h ||
      sd[sd.size() - 3] != d->in) {
    return ffi::Error::InvalidArgument("mlds gru: expected w_ih (3H, I), w_hh (3H, H), xs (I, T, B)");
  }
  if (d->h > kMaxWidth || d->in > kMaxWidth) {
    return ffi::Error::InvalidArgument("mlds gru: hidden or input size above 128");
  }
  if (Leading(w_ih, 2) != d->nets || Leading(xs, 3) != d->nets) {
    return ffi::Error::InvalidArgument("mlds gru: arguments disagree on the leading axes");
  }
  return ffi::Error::Success();
}

// Per-net pointers into the flat buffers.
struct Net {
  const float *w_ih, *w_hh, *b_ih, *b_hh;
  int64_t H, I, T, B;
};

// One block of nb <= kBlock sequences of one net (pointers offset to the block's first
// sequence) through the forward recurrence.
void ForwardBlock(const Net& net, const float* X, float* HS, float* S, int64_t nb) {
  const int64_t H = net.H, I = net.I, T = net.T, B = net.B, TB = T * B;
  Vec h[kMaxWidth], x[kMaxWidth], hh[3 * kMaxWidth];
  for (int64_t j = 0; j < H; ++j) h[j] = Vec{};
  float* R = S;
  float* Z = R + H * TB;
  float* N = Z + H * TB;
  float* HN = N + H * TB;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < I; ++i) x[i] = Load(X + i * TB + t * B, nb);
    for (int64_t g = 0; g < 3 * H; ++g) {  // hh = W_hh h + b_hh
      Vec a = Splat(net.b_hh[g]);
      for (int64_t k = 0; k < H; ++k) a += net.w_hh[g * H + k] * h[k];
      hh[g] = a;
    }
    for (int64_t j = 0; j < H; ++j) {
      Vec xi[3];  // W_ih x + b_ih for gates r, z, n of unit j
      for (int q = 0; q < 3; ++q) {
        const int64_t g = q * H + j;
        Vec a = Splat(net.b_ih[g]);
        for (int64_t i = 0; i < I; ++i) a += net.w_ih[g * I + i] * x[i];
        xi[q] = a;
      }
      const int64_t o = j * TB + t * B;
      const Vec r = Sigmoid(xi[0] + hh[j]);
      const Vec z = Sigmoid(xi[1] + hh[H + j]);
      const Vec n = Tanh(xi[2] + r * hh[2 * H + j]);
      h[j] = (1.f - z) * n + z * h[j];
      Store(R + o, r, nb);
      Store(Z + o, z, nb);
      Store(N + o, n, nb);
      Store(HN + o, hh[2 * H + j], nb);
      Store(HS + o, h[j], nb);
    }
  }
}

float SumLanes(Vec v) {
  float s = 0.f;
  for (int64_t b = 0; b < kBlock; ++b) s += v[b];
  return s;
}

inline int64_t RoundUp4(int64_t n) { return (n + 3) / 4 * 4; }

// out[r * C + c] += sum over t < T and lanes of A[t * Ap + r] * Bm[t * Bp + c], for r < R,
// c < C: a weight gradient as one pass over the sequence, 4x4 accumulators in registers.
// Rows are padded with zeros up to Ap >= RoundUp4(R) and Bp >= RoundUp4(C).
void AccumulateOuter(const Vec* A, int64_t Ap, int64_t R, const Vec* Bm, int64_t Bp, int64_t C,
                     int64_t T, float* out) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    for (int64_t c0 = 0; c0 < C; c0 += 4) {
      Vec a[4][4] = {};
      for (int64_t t = 0; t < T; ++t) {
        const Vec* pa = A + t * Ap + r0;
        const Vec* pb = Bm + t * Bp + c0;
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) a[i][j] += pa[i] * pb[j];
      }
      for (int i = 0; i < 4 && r0 + i < R; ++i)
        for (int j = 0; j < 4 && c0 + j < C; ++j) out[(r0 + i) * C + c0 + j] += SumLanes(a[i][j]);
    }
  }
}

// Weight gradients of one net, and per-block scratch: per step, the gradients of the gate
// pre-activations (dxi: of W_ih x + b_ih; dhh: of W_hh h + b_hh), the previous hidden
// state and the input, each row zero-padded to a multiple of 4.
struct Grads {
  int64_t Gp, Hp, Ip;
  std::vector<float> w_ih, w_hh, b_ih, b_hh;
  std::vector<Vec> dxi, dhh, hp, x;
  Grads(int64_t H, int64_t I, int64_t T)
      : Gp(RoundUp4(3 * H)), Hp(RoundUp4(H)), Ip(RoundUp4(I)),
        w_ih(3 * H * I), w_hh(3 * H * H), b_ih(3 * H), b_hh(3 * H),
        dxi(T * Gp), dhh(T * Gp), hp(T * Hp), x(T * Ip) {}
};

// One block of sequences of one net through the backward recurrence; adds the block's
// weight gradients to `acc` and writes its input gradient.
void BackwardBlock(const Net& net, const float* X, const float* HS, const float* S,
                   const float* DHS, float* DX, Grads& acc, int64_t nb) {
  const int64_t H = net.H, I = net.I, T = net.T, B = net.B, TB = T * B, G = 3 * H;
  Vec dh[kMaxWidth];
  for (int64_t j = 0; j < H; ++j) dh[j] = Vec{};
  const float* R = S;
  const float* Z = R + H * TB;
  const float* N = Z + H * TB;
  const float* HN = N + H * TB;
  for (int64_t t = T - 1; t >= 0; --t) {
    Vec* dxi = acc.dxi.data() + t * acc.Gp;
    Vec* dhh = acc.dhh.data() + t * acc.Gp;
    Vec* hp = acc.hp.data() + t * acc.Hp;
    for (int64_t j = 0; j < H; ++j) {
      const int64_t o = j * TB + t * B;
      const Vec g = dh[j] + Load(DHS + o, nb);
      const Vec r = Load(R + o, nb), z = Load(Z + o, nb), n = Load(N + o, nb);
      hp[j] = t > 0 ? Load(HS + o - B, nb) : Vec{};
      const Vec dan = g * (1.f - z) * (1.f - n * n);
      dxi[j] = dan * Load(HN + o, nb) * r * (1.f - r);
      dxi[H + j] = g * (hp[j] - n) * z * (1.f - z);
      dxi[2 * H + j] = dan;
      dhh[j] = dxi[j];
      dhh[H + j] = dxi[H + j];
      dhh[2 * H + j] = dan * r;
      dh[j] = g * z;
    }
    for (int64_t i = 0; i < I; ++i) {  // dx = W_ih^T dxi
      acc.x[t * acc.Ip + i] = Load(X + i * TB + t * B, nb);
      Vec dx{};
      for (int64_t g = 0; g < G; ++g) dx += net.w_ih[g * I + i] * dxi[g];
      Store(DX + i * TB + t * B, dx, nb);
    }
    for (int64_t k = 0; k < H; ++k) {  // dh += W_hh^T dhh
      Vec a = dh[k];
      for (int64_t g = 0; g < G; ++g) a += net.w_hh[g * H + k] * dhh[g];
      dh[k] = a;
    }
  }
  AccumulateOuter(acc.dhh.data(), acc.Gp, G, acc.hp.data(), acc.Hp, H, T, acc.w_hh.data());
  AccumulateOuter(acc.dxi.data(), acc.Gp, G, acc.x.data(), acc.Ip, I, T, acc.w_ih.data());
  for (int64_t g = 0; g < G; ++g) {
    Vec si{}, sh{};
    for (int64_t t = 0; t < T; ++t) {
      si += acc.dxi[t * acc.Gp + g];
      sh += acc.dhh[t * acc.Gp + g];
    }
    acc.b_ih[g] += SumLanes(si);
    acc.b_hh[g] += SumLanes(sh);
  }
}

// Net m's weights; its biases too where given (the backward pass has none).
Net NetAt(const ffi::Buffer<ffi::F32>& w_ih, const ffi::Buffer<ffi::F32>& w_hh,
          const float* b_ih, const float* b_hh, const Dims& d, int64_t m) {
  const int64_t G = 3 * d.h;
  return Net{w_ih.typed_data() + m * G * d.in, w_hh.typed_data() + m * G * d.h,
             b_ih ? b_ih + m * G : nullptr, b_hh ? b_hh + m * G : nullptr,
             d.h, d.in, d.t, d.b};
}

ffi::Error GruForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_ih,
                          ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> b_ih,
                          ffi::Buffer<ffi::F32> b_hh, ffi::Buffer<ffi::F32> xs,
                          ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> saved) {
  Dims d;
  if (auto err = CheckDims(w_ih, w_hh, xs, &d); err.failure()) return err;
  const int64_t TB = d.t * d.b, blocks = (d.b + kBlock - 1) / kBlock;
  // Blocks are independent in the forward pass: spread (net, block) pairs over threads.
  ParallelFor(pool, d.nets * blocks, [&](int64_t item) {
    const int64_t m = item / blocks, b0 = (item % blocks) * kBlock;
    const Net net = NetAt(w_ih, w_hh, b_ih.typed_data(), b_hh.typed_data(), d, m);
    ForwardBlock(net, xs.typed_data() + m * d.in * TB + b0,
                 hs->typed_data() + m * d.h * TB + b0,
                 saved->typed_data() + m * 4 * d.h * TB + b0, std::min(kBlock, d.b - b0));
  });
  return ffi::Error::Success();
}

ffi::Error GruBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_ih,
                           ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> xs,
                           ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> saved,
                           ffi::Buffer<ffi::F32> dhs, ffi::ResultBuffer<ffi::F32> dw_ih,
                           ffi::ResultBuffer<ffi::F32> dw_hh, ffi::ResultBuffer<ffi::F32> db_ih,
                           ffi::ResultBuffer<ffi::F32> db_hh, ffi::ResultBuffer<ffi::F32> dxs) {
  Dims d;
  if (auto err = CheckDims(w_ih, w_hh, xs, &d); err.failure()) return err;
  const int64_t H = d.h, I = d.in, G = 3 * d.h, TB = d.t * d.b;
  // A net's blocks add into the same weight gradients: one net per thread at a time.
  ParallelFor(pool, d.nets, [&](int64_t m) {
    const Net net = NetAt(w_ih, w_hh, nullptr, nullptr, d, m);
    Grads acc(H, I, d.t);
    for (int64_t b0 = 0; b0 < d.b; b0 += kBlock) {
      BackwardBlock(net, xs.typed_data() + m * I * TB + b0, hs.typed_data() + m * H * TB + b0,
                    saved.typed_data() + m * 4 * H * TB + b0, dhs.typed_data() + m * H * TB + b0,
                    dxs->typed_data() + m * I * TB + b0, acc, std::min(kBlock, d.b - b0));
    }
    auto put = [m](ffi::ResultBuffer<ffi::F32>& out, const std::vector<float>& v) {
      std::copy(v.begin(), v.end(), out->typed_data() + m * static_cast<int64_t>(v.size()));
    };
    put(dw_ih, acc.w_ih);
    put(dw_hh, acc.w_hh);
    put(db_ih, acc.b_ih);
    put(db_hh, acc.b_hh);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MldsGruForward, GruForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // hs
                                  .Ret<ffi::Buffer<ffi::F32>>());  // saved

XLA_FFI_DEFINE_HANDLER_SYMBOL(MldsGruBackward, GruBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_ih
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_hh
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // hs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // saved
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dhs
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw_ih
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw_hh
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db_ih
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db_hh
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dxs
