// Recurrent networks on CPU for many nets at once, as XLA FFI custom calls: one kernel, two
// cells (GRU for DS1/DS2, LSTM for DS3).
//
// XLA:CPU runs the time loop of our small nets far below the machine's arithmetic rate:
// every time step becomes a few small fused loops and batched dots, and a scan's per-step
// slice of its input is read element by element. These kernels keep sequences in the SIMD
// lanes (a block of 16 sequences per vector) and run whole layers, or whole training steps,
// in one call.
//
// Two kinds of call; leading axes (nets, vmapped axes) are flattened into one net axis and
// every argument has the same leading axes.
//
// One GRU layer, in the (features, T, B) layout (feature-major, then time, then sequences):
//   mlds_gru_forward(w_ih [.., 3H, I], w_hh [.., 3H, H], b_ih [.., 3H], b_hh [.., 3H],
//                    xs [.., I, T, B])
//       -> hs [.., H, T, B], saved [.., 4, H, T, B] (r, z, n and W_hn h + b_hn, per step)
//   mlds_gru_backward(w_ih, w_hh, xs, hs, saved, dhs [.., H, T, B])
//       -> dw_ih, dw_hh, db_ih, db_hh (shapes of the weights), dxs [.., I, T, B]
//
// One training step of a whole net (GRU or LSTM stack + linear head + mean loss), forward
// and backward, with everything a net needs in between kept in its thread's cache:
//   mlds_rnn_net_loss(flat [.., P], xs [.., B, T, I], ys [.., B, T, O];
//                     widths = [H, head..., O], layers, activation (0 tanh, 1 relu),
//                     cell (0 GRU, 1 LSTM), loss (0 mean binary cross-entropy over B, T, O;
//                     1 mean softmax cross-entropy over B, T, ys a distribution over O))
//       -> logits [.., B, T, O], dflat [.., P] (the gradient of the mean loss)
//   mlds_rnn_net_logits(flat, xs; widths, layers, activation, cell) -> logits: the forward
//   alone (validation).
//   `flat` is the net's parameter vector in torch state_dict order (models.param_layout):
//   per layer w_ih, w_hh, b_ih, b_hh; then per head layer weight (out, in), bias.
//   Only the cell differs between GRU and LSTM nets (GruCell, LstmCell below): the head,
//   the losses, the buffers and the threading are one code path.
//
// Equations are torch.nn.GRU's and torch.nn.LSTM's, zero initial state. GRU: gate order r,
// z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1 - z) n + z h. LSTM: gate
// order i, f, g, o; c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o) tanh(c').

#include <algorithm>
#include <atomic>
#include <cmath>
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
constexpr int64_t kMaxWidth = 128;  // layer widths; per-step vectors live on the stack
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

float SumLanes(Vec v) {
  float s = 0.f;
  for (int64_t b = 0; b < kBlock; ++b) s += v[b];
  return s;
}

inline int64_t RoundUp4(int64_t n) { return (n + 3) / 4 * 4; }

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

// --- dense building blocks ---------------------------------------------------------------

// out[r] += sum over k < K of W[r * rs + k * ks] * x[k], for NA rows at once. One row at a
// time is one chain of dependent FMAs, bound by their latency; NA independent chains keep
// the FMA units busy.
template <int NA>
inline void MatVecRows(const float* W, int64_t rs, int64_t ks, const Vec* x, int64_t K,
                       Vec* out) {
  Vec a[NA];
  for (int j = 0; j < NA; ++j) a[j] = out[j];
  for (int64_t k = 0; k < K; ++k) {
    const Vec xk = x[k];
    const float* w = W + k * ks;
    for (int j = 0; j < NA; ++j) a[j] += w[j * rs] * xk;
  }
  for (int j = 0; j < NA; ++j) out[j] = a[j];
}

// out[r] += sum over k < K of W[r * rs + k * ks] * x[k], for r < R: W x with (rs, ks) =
// (K, 1) for a row-major W, W^T x with (1, R).
inline void MatVecAdd(const float* W, int64_t rs, int64_t ks, const Vec* x, int64_t K,
                      int64_t R, Vec* out) {
  int64_t r = 0;
  for (; r + 8 <= R; r += 8) MatVecRows<8>(W + r * rs, rs, ks, x, K, out + r);
  for (; r + 4 <= R; r += 4) MatVecRows<4>(W + r * rs, rs, ks, x, K, out + r);
  for (; r < R; ++r) MatVecRows<1>(W + r * rs, rs, ks, x, K, out + r);
}

// out = b + W x for a row-major W (R, K).
inline void Affine(const float* W, const float* b, const Vec* x, int64_t K, int64_t R, Vec* out) {
  for (int64_t r = 0; r < R; ++r) out[r] = Splat(b[r]);
  MatVecAdd(W, K, 1, x, K, R, out);
}

