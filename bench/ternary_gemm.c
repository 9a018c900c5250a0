/* A ternary GEMM for AVX2 CPUs without VNNI, for bench/onnx_matmul_probe.py: C = (A - 128) @ B, exact in int32,
 * A uint8 (M, K) activation codes with zero point 128, B ternary int8 (K, N), as ONNX MatMulInteger computes it;
 * and the ONNX export's whole ternary linear around it (ternary_linear), for bench/ternary_linear_probe.py.
 *
 * Why it can beat MLAS's uint8 x int8 kernel there: vpmaddubsw multiplies 32 byte pairs into 16 int16 sums, and
 * MLAS must widen each of them to int32 at once (a second multiply, vpmaddwd), since 255 * 127 * 2 overflows
 * int16. With weights in {-1, 0, 1} a pair sums to at most 510 in magnitude, so 64 of them fit in int16: the
 * kernel adds them with vpaddw and widens once per 128 values of K, one multiply per 32 products instead of two.
 *
 * B is packed per 32 output columns and pair of rows: 64 bytes (b[2p][n], b[2p+1][n]) for n in the block, so one
 * vpmaddubsw of a broadcast activation pair gives 16 columns' partial sums. */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define MR 4       /* rows of A per micro-tile */
#define NR 32      /* columns per packed block */
#define PAIRS 64   /* K pairs summed in int16 before widening: 64 * 510 < 32768 */
#define MBLOCK 256 /* rows of A kept in cache while one block of B is reused */

/* out: (N / NR) blocks of ((K + 1) / 2) * 64 bytes; N a multiple of NR; an odd K gets a zero last row */
void pack_ternary(const int8_t *b, int K, int N, int8_t *out) {
  int kp = (K + 1) / 2;
  for (int j = 0; j < N / NR; j++)
    for (int p = 0; p < kp; p++)
      for (int n = 0; n < NR; n++) {
        int8_t *o = out + ((int64_t)j * kp + p) * 2 * NR + 2 * n;
        int k = 2 * p, c = j * NR + n;
        o[0] = b[(int64_t)k * N + c];
        o[1] = k + 1 < K ? b[(int64_t)(k + 1) * N + c] : 0;
      }
}

/* acc (MR x NR int32) = A rows [0, MR) (lda bytes apart, K padded to 2 * kp) @ one packed block */
static void micro_tile(const uint8_t *a, int64_t lda, const int8_t *bp, int kp, int32_t *acc) {
  __m256i wide[MR][4];
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) wide[r][q] = _mm256_setzero_si256();
  for (int p0 = 0; p0 < kp; p0 += PAIRS) {
    int p1 = p0 + PAIRS < kp ? p0 + PAIRS : kp;
    __m256i sum[MR][2];
    for (int r = 0; r < MR; r++) sum[r][0] = sum[r][1] = _mm256_setzero_si256();
    for (int p = p0; p < p1; p++) {
      __m256i b0 = _mm256_load_si256((const __m256i *)(bp + (int64_t)p * 2 * NR));
      __m256i b1 = _mm256_load_si256((const __m256i *)(bp + (int64_t)p * 2 * NR + 32));
      for (int r = 0; r < MR; r++) {
        int16_t pair; /* a[2p], a[2p + 1] in the byte order of B's pairs (memcpy: no unaligned access) */
        memcpy(&pair, a + r * lda + 2 * p, 2);
        __m256i x = _mm256_set1_epi16(pair);
        sum[r][0] = _mm256_add_epi16(sum[r][0], _mm256_maddubs_epi16(x, b0));
        sum[r][1] = _mm256_add_epi16(sum[r][1], _mm256_maddubs_epi16(x, b1));
      }
    }
    for (int r = 0; r < MR; r++)
      for (int h = 0; h < 2; h++) {
        __m128i lo = _mm256_castsi256_si128(sum[r][h]), hi = _mm256_extracti128_si256(sum[r][h], 1);
        wide[r][2 * h] = _mm256_add_epi32(wide[r][2 * h], _mm256_cvtepi16_epi32(lo));
        wide[r][2 * h + 1] = _mm256_add_epi32(wide[r][2 * h + 1], _mm256_cvtepi16_epi32(hi));
      }
  }
  for (int r = 0; r < MR; r++)
    for (int q = 0; q < 4; q++) _mm256_storeu_si256((__m256i *)(acc + r * NR + q * 8), wide[r][q]);
}

