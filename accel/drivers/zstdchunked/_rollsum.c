/* The zstd:chunked chunker's rolling sum in C (see rollsum.py, which loads this with ctypes and has a
 * numpy fallback computing the same cuts). Built by scripts/setup:
 *     cc -O3 -shared -fPIC -o _rollsum.lib _rollsum.c
 *
 * The bup-style sum over a 64-byte window: s1 is the window's byte sum and s2 the weighted sum
 * sum_{k=0..63} (k+1) * byte[p-k], both modulo 2^32, so that adding byte x and dropping byte d gives
 * s1 += x - d and s2 += s1 - 64 * d. A chunk ends after position p when the low 16 bits of s2 equal
 * `residue` (the reference's own sum carries a constant offset, which the caller folds into `residue`).
 */
#include <stddef.h>
#include <stdint.h>

#define WINDOW 64

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
    for (; p < n; p++) {
        uint32_t drop = data[p - WINDOW];
        s1 += (uint32_t)data[p] - drop;
        s2 += s1 - WINDOW * drop;
        if ((uint16_t)s2 == residue) cuts[found++] = (uint32_t)p;
    }
    return found;
}
