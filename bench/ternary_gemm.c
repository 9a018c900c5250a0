/* A ternary GEMM for AVX2 CPUs without VNNI, for bench/onnx_matmul_probe.py: C = (A - 128) @ B, exact in int32,
 * A uint8 (M, K) activation codes with zero point 128, B ternary int8 (K, N), as ONNX MatMulInteger computes it.
 *
 * Why it can beat MLAS's uint8 x int8 kernel there: vpmaddubsw multiplies 32 byte pairs into 16 int16 sums, and
 * MLAS must widen each of them to int32 at once (a second multiply, vpmaddwd), since 255 * 127 * 2 overflows
 * int16. With weights in {-1, 0, 1} a pair sums to at most 510 in magnitude, so 64 of them fit in int16: the
 * kernel adds them with vpaddw and widens once per 128 values of K, one multiply per 32 products instead of two.
 *
 * B is packed per 32 output columns and pair of rows: 64 bytes (b[2p][n], b[2p+1][n]) for n in the block, so one
 * vpmaddubsw of a broadcast activation pair gives 16 columns' partial sums. */
#include <immintrin.h>
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
 * (zero-padded), colsum[n] = sum_k B[k][n] (the zero point's correction: (a - 128) b = a b - 128 b). */
void ternary_gemm(const uint8_t *a, int M, int kp, const int8_t *bp, int N, const int32_t *colsum, int32_t *c,
                  int j0, int j1) {
  int32_t acc[MR * NR];
  for (int m0 = 0; m0 < M; m0 += MBLOCK) {
    int m1 = m0 + MBLOCK < M ? m0 + MBLOCK : M;
    for (int j = j0; j < j1; j++) {
      const int8_t *bj = bp + (int64_t)j * kp * 2 * NR;
      for (int m = m0; m < m1; m += MR) {
        micro_tile(a + (int64_t)m * 2 * kp, 2 * kp, bj, kp, acc);
        for (int r = 0; r < MR; r++)
          for (int n = 0; n < NR; n++)
            c[(int64_t)(m + r) * N + j * NR + n] = acc[r * NR + n] - 128 * colsum[j * NR + n];
      }
    }
  }
}

typedef struct {
  const uint8_t *a;
  const int8_t *bp;
  const int32_t *colsum;
  int32_t *c;
  int M, kp, N, j0, j1;
} share_t;

static void *run_share(void *arg) {
  share_t *s = arg;
  ternary_gemm(s->a, s->M, s->kp, s->bp, s->N, s->colsum, s->c, s->j0, s->j1);
  return 0;
}

/* ternary_gemm on `threads` threads (at most 64), each with an equal share of the column blocks; the caller
 * computes the first share. Thread start costs a few microseconds per call: an operator would use its
 * runtime's thread pool instead. */
void ternary_gemm_threads(const uint8_t *a, int M, int kp, const int8_t *bp, int N, const int32_t *colsum,
                          int32_t *c, int threads) {
  share_t shares[64];
  pthread_t ids[64];
  int blocks = N / NR;
  threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
  for (int t = 0; t < threads; t++) {
    shares[t] = (share_t){a, bp, colsum, c, M, kp, N, blocks * t / threads, blocks * (t + 1) / threads};
    if (t > 0) pthread_create(&ids[t], 0, run_share, &shares[t]);
  }
  run_share(&shares[0]);
  for (int t = 1; t < threads; t++) pthread_join(ids[t], 0);
}
