// Fused CPU kernels for one relaxation step (explorer/native/__init__.py builds and loads them).
//
// Stepper (exported; dynamics._FusedStep builds one per relax call): a whole step in one call.
//   It evaluates the edge outputs (ATen convolutions and products, or the few-row kernels below),
//   updates the output layer, runs each schedule group through group_step, and makes the record
//   with finalize. It holds the states between steps.
// group_step: for every layer of one schedule group, in one pass over its units,
//   - the update s = clip_[0, alpha](b + sum of the edge outputs) (with over-relaxation omega),
//     written in place into the first edge output the caller lets it overwrite (a fresh conv
//     output), or into a new tensor;
//   - and, as asked by `level`, the per-sample raw statistics of the record (RAW below).
// small_conv_forward / small_conv_feedback (exported): convolutions with few output positions.
// finalize: the per-step record (LAYER_STATS rows, Phi / C / F, a few units, and a summary
//   for the loop's decisions) from the raw rows of all layers.
// Eager PyTorch does the same in about 20 tensor ops per layer; at batch 1 the dispatch of
// those ops costs more than the step itself (bench/RESULTS-engine.md), here it is one call.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

// Raw columns; sums of squares where the record wants a norm (finalize takes the root).
// LATE: <W s_src, s_dst> of edges whose two ends move together, from this step's forward output
// (W s_src of the previous step) and the old state: the previous step's missing energy terms.
// BIAS_DOT and EDGE_ENERGY only ever enter Phi as NORM2 / 2 - BIAS_DOT - EDGE_ENERGY: the one-pass
// path (record_block) puts <b, s> into EDGE_ENERGY and leaves BIAS_DOT 0.
enum Raw { DELTA2, NORM2, TOTAL, NONZERO, AT_ALPHA, DIRECT2, SKIP2, FEEDBACK2, NUDGE2, BIAS_DOT, EDGE_ENERGY, LATE,
           NRAW };
enum Role { DIRECT = 0, SKIP = 1, FEEDBACK = 2 };
constexpr int64_t BLOCK = 512;        // units summed per edge before the fused pass (stays in L1)
constexpr int64_t CHUNK = 16384;      // units per parallel work item
constexpr int64_t SERIAL_BELOW = 65536;  // total units under which threads cost more than they save
constexpr int MAX_PARTS = 8;

// How record_block forms the owned energy weight (see there).
enum Own { ADD = 0, SUB = 1 };

// Which parts record_block and its side sums read, by index (-1: none); ok false where the layer
// needs the generic path (more parts, a role or the late terms from three, over-relaxation).
struct RecordPlan {
  bool ok = false;
  int role[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}}, late[2] = {-1, -1}, q[2] = {-1, -1};
  int own = ADD, nq = 0;
};

template <typename T>
struct Layer {
  const T* part[MAX_PARTS];
  int role[MAX_PARTS];
  bool owned[MAX_PARTS];
  bool late[MAX_PARTS];
  int nparts = 0;
  const T* old = nullptr;
  const T* ref = nullptr;       // free state (nudged phases) or null
  const T* bias_map = nullptr;  // the bias broadcast over one sample, in memory order
  const T* given = nullptr;     // the new state when the caller computed it (the output y)
  T* out = nullptr;             // where the update goes (update mode)
  bool out_is_part = false;     // `out` is an edge output (else a fresh tensor)
  int64_t n = 0;                // units per sample
  RecordPlan record;            // level 2: the one-pass kernel's plan (record_plan)
};

struct Item { int layer; int64_t sample, lo, hi; };

// The fused pass over one block: `sum` holds the edge outputs added in their order, d, s, f
// the direct, skip and feedback ones, o those whose energy term this layer owns. Every pointer
// is distinct memory (`out` is a fresh tensor or an edge output already read into the sums), so
// the compiler vectorises it, reductions included.
template <typename T, int LEVEL, bool UPDATE, bool OMEGA, bool REF>
__attribute__((noinline)) void fused_block(int64_t m, const T* __restrict__ sum, const T* __restrict__ d, const T* __restrict__ s,
                 const T* __restrict__ f,
                 const T* __restrict__ o, const T* __restrict__ lp, const T* __restrict__ old, const T* __restrict__ ref,
                 const T* __restrict__ bm, const T* __restrict__ giv, T* __restrict__ out, T alpha, T omega,
                 double* __restrict__ a) {
  T dd = 0, nn = 0, tot = 0, nz = 0, aa = 0, rr = 0, bd = 0, ee = 0, sd = 0, ss = 0, sf = 0, lt = 0;
  // Without the pragma gcc turns the clip into branches and leaves the sums scalar.
#pragma omp simd reduction(+ : dd, nn, tot, nz, aa, rr, bd, ee, sd, ss, sf, lt)
  for (int64_t i = 0; i < m; ++i) {
    const T oi = old[i];
    T v;
    if constexpr (UPDATE) {
      T pre = sum[i] + bm[i];   // the same sum at every level: recording never changes the dynamics
      if constexpr (OMEGA) pre = oi + omega * (pre - oi);
      v = std::min(std::max(pre, T(0)), alpha);  // NaN stays NaN, as with torch.clamp
      out[i] = v;
    } else {
      v = giv[i];
    }
    if constexpr (LEVEL >= 1) {
      const T dv = v - oi;
      dd += dv * dv;
      nn += v * v;
      if constexpr (REF) { const T dr = v - ref[i]; rr += dr * dr; }
    }
    if constexpr (LEVEL >= 2) {
      const T di = d[i], si = s[i], fi = f[i];
      tot += v;
      nz += v > T(0) ? T(1) : T(0);
      aa += v >= alpha ? T(1) : T(0);
      bd += v * bm[i];
      ee += o[i] * v;
      sd += di * di;
      ss += si * si;
      sf += fi * fi;
      lt += lp[i] * oi;
    }
  }
  a[DELTA2] += dd; a[NORM2] += nn; a[NUDGE2] += rr;
  a[TOTAL] += tot; a[NONZERO] += nz; a[AT_ALPHA] += aa; a[BIAS_DOT] += bd; a[EDGE_ENERGY] += ee;
  a[DIRECT2] += sd; a[SKIP2] += ss; a[FEEDBACK2] += sf; a[LATE] += lt;
}

// dst = p[0] + p[1] + ... (in that order) in one pass: a pass per part (fill, then add each)
// cost as much as the fused pass itself on layers with four edges.
template <typename T>
__attribute__((noinline)) void sum_of(T* __restrict__ dst, const T* const* p, int count, int64_t m) {
  const T* __restrict__ a = p[0];
  const T* __restrict__ b = p[1];
  if (count == 2) {
    for (int64_t i = 0; i < m; ++i) dst[i] = a[i] + b[i];
    return;
  }
  const T* __restrict__ c = p[2];
  if (count == 3) {
    for (int64_t i = 0; i < m; ++i) dst[i] = (a[i] + b[i]) + c[i];
    return;
  }
  const T* __restrict__ d = p[3];
  for (int64_t i = 0; i < m; ++i) dst[i] = ((a[i] + b[i]) + c[i]) + d[i];
  for (int q = 4; q < count; ++q) {
    const T* __restrict__ e = p[q];
    for (int64_t i = 0; i < m; ++i) dst[i] += e[i];
  }
}

// Sum of the parts in `which` (in their order) over one block: a pointer into the part itself
// when there is one, a zero block when none, else `buf` filled here.
template <typename T>
const T* block_sum(const Layer<T>& L, const bool* which, int64_t at, int64_t m, T* buf, const T* zeros) {
  const T* picked[MAX_PARTS];
  int count = 0;
  for (int p = 0; p < L.nparts; ++p)
    if (which[p]) picked[count++] = L.part[p] + at;
  if (count == 0) return zeros;
  if (count == 1) return picked[0];
  sum_of(buf, picked, count, m);
  return buf;
}