// The 16 lane sums of v[0..15] as one vector, s[k] = sum of v[k]'s lanes: a butterfly of 15
// shuffle-and-add steps, against 16 separate horizontal sums (~15 dependent adds each).
// Level by level, each vector holds partial sums of 2, 4, 8 then 16 inputs side by side.
typedef int32_t Idx __attribute__((vector_size(kBlock * sizeof(int32_t))));
inline Vec PairSum(Vec x, Vec y, Idx lo, Idx hi) {
  return __builtin_shuffle(x, y, lo) + __builtin_shuffle(x, y, hi);
}
inline Vec SumLanes16(const Vec* v) {
  const Idx l1a = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const Idx l1b = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const Idx l2a = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const Idx l2b = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const Idx l3a = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const Idx l3b = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const Idx l4a = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const Idx l4b = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  Vec w[8], x[4], y[2];
  for (int i = 0; i < 8; ++i) w[i] = PairSum(v[2 * i], v[2 * i + 1], l1a, l1b);
  for (int i = 0; i < 4; ++i) x[i] = PairSum(w[2 * i], w[2 * i + 1], l2a, l2b);
  for (int i = 0; i < 2; ++i) y[i] = PairSum(x[2 * i], x[2 * i + 1], l3a, l3b);
  return PairSum(y[0], y[1], l4a, l4b);
}

// out[r * C + c] += sum over t < T and lanes of A[t * Ap + r] * Bm[t * Bp + c], for r < R,
// c < C: a weight gradient as one pass over the sequence, 4x4 accumulators in registers.
// Rows are padded up to Ap >= RoundUp4(R) and Bp >= RoundUp4(C); products with the padding
// land in accumulators that are thrown away.
void AccumulateOuter(const Vec* A, int64_t Ap, int64_t R, const Vec* Bm, int64_t Bp, int64_t C,
                     int64_t T, float* out) {
  for (int64_t r0 = 0; r0 < R; r0 += 4) {
    for (int64_t c0 = 0; c0 < C; c0 += 4) {
      Vec a[16] = {};  // a[4 i + j]: row r0 + i, column c0 + j
      for (int64_t t = 0; t < T; ++t) {
        const Vec* pa = A + t * Ap + r0;
        const Vec* pb = Bm + t * Bp + c0;
        // Each operand loaded once into a register: 8 loads for 16 FMAs.
        const Vec x[4] = {pa[0], pa[1], pa[2], pa[3]}, y[4] = {pb[0], pb[1], pb[2], pb[3]};
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) a[4 * i + j] += x[i] * y[j];
      }
      const Vec sums = SumLanes16(a);
      for (int i = 0; i < 4 && r0 + i < R; ++i)
        for (int j = 0; j < 4 && c0 + j < C; ++j) out[(r0 + i) * C + c0 + j] += sums[4 * i + j];
    }
  }
}

// out[r] += sum over t < T and lanes of A[t * Ap + r]: a bias gradient.
void AccumulateSum(const Vec* A, int64_t Ap, int64_t R, int64_t T, float* out) {
  for (int64_t r = 0; r < R; ++r) {
    Vec s{};
    for (int64_t t = 0; t < T; ++t) s += A[t * Ap + r];
    out[r] += SumLanes(s);
  }
}

// --- one recurrent layer on one block of sequences ------------------------------------------
//
// A block's activations are (T, Fp) arrays of Vec: step t's F features at [t * Fp, t * Fp
// + F), rows padded to Fp = RoundUp4(F) as AccumulateOuter wants. G = gates x H (GRU 3H,
// LSTM 4H).

struct LayerWeights {
  const float *w_ih, *w_hh, *b_ih, *b_hh;  // (G, I), (G, H), (G), (G)
  int64_t H, I;
};

struct LayerGrads {
  float *w_ih, *w_hh, *b_ih, *b_hh;  // accumulated into
};

// in (T, Ip) -> out (T, Hp); save (T, 4 Hp): r, z, n and W_hn h + b_hn per step.
void GruForward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip, Vec* out,
                int64_t Hp, Vec* save) {
  const int64_t H = w.H, I = w.I, G = 3 * H;
  Vec xi[3 * kMaxWidth], hh[3 * kMaxWidth];
  const Vec zeros[kMaxWidth] = {};
  for (int64_t t = 0; t < T; ++t) {
    const Vec* h = t > 0 ? out + (t - 1) * Hp : zeros;
    Affine(w.w_ih, w.b_ih, in + t * Ip, I, G, xi);  // W_ih x + b_ih
    Affine(w.w_hh, w.b_hh, h, H, G, hh);            // W_hh h + b_hh
    Vec* ht = out + t * Hp;
    Vec* s = save + t * 4 * Hp;
    for (int64_t j = 0; j < H; ++j) {
      const Vec r = Sigmoid(xi[j] + hh[j]);
      const Vec z = Sigmoid(xi[H + j] + hh[H + j]);
      const Vec n = Tanh(xi[2 * H + j] + r * hh[2 * H + j]);
      ht[j] = (1.f - z) * n + z * h[j];
      s[j] = r;
      s[Hp + j] = z;
      s[2 * Hp + j] = n;
      s[3 * Hp + j] = hh[2 * H + j];
    }
  }
}