/* C (M, N) int32 for the column blocks [j0, j1): a thread's share. M a multiple of MR, A's rows 2 * kp bytes
 * (zero-padded), colsum[n] = sum_k B[k][n] (the zero point's correction: (a - 128) b = a b - 128 b).
 * With y given, writes y = C * (row_scale[m] * col_scale[n]) instead (col_scale[0] for every n when
 * col_stride is 0), as ONNX Runtime's MatMulIntegerToFloat rescales its int32 products. */
static void gemm_blocks(const uint8_t *a, int M, int kp, const int8_t *bp, int N, const int32_t *colsum, int32_t *c,
                        float *y, const float *row_scale, const float *col_scale, int col_stride, int j0, int j1) {
  int32_t acc[MR * NR];
  for (int m0 = 0; m0 < M; m0 += MBLOCK) {
    int m1 = m0 + MBLOCK < M ? m0 + MBLOCK : M;
    for (int j = j0; j < j1; j++) {
      const int8_t *bj = bp + (int64_t)j * kp * 2 * NR;
      for (int m = m0; m < m1; m += MR) {
        micro_tile(a + (int64_t)m * 2 * kp, 2 * kp, bj, kp, acc);
        for (int r = 0; r < MR; r++)
          for (int n = 0; n < NR; n++) {
            int col = j * NR + n;
            int32_t v = acc[r * NR + n] - 128 * colsum[col];
            if (y)
              y[(int64_t)(m + r) * N + col] = (float)v * (row_scale[m + r] * col_scale[col * col_stride]);
            else
              c[(int64_t)(m + r) * N + col] = v;
          }
      }
    }
  }
}

void ternary_gemm(const uint8_t *a, int M, int kp, const int8_t *bp, int N, const int32_t *colsum, int32_t *c,
                  int j0, int j1) {
  gemm_blocks(a, M, kp, bp, N, colsum, c, 0, 0, 0, 0, j0, j1);
}

/* The per-token activation codes of the ONNX export's ternary linear (bitembed_jax/export/onnx_ops.py,
 * ternary_matmul) for rows [m0, m1) of x (M, K): with the per-linear norm's weight w, r = sqrt(mean(x^2) +
 * norm_eps) and the codes are those of x * w; amax = max |x w|, step = max(amax / r, eps) / qb, codes =
 * round_half_even(x w / (step r)) + 128 (QuantizeLinear's division, rounding and zero point); without w, r = 1
 * and x is used as it is. Writes the codes into a (rows of 2 * kp bytes, K's padding already zero) and step. */
static void quantize_rows(const float *x, int m0, int m1, int K, const float *w, float norm_eps, float eps, int qb,
                          uint8_t *a, int kp, float *step) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int m = m0; m < m1; m++) {
    const float *xm = x + (int64_t)m * K;
    __m256 vmax = _mm256_setzero_ps(), vss = _mm256_setzero_ps();
    float smax = 0.0f, sss = 0.0f;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
      __m256 v = _mm256_loadu_ps(xm + k);
      if (w) { /* r is needed only with a norm */
        vss = _mm256_add_ps(vss, _mm256_mul_ps(v, v));
        v = _mm256_mul_ps(v, _mm256_loadu_ps(w + k));
      }
      vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
    }
    for (; k < K; k++) {
      float v = xm[k] * (w ? w[k] : 1.0f);
      sss += xm[k] * xm[k];
      smax = fabsf(v) > smax ? fabsf(v) : smax;
    }
    float lanes[8], ssl[8];
    _mm256_storeu_ps(lanes, vmax);
    _mm256_storeu_ps(ssl, vss);
    for (int i = 0; i < 8; i++) {
      smax = lanes[i] > smax ? lanes[i] : smax;
      sss += ssl[i];
    }
    float r = w ? sqrtf(sss / (float)K + norm_eps) : 1.0f;
    float amax = w ? smax / r : smax;
    float s = (amax > eps ? amax : eps) / (float)qb;
    float xs = w ? s * r : s;
    step[m] = s;
    uint8_t *am = a + (int64_t)m * 2 * kp;
    const __m256 vxs = _mm256_set1_ps(xs);
    const __m256i zp = _mm256_set1_epi32(128);
    for (k = 0; k + 8 <= K; k += 8) {
      __m256 v = _mm256_loadu_ps(xm + k);
      if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + k));
      __m256 q = _mm256_round_ps(_mm256_div_ps(v, vxs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(q), zp); /* within [1, 255]: |q| <= qb */
      __m128i i16 = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
      _mm_storel_epi64((__m128i *)(am + k), _mm_packus_epi16(i16, i16));
    }
    for (; k < K; k++) am[k] = (uint8_t)((int)nearbyintf(xm[k] * (w ? w[k] : 1.0f) / xs) + 128);
  }
}