// The record's pass in one sweep over the edge outputs themselves, for the layers of every network
// the builders make (see record_plan): the generic path above sums each role's outputs and the
// owned ones into blocks and copies the one `out` overwrites first, which at level 2 cost as many
// loads and stores as the statistics themselves (Fashion-MNIST network, batch 64).
// The update is the same left-to-right sum as sum_of's, so every level gives the same state (the
// build has no -fassociative-math, which could reorder it: see native/__init__.py).
// `out` is one of the parts: each i is read before it is written and nothing depends across i,
// hence omp simd and no restrict on them. OWN gives the owned sum w - b from the fewest parts:
// ADD: b + q1 (+ q2), SUB: pre - q1 (- q2), with NQ of them; <w, v> goes into EDGE_ENERGY, the
// bias term folded in (BIAS_DOT stays 0; see Raw).

template <typename T, bool REF, int NP, int OWN, int NQ>
__attribute__((noinline)) void record_block(int64_t m, const T* const* P, const T* q1, const T* q2, const T* old,
                                           const T* __restrict__ ref, const T* __restrict__ bm, T* out, T alpha,
                                           double* __restrict__ a) {
  const T* p0 = P[0];
  const T* p1 = P[1];
  const T* p2 = NP > 2 ? P[2] : nullptr;
  const T* p3 = NP > 3 ? P[3] : nullptr;
  T dd = 0, nn = 0, tot = 0, rr = 0, ee = 0;
  int32_t nz = 0, aa = 0;   // exact counts, and cheaper than float ones
#pragma omp simd reduction(+ : dd, nn, tot, rr, ee, nz, aa)
  for (int64_t i = 0; i < m; ++i) {
    const T oi = old[i], b = bm[i];
    T sum = p0[i] + p1[i];
    if constexpr (NP > 2) sum = sum + p2[i];
    if constexpr (NP > 3) sum = sum + p3[i];
    T owned = NQ > 0 ? q1[i] : T(0);
    if constexpr (NQ > 1) owned = owned + q2[i];
    const T pre = sum + b;
    const T w = OWN == ADD ? b + owned : pre - owned;
    const T v = std::min(std::max(pre, T(0)), alpha);   // as fused_block's
    out[i] = v;
    const T dv = v - oi;
    dd += dv * dv;
    nn += v * v;
    if constexpr (REF) { const T dr = v - ref[i]; rr += dr * dr; }
    tot += v;
    nz += v > T(0);
    aa += v >= alpha;
    ee += w * v;
  }
  a[DELTA2] += dd; a[NORM2] += nn; a[NUDGE2] += rr; a[TOTAL] += tot; a[NONZERO] += nz; a[AT_ALPHA] += aa;
  a[EDGE_ENERGY] += ee;
}

// sum (x + y)^2, or x^2 without y
template <typename T>
__attribute__((noinline)) double sum_squares(const T* __restrict__ x, const T* __restrict__ y, int64_t m) {
  T q = 0;
  if (y) {
#pragma omp simd reduction(+ : q)
    for (int64_t i = 0; i < m; ++i) { const T u = x[i] + y[i]; q += u * u; }
  } else {
#pragma omp simd reduction(+ : q)
    for (int64_t i = 0; i < m; ++i) q += x[i] * x[i];
  }
  return q;
}

// sum (x + y) z, or x z without y
template <typename T>
__attribute__((noinline)) double dot(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ z,
                                     int64_t m) {
  T q = 0;
  if (y) {
#pragma omp simd reduction(+ : q)
    for (int64_t i = 0; i < m; ++i) q += (x[i] + y[i]) * z[i];
  } else {
#pragma omp simd reduction(+ : q)
    for (int64_t i = 0; i < m; ++i) q += x[i] * z[i];
  }
  return q;
}

template <typename T>
RecordPlan record_plan(const Layer<T>& L, bool omega) {
  RecordPlan r;
  if (omega || L.nparts < 2 || L.nparts > 4) return r;
  int nrole[3] = {0, 0, 0}, nlate = 0, nown = 0;
  for (int p = 0; p < L.nparts; ++p) {
    int& k = nrole[L.role[p]];
    if (k == 2) return r;
    r.role[L.role[p]][k++] = p;
    if (L.late[p]) {
      if (nlate == 2) return r;
      r.late[nlate++] = p;
    }
    nown += L.owned[p];
  }
  // the owned sum from the fewer parts: the owned ones added to b, or the others taken from pre
  r.own = nown <= L.nparts - nown ? ADD : SUB;
  for (int p = 0; p < L.nparts; ++p)
    if (L.owned[p] == (r.own == ADD)) r.q[r.nq++] = p;
  r.ok = r.nq <= 2;
  return r;
}

template <typename T, bool REF>
void record_item(const Layer<T>& L, const RecordPlan& r, const Item& it, T alpha, double* a) {
  const int64_t off = it.sample * L.n;
  const T* P[4];
  for (int64_t base = it.lo; base < it.hi; base += BLOCK) {
    const int64_t m = std::min(BLOCK, it.hi - base), at = off + base;
    for (int p = 0; p < L.nparts; ++p) P[p] = L.part[p] + at;
    auto part = [&](int k) { return k >= 0 ? P[k] : nullptr; };
    // first: record_block overwrites one of the parts
    for (int role = 0; role < 3; ++role)
      if (r.role[role][0] >= 0)
        a[DIRECT2 + role] += sum_squares(P[r.role[role][0]], part(r.role[role][1]), m);
    if (r.late[0] >= 0) a[LATE] += dot(P[r.late[0]], part(r.late[1]), L.old + at, m);
    const T *q1 = part(r.q[0]), *q2 = part(r.q[1]), *old = L.old + at, *ref = REF ? L.ref + at : nullptr,
            *bm = L.bias_map + base;
    T* out = L.out + at;
    switch ((L.nparts * 2 + r.own) * 3 + r.nq) {
#define EXPLORER_CASE(NP, OWN, NQ) \
      case (NP * 2 + OWN) * 3 + NQ: record_block<T, REF, NP, OWN, NQ>(m, P, q1, q2, old, ref, bm, out, alpha, a); break;
#define EXPLORER_NP(NP) \
      EXPLORER_CASE(NP, ADD, 0) EXPLORER_CASE(NP, ADD, 1) EXPLORER_CASE(NP, ADD, 2) \
      EXPLORER_CASE(NP, SUB, 0) EXPLORER_CASE(NP, SUB, 1) EXPLORER_CASE(NP, SUB, 2)
      EXPLORER_NP(2) EXPLORER_NP(3) EXPLORER_NP(4)
#undef EXPLORER_NP
#undef EXPLORER_CASE
      default: TORCH_CHECK(false, "record_item: no kernel for this layer's parts");
    }
  }
}