// Backward through time. dout (T, Hp): the loss gradient w.r.t. out from above; din (T, Ip)
// is overwritten with the gradient w.r.t. in (unless null); weight gradients are added to
// g. dxi, dhh: scratch (T, Gp), Gp >= RoundUp4(3H).
void GruBackward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip, const Vec* out,
                 int64_t Hp, const Vec* save, const Vec* dout, Vec* din, Vec* dxi, Vec* dhh,
                 int64_t Gp, const LayerGrads& g) {
  const int64_t H = w.H, I = w.I, G = 3 * H;
  Vec dh[kMaxWidth] = {};
  const Vec zeros[kMaxWidth] = {};
  for (int64_t t = T - 1; t >= 0; --t) {
    const Vec* h = t > 0 ? out + (t - 1) * Hp : zeros;
    const Vec* s = save + t * 4 * Hp;
    Vec* dx = dxi + t * Gp;  // gradient of W_ih x + b_ih
    Vec* dr = dhh + t * Gp;  // gradient of W_hh h + b_hh
    for (int64_t j = 0; j < H; ++j) {
      const Vec gj = dh[j] + dout[t * Hp + j];
      const Vec r = s[j], z = s[Hp + j], n = s[2 * Hp + j];
      const Vec dan = gj * (1.f - z) * (1.f - n * n);
      dx[j] = dan * s[3 * Hp + j] * r * (1.f - r);
      dx[H + j] = gj * (h[j] - n) * z * (1.f - z);
      dx[2 * H + j] = dan;
      dr[j] = dx[j];
      dr[H + j] = dx[H + j];
      dr[2 * H + j] = dan * r;
      dh[j] = gj * z;
    }
    if (din) {
      Vec* di = din + t * Ip;
      for (int64_t i = 0; i < I; ++i) di[i] = Vec{};
      MatVecAdd(w.w_ih, 1, I, dx, G, I, di);  // W_ih^T dxi
    }
    MatVecAdd(w.w_hh, 1, H, dr, G, H, dh);  // dh += W_hh^T dhh
  }
  AccumulateOuter(dxi, Gp, G, in, Ip, I, T, g.w_ih);
  AccumulateOuter(dhh + Gp, Gp, G, out, Hp, H, T - 1, g.w_hh);  // with h_{t-1}; h_{-1} = 0
  AccumulateSum(dxi, Gp, G, T, g.b_ih);
  AccumulateSum(dhh, Gp, G, T, g.b_hh);
}

// One LSTM layer, torch.nn.LSTM's equations: a = W_ih x + b_ih + W_hh h + b_hh split into
// gates i, f, g, o; c' = sigmoid(f) c + sigmoid(i) tanh(g); h' = sigmoid(o) tanh(c'); zero
// initial h and c. in (T, Ip) -> out (T, Hp); save (T, 6 Hp): i, f, g, o (activated), c and
// tanh(c) per step.
void LstmForward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip, Vec* out,
                 int64_t Hp, Vec* save) {
  const int64_t H = w.H, I = w.I, G = 4 * H;
  Vec a[4 * kMaxWidth];
  const Vec zeros[kMaxWidth] = {};
  for (int64_t t = 0; t < T; ++t) {
    const Vec* h = t > 0 ? out + (t - 1) * Hp : zeros;
    const Vec* c = t > 0 ? save + (t - 1) * 6 * Hp + 4 * Hp : zeros;
    Affine(w.w_ih, w.b_ih, in + t * Ip, I, G, a);  // W_ih x + b_ih
    for (int64_t r = 0; r < G; ++r) a[r] += w.b_hh[r];
    MatVecAdd(w.w_hh, H, 1, h, H, G, a);  // + W_hh h
    Vec* ht = out + t * Hp;
    Vec* s = save + t * 6 * Hp;
    for (int64_t j = 0; j < H; ++j) {
      const Vec i = Sigmoid(a[j]), f = Sigmoid(a[H + j]), g = Tanh(a[2 * H + j]);
      const Vec o = Sigmoid(a[3 * H + j]);
      const Vec cj = f * c[j] + i * g, tc = Tanh(cj);
      ht[j] = o * tc;
      s[j] = i;
      s[Hp + j] = f;
      s[2 * Hp + j] = g;
      s[3 * Hp + j] = o;
      s[4 * Hp + j] = cj;
      s[5 * Hp + j] = tc;
    }
  }
}