typedef struct {
  const float *x, *w, *col_scale;
  float norm_eps, eps, *step, *y;
  const uint8_t *a;
  uint8_t *a_out;
  const int8_t *bp;
  const int32_t *colsum;
  int32_t *c;
  int M, K, kp, N, qb, col_stride, lo, hi;
} share_t;

static void *gemm_share(void *arg) {
  share_t *s = arg;
  gemm_blocks(s->a, s->M, s->kp, s->bp, s->N, s->colsum, s->c, s->y, s->step, s->col_scale, s->col_stride, s->lo,
              s->hi);
  return 0;
}

static void *quantize_share(void *arg) {
  share_t *s = arg;
  quantize_rows(s->x, s->lo, s->hi, s->K, s->w, s->norm_eps, s->eps, s->qb, s->a_out, s->kp, s->step);
  return 0;
}

/* fn on `threads` threads (at most 64), share t getting [count * t / threads, count * (t + 1) / threads); the
 * caller runs the first. Starting threads costs a few microseconds per call: an operator would use its
 * runtime's thread pool instead. */
static void parallel(void *(*fn)(void *), share_t proto, int count, int threads) {
  share_t shares[64];
  pthread_t ids[64];
  threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
  for (int t = 0; t < threads; t++) {
    shares[t] = proto;
    shares[t].lo = (int)((int64_t)count * t / threads);
    shares[t].hi = (int)((int64_t)count * (t + 1) / threads);
    if (t > 0) pthread_create(&ids[t], 0, fn, &shares[t]);
  }
  fn(&shares[0]);
  for (int t = 1; t < threads; t++) pthread_join(ids[t], 0);
}

/* ternary_gemm over all column blocks, shared among `threads` threads */
void ternary_gemm_threads(const uint8_t *a, int M, int kp, const int8_t *bp, int N, const int32_t *colsum,
                          int32_t *c, int threads) {
  share_t s = {.a = a, .bp = bp, .colsum = colsum, .c = c, .M = M, .kp = kp, .N = N};
  parallel(gemm_share, s, N / NR, threads);
}

/* The export's whole ternary linear on tokens x (M, K) float32 -> y (M, N) float32: per-token codes
 * (quantize_rows; w may be 0 for a linear without its own norm), the exact integer product, rescaled by
 * step[m] * gamma (gamma[n] when per_col, else gamma[0]). a: scratch of rows_padded x 2 * kp zero bytes
 * (rows_padded = M rounded up to MR), step: scratch of rows_padded floats. */
void ternary_linear(const float *x, int M, int K, const float *w, float norm_eps, float eps, int qb,
                    const int8_t *bp, int N, const int32_t *colsum, const float *gamma, int per_col, uint8_t *a,
                    float *step, float *y_padded, int threads) {
  int kp = (K + 1) / 2, rows = (M + MR - 1) / MR * MR;
  share_t s = {.x = x, .w = w, .norm_eps = norm_eps, .eps = eps, .qb = qb, .a_out = a, .a = a, .kp = kp, .K = K,
               .step = step, .bp = bp, .N = N, .colsum = colsum, .y = y_padded, .col_scale = gamma,
               .col_stride = per_col ? 1 : 0, .M = rows};
  parallel(quantize_share, s, M, threads);
  for (int m = M; m < rows; m++) step[m] = 0.0f;
  parallel(gemm_share, s, N / NR, threads);
}