template <typename T, int LEVEL, bool UPDATE, bool OMEGA, bool REF>
void run_item(const Layer<T>& L, const Item& it, T alpha, T omega, double* acc) {
  alignas(64) T t[BLOCK], d[BLOCK], s[BLOCK], f[BLOCK], o[BLOCK], lb[BLOCK];
  alignas(64) static const T zeros[BLOCK] = {};
  bool all[MAX_PARTS], direct[MAX_PARTS], skip[MAX_PARTS], feedback[MAX_PARTS];
  for (int p = 0; p < L.nparts; ++p) {
    all[p] = true;
    direct[p] = L.role[p] == DIRECT;
    skip[p] = L.role[p] == SKIP;
    feedback[p] = L.role[p] == FEEDBACK;
  }
  bool every_owned = true;
  for (int p = 0; p < L.nparts; ++p) every_owned = every_owned && L.owned[p];
  const int64_t off = it.sample * L.n;
  double a[NRAW] = {0};
  for (int64_t base = it.lo; base < it.hi; base += BLOCK) {
    const int64_t m = std::min(BLOCK, it.hi - base), at = off + base;
    // The edge outputs added in their order, as every level does (recording never changes the update).
    // When `out` is an edge output, the sums are read before fused_block writes it, or copied when only one.
    const T* first = L.out_is_part ? L.out + at : nullptr;
    const T* sum = block_sum(L, all, at, m, t, zeros);
    if (UPDATE && sum == first) {
      std::copy(sum, sum + m, t);
      sum = t;
    }
    const T *dp = zeros, *sp = zeros, *fp = zeros, *op = zeros, *lp = zeros;
    if constexpr (LEVEL >= 2) {
      dp = block_sum(L, direct, at, m, d, zeros);
      sp = block_sum(L, skip, at, m, s, zeros);
      fp = block_sum(L, feedback, at, m, f, zeros);
      op = every_owned ? sum : block_sum(L, L.owned, at, m, o, zeros);
      lp = block_sum(L, L.late, at, m, lb, zeros);
      if (UPDATE && first) {   // pointers into `out` would see the new state: copy those
        if (dp == first) { std::copy(dp, dp + m, d); dp = d; }
        if (sp == first) { std::copy(sp, sp + m, s); sp = s; }
        if (fp == first) { std::copy(fp, fp + m, f); fp = f; }
        if (op == first) { std::copy(op, op + m, o); op = o; }
        if (lp == first) { std::copy(lp, lp + m, lb); lp = lb; }
      }
    }
    fused_block<T, LEVEL, UPDATE, OMEGA, REF>(
        m, sum, dp, sp, fp, op, lp, L.old + at, REF ? L.ref + at : nullptr, L.bias_map + base,
        UPDATE ? nullptr : L.given + at, UPDATE ? L.out + at : nullptr, alpha, omega, a);
  }
  for (int k = 0; k < NRAW; ++k) acc[k] = a[k];
}

template <typename T, int LEVEL>
void dispatch_item(const Layer<T>& L, const Item& it, T alpha, T omega, double* acc) {
  const bool update = L.given == nullptr, om = omega != T(1), ref = L.ref != nullptr;
  if (LEVEL == 2 && update && L.record.ok) {
    std::fill_n(acc, NRAW, 0.0);
    return ref ? record_item<T, true>(L, L.record, it, alpha, acc) : record_item<T, false>(L, L.record, it, alpha, acc);
  }
#define EXPLORER_CASE(U, O, R) \
  if (update == U && om == O && ref == R) return run_item<T, LEVEL, U, O, R>(L, it, alpha, omega, acc);
  EXPLORER_CASE(true, false, false) EXPLORER_CASE(true, false, true)
  EXPLORER_CASE(true, true, false) EXPLORER_CASE(true, true, true)
  EXPLORER_CASE(false, false, false) EXPLORER_CASE(false, false, true)
  EXPLORER_CASE(false, true, false) EXPLORER_CASE(false, true, true)
#undef EXPLORER_CASE
}

bool per_sample_blocks(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void same_layout(const at::Tensor& t, const at::Tensor& like, const char* what, int64_t layer) {
  TORCH_CHECK(t.sizes() == like.sizes(), what, " of layer ", layer, " has shape ", t.sizes(),
              ", expected ", like.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), what, " of layer ", layer, " has another dtype");
  TORCH_CHECK(per_sample_blocks(t), what, " of layer ", layer, " is not dense");
  for (int64_t k = 1; k < t.dim(); ++k)
    TORCH_CHECK(t.size(k) == 1 || t.stride(k) == like.stride(k), what, " of layer ", layer,
                " has another memory layout than the layer's state");
}

template <typename T>
void run_group(std::vector<Layer<T>>& layers, int64_t batch, int64_t level, T alpha, T omega,
               double* raw) {
  std::vector<Item> items;
  int64_t total = 0, work_total = 0;
  // A unit's work grows with its layer's edge count (each is summed in), so threads are given
  // equal shares of units x (parts + 2), not of units.
  std::vector<int64_t> weight(layers.size());
  for (int l = 0; l < (int)layers.size(); ++l) {
    const int64_t n = layers[l].n;
    weight[l] = layers[l].nparts + 2;
    total += n * batch;
    work_total += n * batch * weight[l];
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t lo = 0; lo < n; lo += CHUNK) items.push_back({l, b, lo, std::min(n, lo + CHUNK)});
  }
  std::vector<double> partial(items.size() * NRAW, 0.0);
  if (level == 2)
    for (Layer<T>& L : layers) L.record = record_plan(L, omega != T(1));
  auto work = [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const Item& it = items[k];
      double* acc = partial.data() + k * NRAW;
      if (level == 0) dispatch_item<T, 0>(layers[it.layer], it, alpha, omega, acc);
      else if (level == 1) dispatch_item<T, 1>(layers[it.layer], it, alpha, omega, acc);
      else dispatch_item<T, 2>(layers[it.layer], it, alpha, omega, acc);
    }
  };
  // Recording makes a unit about three times the work (Fashion-MNIST network, batch 64):
  // worth a second thread on groups a third the size.
  if (total * (level == 2 ? 3 : 1) < SERIAL_BELOW) {
    work(0, (int64_t)items.size());
  } else {
    // One contiguous run of items per thread, cut at equal shares of the work: items differ in
    // size (layers of 12544 and 3136 units per sample), and parallel_for's equal item counts
    // gave one thread 2.5x the other's work (Fashion-MNIST network, batch 64).
    const int64_t parts = std::max<int64_t>(1, at::get_num_threads());
    std::vector<int64_t> cut(parts + 1, (int64_t)items.size());
    cut[0] = 0;
    int64_t done = 0, p = 1;
    for (size_t k = 0; k < items.size() && p < parts; ++k) {
      done += (items[k].hi - items[k].lo) * weight[items[k].layer];
      while (p < parts && done * parts >= p * work_total) cut[p++] = (int64_t)k + 1;
    }
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) work(cut[q], cut[q + 1]);
    });
  }
  if (level == 0) return;   // an update only: no statistics, and `raw` may be null
  // raw is [layers, NRAW, batch]
  for (size_t k = 0; k < items.size(); ++k) {
    const Item& it = items[k];
    for (int r = 0; r < NRAW; ++r) raw[(it.layer * NRAW + r) * batch + it.sample] += partial[k * NRAW + r];
  }
}

// ---------------------------------------------------------------------------
// Convolutions with few output positions (batch x output pixels, as dynamics._FusedStep decides:
// the small last maps of a deep network at small batches), as im2col and a matrix product with few
// rows. Here PyTorch's kernels (oneDNN, MKL) reach a third to a half of the conv ceiling on these
// shapes; the 4x4 and 2x2 maps' convolutions were 40 % of a Hopfield-ResNet13 step at batch 1.
//
// The product C [N, P] = A [N, Q] . B [Q, P] runs as outer products: R <= 6 rows of A (broadcast)
// against four 64-byte vectors of B's columns, 24 vector accumulators held in registers across a
// block of Q (AVX-512 has 32; without it the compiler splits the vectors and spills, and only the
// timed choice in dynamics._FusedStep keeps this kernel where it is the faster). B is packed
// (pack_columns) into column tiles of four vectors, each tile's Q rows contiguous, so the weights, which do not stay in cache between steps, stream from memory in order (unpacked,
// with rows 2 KB apart, the hardware prefetcher lost the stream and a cold 512x4608 product ran at
// half the speed).
constexpr int64_t VECTOR_BYTES = 64;

template <typename T>
constexpr int64_t column_tile() { return 4 * VECTOR_BYTES / (int64_t)sizeof(T); }

template <typename T>
constexpr int64_t column_tiles(int64_t P) { return (P + column_tile<T>() - 1) / column_tile<T>(); }