// Backward through time, as GruBackward; the gate pre-activations' gradient da (T, Gp) is
// that of W_ih x + b_ih and of W_hh h + b_hh alike, so one scratch array serves both.
void LstmBackward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip, const Vec* out,
                  int64_t Hp, const Vec* save, const Vec* dout, Vec* din, Vec* da, int64_t Gp,
                  const LayerGrads& g) {
  const int64_t H = w.H, I = w.I, G = 4 * H;
  Vec dh[kMaxWidth] = {}, dc[kMaxWidth] = {};
  const Vec zeros[kMaxWidth] = {};
  for (int64_t t = T - 1; t >= 0; --t) {
    const Vec* s = save + t * 6 * Hp;
    const Vec* c_prev = t > 0 ? save + (t - 1) * 6 * Hp + 4 * Hp : zeros;
    Vec* dt = da + t * Gp;
    for (int64_t j = 0; j < H; ++j) {
      const Vec gh = dh[j] + dout[t * Hp + j];
      const Vec i = s[j], f = s[Hp + j], gg = s[2 * Hp + j], o = s[3 * Hp + j];
      const Vec tc = s[5 * Hp + j];
      const Vec gc = dc[j] + gh * o * (1.f - tc * tc);
      dt[j] = gc * gg * i * (1.f - i);
      dt[H + j] = gc * c_prev[j] * f * (1.f - f);
      dt[2 * H + j] = gc * i * (1.f - gg * gg);
      dt[3 * H + j] = gh * tc * o * (1.f - o);
      dc[j] = gc * f;
      dh[j] = Vec{};
    }
    if (din) {
      Vec* di = din + t * Ip;
      for (int64_t k = 0; k < I; ++k) di[k] = Vec{};
      MatVecAdd(w.w_ih, 1, I, dt, G, I, di);  // W_ih^T da
    }
    MatVecAdd(w.w_hh, 1, H, dt, G, H, dh);  // dh = W_hh^T da
  }
  AccumulateOuter(da, Gp, G, in, Ip, I, T, g.w_ih);
  AccumulateOuter(da + Gp, Gp, G, out, Hp, H, T - 1, g.w_hh);  // with h_{t-1}; h_{-1} = 0
  AccumulateSum(da, Gp, G, T, g.b_ih);
  AccumulateSum(da, Gp, G, T, g.b_hh);
}

// The two cells as the whole-net step sees them: gates per hidden unit, vectors of H saved
// per step for the backward pass, and (T, Gp) gate-gradient arrays the backward needs.
struct GruCell {
  static constexpr int64_t kGates = 3, kSaved = 4, kGateGrads = 2;
  static void Forward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip, Vec* out,
                      int64_t Hp, Vec* save) {
    GruForward(w, T, in, Ip, out, Hp, save);
  }
  static void Backward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip,
                       const Vec* out, int64_t Hp, const Vec* save, const Vec* dout, Vec* din,
                       Vec* dgates, int64_t Gp, const LayerGrads& g) {
    GruBackward(w, T, in, Ip, out, Hp, save, dout, din, dgates, dgates + T * Gp, Gp, g);
  }
};

struct LstmCell {
  static constexpr int64_t kGates = 4, kSaved = 6, kGateGrads = 1;
  static void Forward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip, Vec* out,
                      int64_t Hp, Vec* save) {
    LstmForward(w, T, in, Ip, out, Hp, save);
  }
  static void Backward(const LayerWeights& w, int64_t T, const Vec* in, int64_t Ip,
                       const Vec* out, int64_t Hp, const Vec* save, const Vec* dout, Vec* din,
                       Vec* dgates, int64_t Gp, const LayerGrads& g) {
    LstmBackward(w, T, in, Ip, out, Hp, save, dout, din, dgates, Gp, g);
  }
};

// Per-thread scratch, kept between calls: XLA's pool threads live as long as the process.
std::vector<Vec>& Scratch(int slot, size_t size) {
  thread_local std::vector<Vec> buffers[4];
  if (buffers[slot].size() < size) buffers[slot].assign(size, Vec{});
  return buffers[slot];
}

// (F, T, B) memory <-> (T, Fp) block arrays, lanes [0, nb).
void Gather(const float* p, int64_t F, int64_t T, int64_t B, int64_t nb, Vec* out, int64_t Fp) {
  for (int64_t f = 0; f < F; ++f)
    for (int64_t t = 0; t < T; ++t) out[t * Fp + f] = Load(p + (f * T + t) * B, nb);
}

void Scatter(const Vec* in, int64_t Fp, int64_t F, int64_t T, int64_t B, int64_t nb, float* p) {
  for (int64_t f = 0; f < F; ++f)
    for (int64_t t = 0; t < T; ++t) Store(p + (f * T + t) * B, in[t * Fp + f], nb);
}

// --- the layer calls -----------------------------------------------------------------------

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

// Net m's layer weights; its biases too where given (the backward pass has none).
LayerWeights LayerAt(const ffi::Buffer<ffi::F32>& w_ih, const ffi::Buffer<ffi::F32>& w_hh,
                   const float* b_ih, const float* b_hh, const Dims& d, int64_t m) {
  const int64_t G = 3 * d.h;
  return LayerWeights{w_ih.typed_data() + m * G * d.in, w_hh.typed_data() + m * G * d.h,
                    b_ih ? b_ih + m * G : nullptr, b_hh ? b_hh + m * G : nullptr, d.h, d.in};
}

