/* The zstd:chunked chunker's rolling sum in C (see rollsum.py, which loads this with ctypes and has a
 * numpy fallback computing the same cuts). Built by scripts/setup:
 *     cc -O3 -shared -fPIC -o _rollsum.lib _rollsum.c
 *
 * The bup-style sum over a 64-byte window: s1 is the window's byte sum and s2 the weighted sum
 * sum_{k=0..63} (k+1) * byte[p-k], both modulo 2^32, so that adding byte x and dropping byte d gives
 * s1 += x - d and s2 += s1 - 64 * d. A chunk ends after position p when the low 16 bits of s2 equal
 * `residue` (the reference's own sum carries a constant offset, which the caller folds into `residue`).
 *
 * The sum at p depends only on the 64 bytes ending at p, so a block can be cut into independent lanes,
 * each starting from the window before it. One lane runs at about 1.5 GB/s (each byte's sums wait for the
 * previous byte's); with AVX2, 16 lanes run side by side in 16-bit arithmetic (only the low 16 bits of s2
 * decide a cut, and they depend only on the low 16 bits of s1) several times faster. The cuts, and so
 * the chunks, are the same whichever way they were found.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define WINDOW 64

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_AVX2_PATH 1
#include <immintrin.h>
#endif

/* Positions p in [p, end) of data (p >= WINDOW) after which to cut, continuing sums s1/s2. */
static size_t scalar_cuts(const uint8_t *data, size_t p, size_t end, uint32_t *s1p, uint32_t *s2p,
                          uint16_t residue, uint32_t *cuts, size_t found) {
    uint32_t s1 = *s1p, s2 = *s2p;
    for (; p < end; p++) {
        uint32_t drop = data[p - WINDOW];
        s1 += (uint32_t)data[p] - drop;
        s2 += s1 - WINDOW * drop;
        if ((uint16_t)s2 == residue) cuts[found++] = (uint32_t)p;
    }
    *s1p = s1;
    *s2p = s2;
    return found;
}

/* The sums of the window data[q-64 .. q-1], as the rolling update leaves them before position q. */
static void window_sums(const uint8_t *data, size_t q, uint32_t *s1p, uint32_t *s2p) {
    uint32_t s1 = 0, s2 = 0;
    for (size_t k = q - WINDOW; k < q; k++) {
        s1 += data[k];
        s2 += s1;
    }
    *s1p = s1;
    *s2p = s2;
}

#ifdef HAVE_AVX2_PATH
#define LANES 16
#define STEP 16 /* bytes per lane per round: one 16x16 byte transpose */

/* rows[i] + off: 16 bytes each; out[k] holds byte k of every row, rows in order. Four rounds of
 * interleaving row i with row i+8 transpose a 16x16 byte matrix. */
__attribute__((target("avx2"))) static inline void transpose16(const uint8_t *const *rows, size_t off,
                                                              __m128i *out) {
    __m128i a[16], b[16];
    for (int i = 0; i < 16; i++) a[i] = _mm_loadu_si128((const __m128i *)(rows[i] + off));
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 8; i++) {
            b[i * 2] = _mm_unpacklo_epi8(a[i], a[i + 8]);
            b[i * 2 + 1] = _mm_unpackhi_epi8(a[i], a[i + 8]);
        }
        memcpy(a, b, sizeof a);
    }
    memcpy(out, a, sizeof a);
}

/* Cuts in [start, start + LANES * seg) (seg a multiple of STEP, start >= WINDOW), lane j covering
 * [start + j * seg, start + (j + 1) * seg). Lane j's cuts go to cuts[start + j * seg ...] (there is room:
 * at most one per position), count[j] of them. Returns the last lane's sums in *s1p, *s2p. */