template <typename T, int R, int VC>
inline void outer_tile(const T* __restrict__ A, int64_t lda, const T* __restrict__ B, int64_t ldb,
                       T* __restrict__ C, int64_t ldc, int64_t q0, int64_t q1, bool first) {
  typedef T V __attribute__((vector_size(VECTOR_BYTES)));
  constexpr int L = VECTOR_BYTES / sizeof(T);
  V acc[R][VC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < VC; ++v) {
      if (first) acc[r][v] = V{};
      else std::memcpy(&acc[r][v], C + r * ldc + v * L, sizeof(V));
    }
  for (int64_t q = q0; q < q1; ++q) {
    const T* b = B + q * ldb;
    V bv[VC];
#pragma GCC unroll 4
    for (int v = 0; v < VC; ++v) std::memcpy(&bv[v], b + v * L, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V a = V{} + A[r * lda + q];
#pragma GCC unroll 4
      for (int v = 0; v < VC; ++v) acc[r][v] += a * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < VC; ++v) std::memcpy(C + r * ldc + v * L, &acc[r][v], sizeof(V));
}

template <typename T>
inline void rows_tile(int64_t R, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc, int64_t q0,
                      int64_t q1, bool first) {
  switch (R) {
    case 1: outer_tile<T, 1, 4>(A, lda, B, ldb, C, ldc, q0, q1, first); break;
    case 2: outer_tile<T, 2, 4>(A, lda, B, ldb, C, ldc, q0, q1, first); break;
    case 3: outer_tile<T, 3, 4>(A, lda, B, ldb, C, ldc, q0, q1, first); break;
    case 4: outer_tile<T, 4, 4>(A, lda, B, ldb, C, ldc, q0, q1, first); break;
    case 5: outer_tile<T, 5, 4>(A, lda, B, ldb, C, ldc, q0, q1, first); break;
    default: outer_tile<T, 6, 4>(A, lda, B, ldb, C, ldc, q0, q1, first); break;
  }
}

// C [N, P] = A [N, Q] . B, B packed by pack_columns; parallel over B's column tiles.
template <typename T>
void few_rows_mm(const T* A, const T* packed, T* C, int64_t N, int64_t Q, int64_t P) {
  constexpr int64_t TILE = column_tile<T>(), QB = 256;   // a block of B: 64 KB, in L2
  if (Q == 0) {   // an empty sum
    std::fill_n(C, N * P, T(0));
    return;
  }
  const int64_t tiles = column_tiles<T>(P);
  const int64_t grain = std::max<int64_t>(1, 262144 / std::max<int64_t>(1, TILE * Q * N));
  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> tail;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p0 = t * TILE, width = std::min(P - p0, TILE);
      T* c = C + p0;
      int64_t ldc = P;
      if (width < TILE) {   // the last, partial tile (its padding columns are zeros) goes through a buffer
        tail.assign(N * TILE, T(0));
        c = tail.data();
        ldc = TILE;
      }
      const T* b = packed + t * Q * TILE;
      for (int64_t q0 = 0; q0 < Q; q0 += QB) {
        const int64_t q1 = std::min(Q, q0 + QB);
        for (int64_t n0 = 0; n0 < N; n0 += 6)
          rows_tile<T>(std::min<int64_t>(6, N - n0), A + n0 * Q, Q, b, TILE, c + n0 * ldc, ldc, q0, q1, q0 == 0);
      }
      if (width < TILE)
        for (int64_t n = 0; n < N; ++n) std::copy_n(tail.data() + n * TILE, width, C + n * P + p0);
    }
  });
}

// A scratch buffer per thread, kept between calls: a fresh one of this size costs page faults
// (glibc maps large blocks anew each time), as much as the arithmetic at these sizes.
template <typename T>
T* scratch(size_t n, bool zero) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  if (zero) std::fill_n(buf.data(), n, T(0));
  return buf.data();
}

// Calls fn(n, tap, pixel) for every output position n (of B x ho x wo), kernel tap (ky * k + kx) and
// the source pixel ((b * H + y) * W + x) under it, padding skipped: im2col and its transpose.
template <typename Fn>
void for_each_patch_cell(int64_t B, int64_t ho, int64_t wo, int64_t k, int64_t stride, int64_t pad, int64_t H,
                         int64_t W, Fn fn) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < ho; ++i)
      for (int64_t j = 0; j < wo; ++j) {
        const int64_t n = (b * ho + i) * wo + j;
        for (int64_t ky = 0; ky < k; ++ky) {
          const int64_t yy = i * stride - pad + ky;
          if (yy < 0 || yy >= H) continue;
          for (int64_t kx = 0; kx < k; ++kx) {
            const int64_t xx = j * stride - pad + kx;
            if (xx >= 0 && xx < W) fn(n, ky * k + kx, (b * H + yy) * W + xx);
          }
        }
      }
}

void check_nhwc(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              what, " must be a channels-last CPU feature map");
}

}  // namespace

// B [Q, P] packed for few_rows_mm: [tiles, Q, column tile], the last tile's padding zero.
at::Tensor pack_columns(at::Tensor b) {
  TORCH_CHECK(b.device().is_cpu() && b.dim() == 2, "pack_columns: a CPU matrix, got shape ", b.sizes());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(b.scalar_type(), "pack_columns", [&] {
    constexpr int64_t TILE = column_tile<scalar_t>();
    const int64_t Q = b.size(0), P = b.size(1), tiles = column_tiles<scalar_t>(P);
    out = at::zeros({tiles, Q, TILE}, b.options());
    const at::Tensor bc = b.contiguous();
    const scalar_t* src = bc.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t q = 0; q < Q; ++q)
        std::copy_n(src + q * P + t * TILE, std::min(TILE, P - t * TILE), dst + (t * Q + q) * TILE);
  });
  return out;
}

static void check_packed(const at::Tensor& packed, const at::Tensor& like, int64_t Q, int64_t P, const char* what) {
  int64_t tile = 0, tiles = 0;
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "check_packed", [&] {
    tile = column_tile<scalar_t>();
    tiles = column_tiles<scalar_t>(P);
  });
  TORCH_CHECK(packed.device().is_cpu() && packed.is_contiguous() && packed.scalar_type() == like.scalar_type() &&
              packed.dim() == 3 && packed.size(0) == tiles && packed.size(1) == Q && packed.size(2) == tile,
              what, ": packed matrix of shape ", packed.sizes(), " for ", Q, " x ", P, " (pack_columns)");
}

// W s for a k x k convolution (stride, padding) of x [B, C, H, W] (channels-last) to
// [B, Co, ho, wo] (channels-last); packed: pack_columns of the [k*k*C, Co] matrix W^T with its rows
// in the (ky, kx, c) order of a channels-last patch.
at::Tensor small_conv_forward(at::Tensor x, at::Tensor packed, int64_t Co, int64_t k, int64_t stride, int64_t pad,
                              int64_t ho, int64_t wo) {
  check_nhwc(x, "small_conv_forward: the source state");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = k * k * C, N = B * ho * wo;
  check_packed(packed, x, K, Co, "small_conv_forward");
  at::Tensor out = at::empty({B, Co, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "small_conv_forward", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    scalar_t* cols = scratch<scalar_t>(N * K, true);   // row n: the k x k patch of output position n
    for_each_patch_cell(B, ho, wo, k, stride, pad, H, W, [&](int64_t n, int64_t tap, int64_t pixel) {
      std::copy_n(src + pixel * C, C, cols + n * K + tap * C);
    });
    few_rows_mm<scalar_t>(cols, packed.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, K, Co);
  });
  return out;
}

// W^T s: the transpose of small_conv_forward, from y [B, Co, ho, wo] (channels-last) back to
// [B, C, H, W] (channels-last); packed: pack_columns of the [Co, k*k*C] matrix W.
at::Tensor small_conv_feedback(at::Tensor y, at::Tensor packed, int64_t C, int64_t k, int64_t stride, int64_t pad,
                               int64_t H, int64_t W) {
  check_nhwc(y, "small_conv_feedback: the destination state");
  const int64_t B = y.size(0), Co = y.size(1), ho = y.size(2), wo = y.size(3), K = k * k * C, N = B * ho * wo;
  check_packed(packed, y, Co, K, "small_conv_feedback");
  at::Tensor out = at::empty({B, C, H, W}, y.options().memory_format(at::MemoryFormat::ChannelsLast)).zero_();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "small_conv_feedback", [&] {
    scalar_t* cols = scratch<scalar_t>(N * K, false);
    few_rows_mm<scalar_t>(y.data_ptr<scalar_t>(), packed.data_ptr<scalar_t>(), cols, N, Co, K);
    scalar_t* dst = out.data_ptr<scalar_t>();
    // scatter each patch back, in a fixed order
    for_each_patch_cell(B, ho, wo, k, stride, pad, H, W, [&](int64_t n, int64_t tap, int64_t pixel) {
      scalar_t* d = dst + pixel * C;
      const scalar_t* r = cols + n * K + tap * C;
      for (int64_t c = 0; c < C; ++c) d[c] += r[c];
    });
  });
  return out;
}