ffi::Error GruForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w_ih,
                          ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> b_ih,
                          ffi::Buffer<ffi::F32> b_hh, ffi::Buffer<ffi::F32> xs,
                          ffi::ResultBuffer<ffi::F32> hs, ffi::ResultBuffer<ffi::F32> saved) {
  Dims d;
  if (auto err = CheckDims(w_ih, w_hh, xs, &d); err.failure()) return err;
  const int64_t H = d.h, T = d.t, TB = d.t * d.b, blocks = (d.b + kBlock - 1) / kBlock;
  const int64_t Hp = RoundUp4(H), Ip = RoundUp4(d.in);
  // Blocks are independent in the forward pass: spread (net, block) pairs over threads.
  ParallelFor(pool, d.nets * blocks, [&](int64_t item) {
    const int64_t m = item / blocks, b0 = (item % blocks) * kBlock, nb = std::min(kBlock, d.b - b0);
    const LayerWeights w = LayerAt(w_ih, w_hh, b_ih.typed_data(), b_hh.typed_data(), d, m);
    Vec* in = Scratch(0, T * Ip).data();
    Vec* out = Scratch(1, T * Hp).data();
    Vec* save = Scratch(2, T * 4 * Hp).data();
    Gather(xs.typed_data() + m * d.in * TB + b0, d.in, T, d.b, nb, in, Ip);
    GruForward(w, T, in, Ip, out, Hp, save);
    Scatter(out, Hp, H, T, d.b, nb, hs->typed_data() + m * H * TB + b0);
    for (int q = 0; q < 4; ++q)
      Scatter(save + q * Hp, 4 * Hp, H, T, d.b, nb, saved->typed_data() + (m * 4 + q) * H * TB + b0);
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
  const int64_t H = d.h, I = d.in, G = 3 * H, T = d.t, TB = T * d.b;
  const int64_t Hp = RoundUp4(H), Ip = RoundUp4(I), Gp = RoundUp4(G);
  // A net's blocks add into the same weight gradients: one net per thread at a time.
  ParallelFor(pool, d.nets, [&](int64_t m) {
    const LayerWeights w = LayerAt(w_ih, w_hh, nullptr, nullptr, d, m);
    const LayerGrads g{dw_ih->typed_data() + m * G * I, dw_hh->typed_data() + m * G * H,
                     db_ih->typed_data() + m * G, db_hh->typed_data() + m * G};
    std::fill(g.w_ih, g.w_ih + G * I, 0.f);
    std::fill(g.w_hh, g.w_hh + G * H, 0.f);
    std::fill(g.b_ih, g.b_ih + G, 0.f);
    std::fill(g.b_hh, g.b_hh + G, 0.f);
    Vec* in = Scratch(0, T * Ip).data();
    Vec* out = Scratch(1, T * (Hp + Hp + Ip)).data();  // hs, dhs, dxs
    Vec* dout = out + T * Hp;
    Vec* din = dout + T * Hp;
    Vec* save = Scratch(2, T * 4 * Hp).data();
    Vec* dgates = Scratch(3, 2 * T * Gp).data();
    for (int64_t b0 = 0; b0 < d.b; b0 += kBlock) {
      const int64_t nb = std::min(kBlock, d.b - b0), at = m * H * TB + b0;
      Gather(xs.typed_data() + m * I * TB + b0, I, T, d.b, nb, in, Ip);
      Gather(hs.typed_data() + at, H, T, d.b, nb, out, Hp);
      Gather(dhs.typed_data() + at, H, T, d.b, nb, dout, Hp);
      for (int q = 0; q < 4; ++q)
        Gather(saved.typed_data() + (m * 4 + q) * H * TB + b0, H, T, d.b, nb, save + q * Hp, 4 * Hp);
      GruBackward(w, T, in, Ip, out, Hp, save, dout, din, dgates, dgates + T * Gp, Gp, g);
      Scatter(din, Ip, I, T, d.b, nb, dxs->typed_data() + m * I * TB + b0);
    }
  });
  return ffi::Error::Success();
}

// --- one training step of a whole net --------------------------------------------------------

enum Cell : int64_t { kGru = 0, kLstm = 1 };
enum Loss : int64_t { kBce = 0, kSoftmaxCe = 1 };

struct NetShape {
  int64_t layers, in, hidden, out, T, B, params;
  std::vector<int64_t> widths;  // [H, head..., O]
  int64_t activation;           // 0 tanh, 1 relu
  int64_t cell;                 // kGru, kLstm
  int64_t gates() const { return cell == kLstm ? 4 : 3; }
};

// Where each tensor of a net's flat vector starts, in models.param_layout's order: per
// recurrent layer w_ih, w_hh, b_ih, b_hh; per head layer weight, bias.
template <typename P>
void Locate(const NetShape& s, P* flat, std::vector<P*>& at) {
  const int64_t G = s.gates() * s.hidden;
  at.clear();
  for (int64_t l = 0; l < s.layers; ++l) {
    const int64_t fan_in = l == 0 ? s.in : s.hidden;
    for (int64_t size : {G * fan_in, G * s.hidden, G, G}) {
      at.push_back(flat);
      flat += size;
    }
  }
  for (size_t k = 0; k + 1 < s.widths.size(); ++k) {
    at.push_back(flat);
    flat += s.widths[k + 1] * s.widths[k];
    at.push_back(flat);
    flat += s.widths[k + 1];
  }
}

// The activation between head layers, applied in place, and its derivative expressed in its
// output a: tanh' = 1 - a^2, relu' = [a > 0]. relu keeps a NaN a NaN (as torch and XLA do),
// so a diverged net stays visible.
inline Vec Activate(int64_t kind, Vec x) { return kind == 0 ? Tanh(x) : (x < Vec{} ? Vec{} : x); }
inline Vec ActivationGrad(int64_t kind, Vec a) {
  return kind == 0 ? 1.f - a * a : (a > Vec{} ? Splat(1.f) : Vec{});
}

// One net's block buffers in its thread's scratch: the input, L layers' outputs and saved
// cell values, K + 1 head activations (k = 0: the last recurrent layer's output; K: the
// logits), two gradient rows, the backward's gate gradients and a layer-input gradient.
struct NetBuffers {
  int64_t T, Hp, Ip, Gp, Wp, K, Sp;  // Sp: saved Vecs per layer and step
  Vec *x, *hs, *acts, *d0, *d1, *save, *dgates, *dprev;
  const Vec* act(int64_t k, int64_t t) const { return acts + (k * T + t) * Wp; }
};

template <typename C>
NetBuffers NetScratch(const NetShape& s) {
  NetBuffers m;
  const int64_t L = s.layers, T = s.T;
  m.T = T;
  m.Hp = RoundUp4(s.hidden), m.Ip = RoundUp4(s.in), m.Gp = RoundUp4(C::kGates * s.hidden);
  m.Sp = C::kSaved * m.Hp;
  m.K = static_cast<int64_t>(s.widths.size()) - 1;
  m.Wp = 0;
  for (int64_t w : s.widths) m.Wp = std::max(m.Wp, RoundUp4(w));
  m.x = Scratch(0, T * m.Ip).data();
  m.hs = Scratch(1, T * (L * m.Hp + (m.K + 1) * m.Wp + 2 * m.Wp)).data();
  m.acts = m.hs + L * T * m.Hp;
  m.d0 = m.acts + (m.K + 1) * T * m.Wp;
  m.d1 = m.d0 + T * m.Wp;
  m.save = Scratch(2, L * T * m.Sp).data();
  m.dgates = Scratch(3, C::kGateGrads * T * m.Gp + T * m.Hp).data();
  m.dprev = m.dgates + C::kGateGrads * T * m.Gp;
  return m;
}

LayerWeights NetLayer(const NetShape& s, const std::vector<const float*>& p, int64_t l) {
  return LayerWeights{p[4 * l], p[4 * l + 1], p[4 * l + 2], p[4 * l + 3], s.hidden,
                      l == 0 ? s.in : s.hidden};
}

// The forward pass of one block of nb sequences (xs: (nb, T, I) rows) through the recurrent
// stack of cell C and the head into m's buffers; writes the logits to `logits` (nb, T, O).
template <typename C>
void NetForward(const NetShape& s, const std::vector<const float*>& p, const float* xs,
                float* logits, int64_t nb, const NetBuffers& m) {
  const int64_t L = s.layers, H = s.hidden, T = s.T, I = s.in, O = s.out;
  const int64_t Hp = m.Hp, Ip = m.Ip, Wp = m.Wp, K = m.K;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i) {
      Vec v{};
      for (int64_t b = 0; b < nb; ++b) v[b] = xs[(b * T + t) * I + i];
      m.x[t * Ip + i] = v;
    }
  for (int64_t l = 0; l < L; ++l) {
    const Vec* in = l == 0 ? m.x : m.hs + (l - 1) * T * Hp;
    C::Forward(NetLayer(s, p, l), T, in, l == 0 ? Ip : Hp, m.hs + l * T * Hp, Hp,
               m.save + l * T * m.Sp);
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < H; ++j) m.acts[t * Wp + j] = m.hs[((L - 1) * T + t) * Hp + j];
  for (int64_t k = 0; k < K; ++k) {
    const float* w = p[4 * L + 2 * k];
    const float* bias = p[4 * L + 2 * k + 1];
    for (int64_t t = 0; t < T; ++t) {
      Vec* y = m.acts + ((k + 1) * T + t) * Wp;
      Affine(w, bias, m.act(k, t), s.widths[k], s.widths[k + 1], y);
      if (k + 1 < K)
        for (int64_t j = 0; j < s.widths[k + 1]; ++j) y[j] = Activate(s.activation, y[j]);
    }
  }
  for (int64_t t = 0; t < T; ++t)
    for (int64_t o = 0; o < O; ++o) {
      const Vec z = m.act(K, t)[o];
      for (int64_t b = 0; b < nb; ++b) logits[(b * T + t) * O + o] = z[b];
    }
}

// The loss gradient w.r.t. the logits of one block into d (T, Wp), 0 in unused lanes:
//   kBce        mean binary cross-entropy over (B, T, O): (sigmoid(z) - y) / (B T O);
//   kSoftmaxCe  mean softmax cross-entropy over (B, T), y a distribution over the O
//               symbols (one-hot): (softmax(z) - y) / (B T).
// A step whose first target is negative is not graded (a length curriculum's masked
// steps): its gradient is 0, the denominators stay B T O and B T (cpu_kernel.mean_loss).
// A NaN logit makes the whole step's softmax NaN, so a diverged net stays visible.
void LossGradient(const NetShape& s, int64_t loss, const NetBuffers& m, const float* ys,
                  int64_t nb, Vec* d) {
  const int64_t T = s.T, O = s.out, Wp = m.Wp, K = m.K;
  const float scale = 1.f / static_cast<float>(loss == kBce ? s.B * T * O : s.B * T);
  for (int64_t t = 0; t < T; ++t) {
    Vec live{};
    for (int64_t b = 0; b < nb; ++b) live[b] = ys[(b * T + t) * O] < 0.f ? 0.f : scale;
    const Vec* z = m.act(K, t);
    Vec* dt = d + t * Wp;
    for (int64_t o = 0; o < O; ++o) {
      Vec y{};
      for (int64_t b = 0; b < nb; ++b) y[b] = ys[(b * T + t) * O + o];
      dt[o] = loss == kBce ? Sigmoid(z[o]) - y : -y;
    }
    if (loss == kSoftmaxCe) {
      for (int64_t b = 0; b < nb; ++b) {
        float top = z[0][b], sum = 0.f;
        for (int64_t o = 1; o < O; ++o) top = std::max(top, z[o][b]);
        float e[kMaxWidth];
        for (int64_t o = 0; o < O; ++o) sum += (e[o] = std::exp(z[o][b] - top));
        for (int64_t o = 0; o < O; ++o) dt[o][b] += e[o] / sum;
      }
    }
    for (int64_t o = 0; o < O; ++o) dt[o] *= live;
  }
}

// One block of nb sequences of one net: forward, logits out, the loss gradient back through
// the head and the recurrent stack into dflat.
template <typename C>
void NetBlock(const NetShape& s, int64_t loss, const float* flat, float* dflat, const float* xs,
              const float* ys, float* logits, int64_t nb) {
  const int64_t L = s.layers, H = s.hidden, T = s.T;
  std::vector<const float*> p;
  std::vector<float*> dp;
  Locate(s, flat, p);
  Locate(s, dflat, dp);
  const NetBuffers m = NetScratch<C>(s);
  const int64_t Hp = m.Hp, Ip = m.Ip, Gp = m.Gp, Wp = m.Wp, K = m.K;
  Vec *x = m.x, *hs = m.hs, *acts = m.acts, *d0 = m.d0, *d1 = m.d1;
  NetForward<C>(s, p, xs, logits, nb, m);
  LossGradient(s, loss, m, ys, nb, d0);
  // Head backward: d0 holds the gradient w.r.t. acts[k + 1] (pre-activation for k + 1 < K,
  // made so below); d1 receives the gradient w.r.t. acts[k].
  for (int64_t k = K - 1; k >= 0; --k) {
    const int64_t fan_in = s.widths[k], fan_out = s.widths[k + 1];
    AccumulateOuter(d0, Wp, fan_out, acts + k * T * Wp, Wp, fan_in, T, dp[4 * L + 2 * k]);
    AccumulateSum(d0, Wp, fan_out, T, dp[4 * L + 2 * k + 1]);
    const float* w = p[4 * L + 2 * k];
    for (int64_t t = 0; t < T; ++t) {
      Vec* da = d1 + t * Wp;
      for (int64_t j = 0; j < fan_in; ++j) da[j] = Vec{};
      MatVecAdd(w, 1, fan_in, d0 + t * Wp, fan_out, fan_in, da);  // W^T d
      if (k > 0) {
        const Vec* a = acts + (k * T + t) * Wp;
        for (int64_t j = 0; j < fan_in; ++j) da[j] *= ActivationGrad(s.activation, a[j]);
      }
    }
    std::swap(d0, d1);
  }
  // d0: gradient w.r.t. the last recurrent layer's output, rows of Wp; repack to Hp.
  Vec* dout = d1;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < H; ++j) dout[t * Hp + j] = d0[t * Wp + j];
  for (int64_t l = L - 1; l >= 0; --l) {
    const Vec* in = l == 0 ? x : hs + (l - 1) * T * Hp;
    const LayerGrads g{dp[4 * l], dp[4 * l + 1], dp[4 * l + 2], dp[4 * l + 3]};
    C::Backward(NetLayer(s, p, l), T, in, l == 0 ? Ip : Hp, hs + l * T * Hp, Hp,
                m.save + l * T * m.Sp, dout, l == 0 ? nullptr : m.dprev, m.dgates, Gp, g);
    std::copy(m.dprev, m.dprev + T * Hp, dout);
  }
}