__attribute__((target("avx2"))) static void avx2_lanes(const uint8_t *data, size_t start, size_t seg,
                                                       uint16_t residue, uint32_t *cuts, size_t *count,
                                                       uint32_t *s1p, uint32_t *s2p) {
    const uint8_t *now[LANES], *before[LANES];
    uint16_t init1[LANES], init2[LANES];
    for (int j = 0; j < LANES; j++) {
        size_t q = start + (size_t)j * seg;
        uint32_t s1, s2;
        window_sums(data, q, &s1, &s2);
        init1[j] = (uint16_t)s1;
        init2[j] = (uint16_t)s2;
        now[j] = data + q;
        before[j] = data + q - WINDOW;
        count[j] = 0;
    }
    __m256i s1 = _mm256_loadu_si256((const __m256i *)init1);
    __m256i s2 = _mm256_loadu_si256((const __m256i *)init2);
    const __m256i want = _mm256_set1_epi16((short)residue);
    __m128i x8[STEP], d8[STEP];
    for (size_t off = 0; off < seg; off += STEP) {
        transpose16(now, off, x8);
        transpose16(before, off, d8);
        __m256i hits = _mm256_setzero_si256();
        __m256i hit[STEP];
        for (int k = 0; k < STEP; k++) {
            __m256i x = _mm256_cvtepu8_epi16(x8[k]);
            __m256i d = _mm256_cvtepu8_epi16(d8[k]);
            s1 = _mm256_add_epi16(s1, _mm256_sub_epi16(x, d));
            s2 = _mm256_add_epi16(s2, _mm256_sub_epi16(s1, _mm256_slli_epi16(d, 6)));
            hit[k] = _mm256_cmpeq_epi16(s2, want);
            hits = _mm256_or_si256(hits, hit[k]);
        }
        if (!_mm256_testz_si256(hits, hits)) { /* rare: about one position in 65536 */
            uint16_t lanes_hit[STEP][LANES];
            for (int k = 0; k < STEP; k++) _mm256_storeu_si256((__m256i *)lanes_hit[k], hit[k]);
            for (int j = 0; j < LANES; j++)
                for (int k = 0; k < STEP; k++)
                    if (lanes_hit[k][j]) {
                        size_t lane_start = start + (size_t)j * seg;
                        cuts[lane_start + count[j]++] = (uint32_t)(lane_start + off + k);
                    }
        }
    }
    /* The last lane's full 32-bit sums, for the scalar tail: recompute from its last window. */
    window_sums(data, start + LANES * seg, s1p, s2p);
}
#endif

/* history: the WINDOW-1 bytes before data (zeros before the file start). Writes the positions p (0-based
 * in data) after which to cut into cuts, which has room for n entries; returns how many there are. */
size_t accel_rollsum_cuts(const uint8_t *history, const uint8_t *data, size_t n, uint16_t residue,
                          uint32_t *cuts) {
    uint32_t s1 = 0, s2 = 0;
    size_t found = 0;
    for (size_t i = 0; i < WINDOW - 1; i++) { /* the window as it stands before data[0] */
        s1 += history[i];
        s2 += s1;
    }
    size_t p = 0;
    for (; p < n && p < WINDOW; p++) { /* dropped bytes still come from history (or are zeros) */
        uint32_t drop = p == 0 ? 0 : history[p - 1];
        s1 += (uint32_t)data[p] - drop;
        s2 += s1 - WINDOW * drop;
        if ((uint16_t)s2 == residue) cuts[found++] = (uint32_t)p;
    }
#ifdef HAVE_AVX2_PATH
    size_t seg = (n - p) / LANES / STEP * STEP;
    if (seg >= 1024 && __builtin_cpu_supports("avx2")) {
        size_t count[LANES];
        avx2_lanes(data, p, seg, residue, cuts, count, &s1, &s2);
        for (int j = 0; j < LANES; j++) { /* lane j's cuts, moved down behind the ones before them */
            memmove(cuts + found, cuts + p + (size_t)j * seg, count[j] * sizeof(uint32_t));
            found += count[j];
        }
        p += LANES * seg;
    }
#endif
    if (p < n) {
        if (p >= WINDOW) window_sums(data, p, &s1, &s2); /* harmless when unchanged: same sums mod 2^16 */
        found = scalar_cuts(data, p, n, &s1, &s2, residue, cuts, found);
    }
    return found;
}