// One schedule group. Per layer l: parts with part_layer == l (in update mode the new state goes
// into the first one marked writable, else into a new tensor), old state, ref (numel 0: none),
// bias map (numel = units per sample), given (numel 0: update mode, else the new state).
// level 0: update only; 1: also ||s_t - s_(t-1)||^2, ||s_t||^2, ||s_t - s*||^2; 2: every RAW column.
// Returns the new states; adds the raw statistics into `raw` [L, NRAW, B] (float64, zeroed by the caller;
// unused, and may be null, at level 0).
std::vector<at::Tensor> group_step(std::vector<at::Tensor> parts, std::vector<int64_t> part_layer,
                                   std::vector<int64_t> part_role, std::vector<int64_t> part_owned,
                                   std::vector<int64_t> part_late, std::vector<int64_t> part_writable,
                                   std::vector<at::Tensor> olds, std::vector<at::Tensor> refs,
                                   std::vector<at::Tensor> bias_maps, std::vector<at::Tensor> given,
                                   double alpha, double omega, int64_t level, double* raw) {
  const int64_t nl = (int64_t)olds.size();
  TORCH_CHECK(nl > 0, "group_step needs at least one layer");
  TORCH_CHECK(refs.size() == (size_t)nl && bias_maps.size() == (size_t)nl && given.size() == (size_t)nl,
              "group_step: per-layer lists differ in length");
  TORCH_CHECK(parts.size() == part_layer.size() && parts.size() == part_role.size() &&
              parts.size() == part_owned.size() && parts.size() == part_late.size() &&
              parts.size() == part_writable.size(),
              "group_step: per-part lists differ in length");
  const at::Tensor& first = olds[0];
  const int64_t batch = first.size(0);
  std::vector<at::Tensor> out(nl);
  std::vector<at::Tensor> keep;  // converted copies must outlive the pointers
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "group_step", [&] {
    std::vector<Layer<scalar_t>> layers(nl);
    // The old state fixes each layer's memory layout; anything else is brought to it (a copy,
    // e.g. the dense readout's feedback, NCHW, into a channels-last map), so states keep theirs.
    auto conform = [&](const at::Tensor& t, const at::Tensor& like) {
      if (t.sizes() != like.sizes() || t.is_same(like)) return t;
      bool match = per_sample_blocks(t);
      for (int64_t k = 1; match && k < t.dim(); ++k) match = t.size(k) == 1 || t.stride(k) == like.stride(k);
      if (match) return t;
      at::Tensor c = at::empty_like(like);
      c.copy_(t);
      keep.push_back(c);
      return c;
    };
    for (int64_t l = 0; l < nl; ++l) {
      const at::Tensor& like = olds[l];
      TORCH_CHECK(like.device().is_cpu(), "group_step runs on the CPU");
      TORCH_CHECK(like.size(0) == batch, "group_step: layer ", l, " has another batch size");
      TORCH_CHECK(per_sample_blocks(like), "group_step: the state of layer ", l, " is not dense");
      TORCH_CHECK(like.scalar_type() == first.scalar_type(), "group_step: layers differ in dtype");
      Layer<scalar_t>& L = layers[l];
      L.n = like.numel() / std::max<int64_t>(batch, 1);
      L.old = like.data_ptr<scalar_t>();
      if (refs[l].numel()) {
        at::Tensor r = conform(refs[l], like);
        same_layout(r, like, "free state", l);
        L.ref = r.data_ptr<scalar_t>();
      }
      TORCH_CHECK(bias_maps[l].numel() == L.n && bias_maps[l].is_contiguous() &&
                  bias_maps[l].scalar_type() == like.scalar_type(), "group_step: bias map of layer ", l);
      L.bias_map = bias_maps[l].data_ptr<scalar_t>();
      if (given[l].numel()) {
        at::Tensor g = conform(given[l], like);
        same_layout(g, like, "given state", l);
        L.given = g.data_ptr<scalar_t>();
        out[l] = g;
      }
    }
    for (size_t p = 0; p < parts.size(); ++p) {
      const int64_t l = part_layer[p];
      TORCH_CHECK(l >= 0 && l < nl, "group_step: part layer index out of range");
      Layer<scalar_t>& L = layers[l];
      TORCH_CHECK(L.nparts < MAX_PARTS, "group_step: too many edges into layer ", l);
      at::Tensor t = conform(parts[p], olds[l]);
      same_layout(t, olds[l], "edge output", l);
      // The new state goes into the first edge output we may overwrite: a fresh conv output or
      // our own copy, not a cached one (the drive from the clamped input).
      if (!L.out && !L.given && (part_writable[p] != 0 || !t.is_same(parts[p]))) {
        L.out = t.data_ptr<scalar_t>();
        L.out_is_part = true;
        out[l] = t;
      }
      L.part[L.nparts] = t.data_ptr<scalar_t>();
      L.role[L.nparts] = (int)part_role[p];
      L.owned[L.nparts] = part_owned[p] != 0;
      L.late[L.nparts] = part_late[p] != 0;
      ++L.nparts;
    }
    for (int64_t l = 0; l < nl; ++l) {
      TORCH_CHECK(layers[l].given || layers[l].nparts > 0, "group_step: layer ", l, " has no edge outputs");
      if (!layers[l].given && !layers[l].out) {   // no writable edge output: a fresh state
        out[l] = at::empty_like(olds[l]);
        layers[l].out = out[l].data_ptr<scalar_t>();
      }
    }
    run_group<scalar_t>(layers, batch, level, (scalar_t)alpha, (scalar_t)omega, raw);
  });
  return out;
}

// A tensor over `base`'s storage, without the dispatcher's view bookkeeping (as_strided's cost more
// than the rest of a batch-1 record); records are read, never differentiated.
at::Tensor alias(const at::Tensor& base, at::IntArrayRef sizes, at::IntArrayRef strides, int64_t offset) {
  at::Tensor t = at::detail::make_tensor<c10::TensorImpl>(c10::Storage(base.storage()), base.key_set(), base.dtype());
  t.unsafeGetTensorImpl()->set_sizes_and_strides(sizes, strides, offset);
  return t;
}

// The step's record from the groups' raw rows (`rows`: per layer, in the order of the layers, its
// [NRAW, B] float64 block).
// size, bias_norm: [L] float64; hidden: [L] int64 (0/1).
// y [B, K], onehot [B, K] or numel 0;
// cost: 0 none, 1 mse, 2 cross-entropy. units: per layer a state and int64 offsets into one sample.
// pending: the previous step's energy [3, B] (numel 0: none), from which this step's LATE sums
// are subtracted in place (Phi and F).
// arena [steps, L*S*B + 3*B + L*U*B]: stats, energy and units become views into its row `slot`. Records kept for a whole phase, each in blocks of its own, fragmented the heap
// that the convolutions allocate from (their time rose 6 % with records kept at batch 1).
// Returns stats [L, S, B], energy [3, B] (in y's dtype; without the late terms, which the next
// step supplies), units [L, U, B] (undefined when none asked); writes `sm` [4 + 4L]: [F summed over the
// batch, then per layer the batch norms (delta, scale), then per layer the batch means
// (frac_zero, frac_alpha), then the pending energy's F summed, the largest relative step
// max_l delta / (scale + 1e-12) (NaN when one is not finite), the largest of those means];
// scale is ||s - s*|| when use_nudge else ||s||.
using Rows = std::vector<const double*>;   // per layer its [NRAW, B] float64 block
constexpr int NSTATS = 11;  // len(LAYER_STATS)