// The net's shape from its arguments, checked: flat (.., P), xs (.., B, T, I).
ffi::Error NetShapeOf(const ffi::Buffer<ffi::F32>& flat, const ffi::Buffer<ffi::F32>& xs,
                      ffi::Span<const int64_t> widths, int64_t layers, int64_t activation,
                      int64_t cell, NetShape* s) {
  auto fd = flat.dimensions(), xd = xs.dimensions();
  if (fd.size() < 1 || xd.size() < 3 || widths.size() < 2 || layers < 1) {
    return ffi::Error::InvalidArgument("mlds rnn net: arguments of too low rank");
  }
  if (cell != kGru && cell != kLstm) {
    return ffi::Error::InvalidArgument("mlds rnn net: unknown cell");
  }
  *s = NetShape{layers, xd[xd.size() - 1], widths[0], widths[widths.size() - 1],
                xd[xd.size() - 2], xd[xd.size() - 3], fd[fd.size() - 1],
                std::vector<int64_t>(widths.begin(), widths.end()), activation, cell};
  int64_t expect = 0;
  for (int64_t l = 0; l < layers; ++l)
    expect += s->gates() * s->hidden * ((l ? s->hidden : s->in) + s->hidden + 2);
  for (size_t k = 0; k + 1 < s->widths.size(); ++k) expect += s->widths[k + 1] * (s->widths[k] + 1);
  if (expect != s->params) {
    return ffi::Error::InvalidArgument("mlds rnn net: flat (P) disagrees with the widths");
  }
  for (int64_t w : s->widths)
    if (w < 1 || w > kMaxWidth) return ffi::Error::InvalidArgument("mlds rnn net: a width above 128");
  if (s->in > kMaxWidth || activation < 0 || activation > 1) {
    return ffi::Error::InvalidArgument("mlds rnn net: input above 128 or unknown activation");
  }
  if (Leading(xs, 3) != Leading(flat, 1)) {
    return ffi::Error::InvalidArgument("mlds rnn net: arguments disagree on the leading axes");
  }
  return ffi::Error::Success();
}

template <typename C>
void NetLossAll(ffi::ThreadPool& pool, const NetShape& s, int64_t loss, const float* flat,
                const float* xs, const float* ys, float* logits, float* dflat, int64_t nets) {
  const int64_t P = s.params, TI = s.T * s.in, TO = s.T * s.out;
  // A net's blocks add into the same gradient: one net per thread at a time.
  ParallelFor(pool, nets, [&](int64_t m) {
    float* g = dflat + m * P;
    std::fill(g, g + P, 0.f);
    for (int64_t b0 = 0; b0 < s.B; b0 += kBlock) {
      NetBlock<C>(s, loss, flat + m * P, g, xs + (m * s.B + b0) * TI, ys + (m * s.B + b0) * TO,
                  logits + (m * s.B + b0) * TO, std::min(kBlock, s.B - b0));
    }
  });
}

template <typename C>
void NetLogitsAll(ffi::ThreadPool& pool, const NetShape& s, const float* flat, const float* xs,
                  float* logits, int64_t nets) {
  const int64_t P = s.params, TI = s.T * s.in, TO = s.T * s.out;
  const int64_t blocks = (s.B + kBlock - 1) / kBlock;
  // No gradients to share: spread (net, block) pairs over threads.
  ParallelFor(pool, nets * blocks, [&](int64_t item) {
    const int64_t m = item / blocks, b0 = (item % blocks) * kBlock;
    std::vector<const float*> p;
    Locate<const float>(s, flat + m * P, p);
    NetForward<C>(s, p, xs + (m * s.B + b0) * TI, logits + (m * s.B + b0) * TO,
                  std::min(kBlock, s.B - b0), NetScratch<C>(s));
  });
}