// The previous step's energy [3, B]: its late terms arrive now (subtracted from Phi and F in
// place); writes its F summed over the batch into `fsum`.
static void complete_pending(const Rows& rows, int64_t batch, const at::Tensor& pending, double* fsum_out) {
  const int64_t nl = (int64_t)rows.size();
  TORCH_CHECK(pending.dim() == 2 && pending.size(0) == 3 && pending.size(1) == batch && pending.is_contiguous(),
              "finalize: pending energy");
  AT_DISPATCH_FLOATING_TYPES(pending.scalar_type(), "pending", [&] {
    scalar_t* pe = pending.data_ptr<scalar_t>();
    double fsum = 0;
    for (int64_t b = 0; b < batch; ++b) {
      double late = 0;
      for (int64_t l = 0; l < nl; ++l) late += rows[l][LATE * batch + b];
      pe[b] = (scalar_t)(pe[b] - late);
      pe[2 * batch + b] = (scalar_t)(pe[2 * batch + b] - late);
      fsum += (double)pe[2 * batch + b];
    }
    *fsum_out = fsum;
  });
}

// Per layer the batch norms (delta, scale) into sm[1 + 2l], sm[2 + 2l]; returns the largest
// relative step (NaN when any layer's is not finite).
static double relative_step(const Rows& rows, int64_t batch, bool use_nudge, double* sm) {
  const int64_t nl = (int64_t)rows.size();
  for (int64_t l = 0; l < nl; ++l) {
    double d2 = 0, s2 = 0;
    for (int64_t b = 0; b < batch; ++b) {
      d2 += rows[l][DELTA2 * batch + b];
      s2 += rows[l][(use_nudge ? NUDGE2 : NORM2) * batch + b];
    }
    sm[1 + 2 * l] = std::sqrt(d2);
    sm[2 + 2 * l] = std::sqrt(s2);
  }
  double max_rel = 0;
  for (int64_t l = 0; l < nl; ++l) {
    const double r = sm[1 + 2 * l] / (sm[2 + 2 * l] + 1e-12);
    max_rel = std::isfinite(r) ? std::max(max_rel, r) : NAN;
    if (std::isnan(max_rel)) break;
  }
  return max_rel;
}

// The LAYER_STATS rows [L, S, B] into `st` and Phi per sample into en[0, B) (float64), the
// fractions' batch means into sm (see finalize).
static void layer_stats(const Rows& rows, int64_t batch, const double* sz, const int64_t* hid, const double* bn,
                        double inv_beta, std::vector<double>& st, std::vector<double>& en, double* sm) {
  const int64_t nl = (int64_t)rows.size();
  constexpr int S = NSTATS;
  auto at_ = [&](int64_t l, int k, int64_t b) { return rows[l][k * batch + b]; };
  for (int64_t l = 0; l < nl; ++l) {
    double fz = 0, fa = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const double norm = std::sqrt(at_(l, NORM2, b)), direct = std::sqrt(at_(l, DIRECT2, b)),
                   skip = std::sqrt(at_(l, SKIP2, b)), feedback = std::sqrt(at_(l, FEEDBACK2, b)),
                   nudge = std::sqrt(at_(l, NUDGE2, b));
      double* out = st.data() + l * S * batch + b;
      out[0 * batch] = std::sqrt(at_(l, DELTA2, b)) / (norm + 1e-12);
      out[1 * batch] = at_(l, TOTAL, b) / sz[l];
      out[2 * batch] = hid[l] ? 1.0 - at_(l, NONZERO, b) / sz[l] : 0.0;
      out[3 * batch] = hid[l] ? at_(l, AT_ALPHA, b) / sz[l] : 0.0;   // y is unboxed: no "at alpha"
      out[4 * batch] = direct;
      out[5 * batch] = skip;
      out[6 * batch] = feedback;
      out[7 * batch] = bn[l];
      out[8 * batch] = skip / (direct + skip + feedback + 1e-12);
      out[9 * batch] = nudge;
      out[10 * batch] = nudge * inv_beta;
      fz += out[2 * batch];
      fa += out[3 * batch];
      en[b] += 0.5 * at_(l, NORM2, b) - at_(l, BIAS_DOT, b) - at_(l, EDGE_ENERGY, b);
    }
    sm[1 + 2 * nl + 2 * l] = fz / batch;
    sm[2 + 2 * nl + 2 * l] = fa / batch;
    sm[3 + 4 * nl] = std::max({sm[3 + 4 * nl], fz / batch, fa / batch});
  }
}

// The cost per sample into en[B, 2B): 0 none, 1 mse, 2 cross-entropy.
template <typename scalar_t>
static void sample_costs(const at::Tensor& y, const at::Tensor& onehot, int64_t cost, int64_t batch,
                         std::vector<double>& en) {
  TORCH_CHECK(y.dim() == 2 && onehot.sizes() == y.sizes() && y.is_contiguous() && onehot.is_contiguous() &&
              onehot.scalar_type() == y.scalar_type(), "finalize: y and its one-hot target");
  const scalar_t* yp = y.data_ptr<scalar_t>();
  const scalar_t* tp = onehot.data_ptr<scalar_t>();
  const int64_t k = y.size(1);
  for (int64_t b = 0; b < batch; ++b) {
    double c = 0;
    if (cost == 1) {
      for (int64_t j = 0; j < k; ++j) { const double e = (double)yp[b * k + j] - tp[b * k + j]; c += 0.5 * e * e; }
    } else {
      double mx = -INFINITY, se = 0, ty = 0;
      for (int64_t j = 0; j < k; ++j) mx = std::max(mx, (double)yp[b * k + j]);
      for (int64_t j = 0; j < k; ++j) {
        se += std::exp((double)yp[b * k + j] - mx);
        ty += (double)tp[b * k + j] * yp[b * k + j];
      }
      c = mx + std::log(se) - ty;
    }
    en[batch + b] = c;
  }
}

// The chosen units of every layer into `up` [L, U, B].
template <typename scalar_t>
static void copy_units(const std::vector<at::Tensor>& states, const std::vector<at::Tensor>& unit_offsets,
                       int64_t nl, int64_t batch, c10::ScalarType dtype, scalar_t* up) {
  const int64_t nu = unit_offsets[0].numel();
  for (int64_t l = 0; l < nl; ++l) {
    const at::Tensor& s = states[l];
    TORCH_CHECK(s.scalar_type() == dtype && per_sample_blocks(s), "finalize: state ", l);
    const int64_t n = s.numel() / std::max<int64_t>(batch, 1);
    const int64_t* off = unit_offsets[l].data_ptr<int64_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    for (int64_t u = 0; u < nu; ++u)
      for (int64_t b = 0; b < batch; ++b) up[(l * nu + u) * batch + b] = sp[b * n + off[u]];
  }
}