ffi::Error RnnNetLossImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> flat,
                          ffi::Buffer<ffi::F32> xs, ffi::Buffer<ffi::F32> ys,
                          ffi::Span<const int64_t> widths, int64_t layers, int64_t activation,
                          int64_t cell, int64_t loss, ffi::ResultBuffer<ffi::F32> logits,
                          ffi::ResultBuffer<ffi::F32> dflat) {
  NetShape s;
  if (auto err = NetShapeOf(flat, xs, widths, layers, activation, cell, &s); err.failure())
    return err;
  auto yd = ys.dimensions();
  if (yd.size() < 3 || yd[yd.size() - 1] != s.out || yd[yd.size() - 2] != s.T ||
      yd[yd.size() - 3] != s.B || Leading(ys, 3) != Leading(flat, 1)) {
    return ffi::Error::InvalidArgument("mlds rnn net: ys is not (.., B, T, O) like xs");
  }
  if (loss != kBce && loss != kSoftmaxCe) {
    return ffi::Error::InvalidArgument("mlds rnn net: unknown loss");
  }
  auto run = cell == kLstm ? NetLossAll<LstmCell> : NetLossAll<GruCell>;
  run(pool, s, loss, flat.typed_data(), xs.typed_data(), ys.typed_data(), logits->typed_data(),
      dflat->typed_data(), Leading(flat, 1));
  return ffi::Error::Success();
}

ffi::Error RnnNetLogitsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> flat,
                            ffi::Buffer<ffi::F32> xs, ffi::Span<const int64_t> widths,
                            int64_t layers, int64_t activation, int64_t cell,
                            ffi::ResultBuffer<ffi::F32> logits) {
  NetShape s;
  if (auto err = NetShapeOf(flat, xs, widths, layers, activation, cell, &s); err.failure())
    return err;
  auto run = cell == kLstm ? NetLogitsAll<LstmCell> : NetLogitsAll<GruCell>;
  run(pool, s, flat.typed_data(), xs.typed_data(), logits->typed_data(), Leading(flat, 1));
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(MldsRnnNetLoss, RnnNetLossImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // flat
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ys
                                  .Attr<ffi::Span<const int64_t>>("widths")
                                  .Attr<int64_t>("layers")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("loss")
                                  .Ret<ffi::Buffer<ffi::F32>>()  // logits
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dflat

XLA_FFI_DEFINE_HANDLER_SYMBOL(MldsRnnNetLogits, RnnNetLogitsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // flat
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xs
                                  .Attr<ffi::Span<const int64_t>>("widths")
                                  .Attr<int64_t>("layers")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("cell")
                                  .Ret<ffi::Buffer<ffi::F32>>());  // logits