// The step's record from the groups' raw rows (`rows`: per layer, in the order of the layers, its
// [NRAW, B] float64 block).
// size, bias_norm: [L] float64; hidden: [L] int64 (0/1).
// y [B, K], onehot [B, K] or numel 0;
// cost: 0 none, 1 mse, 2 cross-entropy. units: per layer a state and int64 offsets into one sample.
// pending: the previous step's energy [3, B] (numel 0: none), from which this step's LATE sums
// are subtracted in place (Phi and F).
// arena [steps, L*S*B + 3*B + L*U*B]: stats, energy and units become views into its row `slot`. Records kept for a whole phase, each in blocks of its own, fragmented the heap
// that the convolutions allocate from (their time rose 6 % with records kept at batch 1).
// Returns stats [L, S, B], energy [3, B] (in y's dtype; without the late terms, which the next
// step supplies), units [L, U, B] (undefined when none asked); writes `sm` [4 + 4L]: [F summed over the
// batch, then per layer the batch norms (delta, scale), then per layer the batch means
// (frac_zero, frac_alpha), then the pending energy's F summed, the largest relative step
// max_l delta / (scale + 1e-12) (NaN when one is not finite), the largest of those means];
// scale is ||s - s*|| when use_nudge else ||s||.
std::vector<at::Tensor> finalize(const Rows& rows, int64_t batch, const at::Tensor& size,
                                 const at::Tensor& hidden, const at::Tensor& bias_norm, double inv_beta,
                                 const at::Tensor& y, const at::Tensor& onehot, int64_t cost, double beta,
                                 const std::vector<at::Tensor>& states, const std::vector<at::Tensor>& unit_offsets,
                                 bool use_nudge, bool stats_wanted, const at::Tensor& pending, const at::Tensor& arena,
                                 int64_t slot, double* sm) {
  const int64_t nl = (int64_t)rows.size();
  constexpr int S = NSTATS;
  std::fill_n(sm, 4 + 4 * nl, 0.0);
  if (pending.numel()) complete_pending(rows, batch, pending, &sm[1 + 4 * nl]);
  sm[2 + 4 * nl] = relative_step(rows, batch, use_nudge, sm);
  if (!stats_wanted) return {at::Tensor(), at::Tensor(), at::Tensor()};

  // Computed in float64, written once in the state's dtype.
  std::vector<double> st(nl * S * batch), en(3 * batch, 0.0);
  layer_stats(rows, batch, size.data_ptr<double>(), hidden.data_ptr<int64_t>(), bias_norm.data_ptr<double>(),
              inv_beta, st, en, sm);
  at::Tensor stats, energy, units;   // views into row `slot` of the caller's block [steps, record size]
  const int64_t nu = unit_offsets.empty() ? 0 : unit_offsets[0].numel();
  const int64_t ns = nl * S * batch, ne = 3 * batch, nun = nl * nu * batch;
  TORCH_CHECK(arena.dim() == 2 && arena.is_contiguous() && arena.scalar_type() == y.scalar_type() &&
              arena.size(1) == ns + ne + nun && slot >= 0 && slot < arena.size(0),
              "finalize: record block of shape ", arena.sizes(), " for ", ns + ne + nun, " numbers, row ", slot);
  const int64_t at0 = arena.storage_offset() + slot * arena.size(1);
  stats = alias(arena, {nl, S, batch}, {S * batch, batch, 1}, at0);
  energy = alias(arena, {3, batch}, {batch, 1}, at0 + ns);
  if (nu) units = alias(arena, {nl, nu, batch}, {nu * batch, batch, 1}, at0 + ns + ne);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "finalize", [&] {
    if (cost != 0) sample_costs<scalar_t>(y, onehot, cost, batch, en);
    double fsum = 0;
    for (int64_t b = 0; b < batch; ++b) {
      en[2 * batch + b] = en[b] + beta * en[batch + b];
      fsum += en[2 * batch + b];
    }
    sm[0] = fsum;
    scalar_t* stp = stats.data_ptr<scalar_t>();
    for (size_t i = 0; i < st.size(); ++i) stp[i] = (scalar_t)st[i];
    scalar_t* enp = energy.data_ptr<scalar_t>();
    for (int64_t i = 0; i < 3 * batch; ++i) enp[i] = (scalar_t)en[i];
    if (nu) copy_units<scalar_t>(states, unit_offsets, nl, batch, y.scalar_type(), units.data_ptr<scalar_t>());
  });
  return {stats, energy, units};
}

// ---------------------------------------------------------------------------
// Stepper: a whole relaxation step in one call, the edges' products included. It holds what a run
// does not change (edges, the groups' plans, the record's constants) and the states. At batch 1
// on a small network the Python that assembled each group's call (about 20 us a step, 40 with
// records) cost as much as a third of the arithmetic.

class Stepper {
 public:
  // The function of the states that gives one edge output (the Python side's _FusedStep._part_fn).
  enum Kind { FIXED = 0, CONV = 1, CONV_T = 2, SMALL = 3, SMALL_T = 4, DENSE = 5, DENSE_T = 6 };
  struct Fn {
    int64_t kind, state;
    at::Tensor w;                  // weight (detached); the fixed drive; or the small kernels' packed matrix
    int64_t k, stride, pad, a, b;  // small kernels: the output's (ho, wo) forward, (H, W) feedback
    std::vector<int64_t> extra;    // conv_transpose2d's output padding, the dense feedback's shape, or the
                                 // small kernels' output channels (forward) or source channels (feedback)
  };
  struct Plan {
    std::vector<int64_t> layers;             // state index per layer of the kernel call
    std::vector<std::vector<int64_t>> fns;   // per layer: its edge functions (y: the output's own)
    std::vector<int64_t> p_layer, p_role, p_owned, p_late, p_writable;
    std::vector<at::Tensor> refs, bmaps;
  };

  explicit Stepper(std::vector<at::Tensor> states) : states_(std::move(states)) {}

  int64_t add_fn(int64_t kind, int64_t state, at::Tensor w, int64_t k, int64_t stride, int64_t pad, int64_t a,
                 int64_t b, std::vector<int64_t> extra) {
    TORCH_CHECK(kind >= FIXED && kind <= DENSE_T && (kind == FIXED || (state >= 0 && state < (int64_t)states_.size())),
                "Stepper.add_fn: kind ", kind, ", state ", state);
    TORCH_CHECK((kind != SMALL && kind != SMALL_T) || extra.size() == 1,
                "Stepper.add_fn: the small kernels take their channel count in `extra`");
    fns_.push_back({kind, state, w.detach(), k, stride, pad, a, b, std::move(extra)});
    return (int64_t)fns_.size() - 1;
  }

  // One schedule group: `bare` for level 0, `recorded` for levels 1 and 2 (which also run y through
  // the kernel, for its statistics). y_fns: the output layer's edge functions when it is in this group.
  void add_group(Plan bare, Plan recorded, std::vector<int64_t> y_fns) {
    groups_.push_back({std::move(bare), std::move(recorded), std::move(y_fns)});
  }

  void set_output(int64_t y, at::Tensor bias, bool first_shared, double beta, double omega, int64_t cost,
                  at::Tensor onehot, double alpha) {
    y_ = y; y_bias_ = bias.detach(); y_first_shared_ = first_shared; beta_ = beta; omega_ = omega;
    cost_ = cost; onehot_ = onehot; alpha_ = alpha;
  }

  void set_record(std::vector<int64_t> row_of, at::Tensor size, at::Tensor hidden, at::Tensor bias_norm, double inv_beta,
                  std::vector<at::Tensor> unit_offsets, bool use_nudge, int64_t record_numbers, int64_t block_steps,
                  int64_t steps) {
    row_of_ = row_of; size_ = size; hidden_ = hidden; bias_norm_ = bias_norm; inv_beta_ = inv_beta;
    unit_offsets_ = std::move(unit_offsets); use_nudge_ = use_nudge; record_numbers_ = record_numbers;
    block_steps_ = std::max<int64_t>(1, block_steps);
    steps_ = steps;
  }

  std::vector<at::Tensor> states() const { return states_; }

  // One step. level 0: None; 1: the largest relative step; 2: (stats, energy, units or None, F summed,
  // largest relative step, largest saturation fraction, [frac_zero, frac_alpha] batch means per
  // layer or None when the largest is under `fractions_from`, the pending energy's F summed or None).
  // `pending`: the previous record's energy (numel 0: none), completed in place with the late terms
  // this step supplies.
  py::object step(int64_t level, int64_t t, at::Tensor pending, double fractions_from) {
    std::vector<at::Tensor> rec;
    {
      py::gil_scoped_release nogil;   // a server thread serves pages meanwhile
      at::NoGradGuard no_grad;
      // raw rows of every layer, in the order the groups run them (row_of_ maps a layer to its row)
      const int64_t batch = states_[0].size(0), nl = (int64_t)states_.size();
      if (level > 0) raw_.assign(nl * NRAW * batch, 0.0);   // level 0 records nothing
      int64_t raw_at = 0;
      for (Group& g : groups_) {
        const Plan& plan = level > 0 ? g.recorded : g.bare;
        std::vector<at::Tensor> y_parts;
        at::Tensor y_new;
        if (!g.y_fns.empty()) {   // as dynamics._pre_activation and _update do it
          for (int64_t f : g.y_fns) y_parts.push_back(eval(f));
          at::Tensor pre = (level > 0 || y_first_shared_) ? y_parts[0] + y_bias_ : y_parts[0].add_(y_bias_);
          for (size_t i = 1; i < y_parts.size(); ++i) pre.add_(y_parts[i]);
          y_new = update_output(pre, states_[y_]);
        }
        std::vector<at::Tensor> parts, olds, given;
        for (size_t i = 0; i < plan.layers.size(); ++i) {
          if (plan.layers[i] == y_) {
            parts.insert(parts.end(), y_parts.begin(), y_parts.end());
            given.push_back(y_new);
          } else {
            for (int64_t f : plan.fns[i]) parts.push_back(eval(f));
            given.push_back(empty_);
          }
          olds.push_back(states_[plan.layers[i]]);
        }
        if (!olds.empty()) {
          std::vector<at::Tensor> res = group_step(parts, plan.p_layer, plan.p_role, plan.p_owned, plan.p_late,
                                                   plan.p_writable, olds, plan.refs, plan.bmaps, given, alpha_,
                                                   omega_, level,
                                                   level > 0 ? raw_.data() + raw_at * NRAW * batch : nullptr);
          for (size_t i = 0; i < plan.layers.size(); ++i) states_[plan.layers[i]] = res[i];
          raw_at += (int64_t)plan.layers.size();
        }
        if (y_new.defined() && level == 0) states_[y_] = y_new;
      }
      if (level > 0) {
        at::Tensor arena = empty_;
        int64_t slot = 0;
        if (level == 2) {
          if (slot_ == rows_) {   // a block, or what is left of the run if less
            rows_ = std::max<int64_t>(1, std::min<int64_t>(block_steps_, steps_ - t + 1));
            arena_ = at::empty({rows_, record_numbers_}, states_[y_].options());
            slot_ = 0;
          }
          arena = arena_;
          slot = slot_++;
        }
        TORCH_CHECK(raw_at == nl, "Stepper: the recorded groups cover ", raw_at, " of ", nl, " layers");
        std::vector<const double*> rows(nl);
        for (int64_t l = 0; l < nl; ++l) rows[l] = raw_.data() + row_of_[l] * NRAW * batch;
        static const std::vector<at::Tensor> none;
        const bool units = level == 2 && !unit_offsets_.empty();
        summary_.resize(4 + 4 * nl);
        rec = finalize(rows, batch, size_, hidden_, bias_norm_, inv_beta_, states_[y_], onehot_, cost_, beta_,
                       units ? states_ : none, units ? unit_offsets_ : none, use_nudge_, level == 2,
                       level == 2 ? pending : empty_, arena, slot, summary_.data());
      }
    }
    if (level == 0) return py::none();
    const int64_t nl = (int64_t)row_of_.size();
    const double* sm = summary_.data();
    if (level == 1) return py::float_(sm[2 + 4 * nl]);
    py::object fractions = py::none();   // mostly not wanted: a list a step is work for the GC
    if (sm[3 + 4 * nl] >= fractions_from) {
      py::list means(2 * nl);
      for (int64_t i = 0; i < 2 * nl; ++i) means[i] = py::float_(sm[1 + 2 * nl + i]);
      fractions = means;
    }
    return py::make_tuple(rec[0], rec[1], unit_offsets_.empty() ? py::object(py::none()) : py::cast(rec[2]),
                          sm[0], sm[2 + 4 * nl], sm[3 + 4 * nl], fractions,
                          pending.numel() ? py::object(py::float_(sm[1 + 4 * nl])) : py::object(py::none()));
  }

 private:
  struct Group { Plan bare, recorded; std::vector<int64_t> y_fns; };

  at::Tensor eval(int64_t id) {
    const Fn& f = fns_[id];
    switch (f.kind) {
      case FIXED: return f.w;
      case CONV: return at::conv2d(states_[f.state], f.w, {}, {f.stride, f.stride}, {f.pad, f.pad});
      case CONV_T:
        return at::conv_transpose2d(states_[f.state], f.w, {}, {f.stride, f.stride}, {f.pad, f.pad}, f.extra);
      case SMALL: return small_conv_forward(states_[f.state], f.w, f.extra[0], f.k, f.stride, f.pad, f.a, f.b);
      case SMALL_T: return small_conv_feedback(states_[f.state], f.w, f.extra[0], f.k, f.stride, f.pad, f.a, f.b);
      // dense readout: k = 1 when the source map is channels-last and f.w's columns are in its
      // (h, w, c) memory order, so neither direction copies the map (flatten(1) would)
      case DENSE: {
        const at::Tensor& x = states_[f.state];
        return at::matmul(f.k ? x.permute({0, 2, 3, 1}).reshape({x.size(0), -1}) : x.flatten(1), f.w.t());
      }
      default: {
        at::Tensor back = at::matmul(states_[f.state], f.w);
        const std::vector<int64_t>& e = f.extra;   // the source's shape [B, C, H, W] (or [B, n])
        return f.k ? back.view({e[0], e[2], e[3], e[1]}).permute({0, 3, 1, 2}) : back.view(e);
      }
    }
  }

  // dynamics._update for the output layer: y is unboxed and, in a nudged phase, pulled to the target.
  at::Tensor update_output(const at::Tensor& pre, const at::Tensor& old) const {
    at::Tensor y = pre;
    if (beta_ != 0.0 && cost_ != 0) {
      if (cost_ == 1) y = (pre + onehot_ * beta_) / (1.0 + beta_);
      else y = pre - (at::softmax(old, 1) - onehot_) * beta_;
    }
    return omega_ == 1.0 ? y : old + (y - old) * omega_;
  }

  std::vector<at::Tensor> states_;
  std::vector<Fn> fns_;
  std::vector<Group> groups_;
  at::Tensor empty_ = at::empty({0});
  int64_t y_ = 0, cost_ = 0;
  at::Tensor y_bias_, onehot_;
  bool y_first_shared_ = false;
  double beta_ = 0, omega_ = 1, alpha_ = 1;
  std::vector<int64_t> row_of_;
  at::Tensor size_, hidden_, bias_norm_;
  std::vector<double> raw_, summary_;
  double inv_beta_ = 0;
  std::vector<at::Tensor> unit_offsets_;
  bool use_nudge_ = false;
  int64_t record_numbers_ = 0, block_steps_ = 64, steps_ = 0, rows_ = 0, slot_ = 0;
  at::Tensor arena_;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("small_conv_forward", &small_conv_forward, "a convolution with few output positions");
  m.def("small_conv_feedback", &small_conv_feedback, "its transpose");
  m.def("pack_columns", &pack_columns, "a matrix packed for the small convolutions' product");
  // Stepper::Kind by name, in order: dynamics._FusedStep's constants are checked against it (tests)
  m.attr("STEPPER_KINDS") = py::make_tuple("FIXED", "CONV", "CONV_T", "SMALL", "SMALL_T", "DENSE", "DENSE_T");
  py::class_<Stepper::Plan>(m, "StepPlan", py::module_local())
      .def(py::init([](std::vector<int64_t> layers, std::vector<std::vector<int64_t>> fns,
                       std::vector<int64_t> p_layer, std::vector<int64_t> p_role, std::vector<int64_t> p_owned,
                       std::vector<int64_t> p_late, std::vector<int64_t> p_writable, std::vector<at::Tensor> refs,
                       std::vector<at::Tensor> bmaps) {
        return Stepper::Plan{layers, fns, p_layer, p_role, p_owned, p_late, p_writable, refs, bmaps};
      }));
  py::class_<Stepper>(m, "Stepper", py::module_local(), "a relaxation step in one call (dynamics._FusedStep builds it)")
      .def(py::init<std::vector<at::Tensor>>())
      .def("add_fn", &Stepper::add_fn)
      .def("add_group", &Stepper::add_group)
      .def("set_output", &Stepper::set_output)
      .def("set_record", &Stepper::set_record)
      .def("states", &Stepper::states)
      .def("step", &Stepper::step);
}
