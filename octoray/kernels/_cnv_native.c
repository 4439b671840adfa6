/* CNV-W1A1 forward pass for octoray.kernels.cnv_cpu: plain C, no numpy C-API.
 *
 * run(model, images, out, first, stop, portable) computes fc3's popcounts for
 * images[first:stop] of a C-contiguous uint8 (N, 32, 32, 3) buffer into out, a
 * writable int64 (N, 10) buffer, with the GIL released.  model is one buffer holding
 * every section named in LAYOUT (name -> (offset, bytes)), filled by
 * cnv_cpu.PackedModel; the layout of each section is described where it is read.
 *
 * Two code paths, picked per call: AVX2 (functions compiled for the avx2 target only,
 * so the module builds and loads on any x86-64; taken when the CPU and OS support AVX2)
 * and a portable scalar one (portable=1, no AVX2, or not x86).  Both give the numpy
 * reference's results exactly (tests/test_cnv_kernels.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(CNV_NO_AVX2)
#define CNV_HAVE_AVX2_PATH 1
#include <immintrin.h>
#else
#define CNV_HAVE_AVX2_PATH 0
#endif

#define PIXELS 3072          /* 32 x 32 x 3 bytes an image */
#define CLASSES 10

/* ---------------------------------------------------------------- the model layout */

/* The binary layers: words of 64 input bits per output channel (K), output channels. */
enum { CONV2, CONV3, CONV4, CONV5, CONV6, FC1, FC2, BINARY_LAYERS };
static const char *const binary_names[BINARY_LAYERS] = {"conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2"};
static const int binary_words[BINARY_LAYERS] = {9, 9, 18, 18, 36, 4, 8};
static const int binary_cout[BINARY_LAYERS] = {64, 128, 128, 256, 256, 512, 512};
/* The AVX2 path's blocking: 32-channel registers a block of output channels (the block's
 * weights, K x 512 bytes a register, should stay in L1 while every position uses them;
 * the layout of the nibbles sections follows it). */
static const int binary_regs[BINARY_LAYERS] = {2, 4, 2, 2, 8, 8, 8};

enum {
    S_U8,            /* uint8[256]: u = q + 128 of each pixel value */
    S_C1_PAIRS,      /* int8[15][4][32]: AVX2 conv1 tap pairs, see conv1_avx2 */
    S_C1_PAIRS_T,    /* int16[4][16]: AVX2 conv1 thresholds minus one, same lane order */
    S_C1_TAPS,       /* int8[64][27]: conv1 weights +-1, taps in (dy, dx, c) order */
    S_C1_T,          /* int32[64]: conv1 thresholds on sum(u w) */
    S_NIBBLES,       /* 7 sections: uint8[cout/B][K][16][B], B = 32 regs, see nibble_pass */
    S_LIMITS16 = S_NIBBLES + BINARY_LAYERS,  /* 7 sections: int16[cout/32][2][16], see nibble_pass */
    S_WORDS = S_LIMITS16 + BINARY_LAYERS,    /* 7 sections: uint64[cout][K], weight bits */
    S_LIMITS = S_WORDS + BINARY_LAYERS,  /* 7 sections: int64[cout], fires iff mismatches < limit */
    S_FC3 = S_LIMITS + BINARY_LAYERS,    /* uint64[10][8]: fc3 weight bits */
    SECTIONS
};

static Py_ssize_t section_offset[SECTIONS], section_bytes[SECTIONS], model_bytes;
static char section_name[SECTIONS][32];

static void build_layout(void)
{
    Py_ssize_t at = 0;
    for (int s = 0; s < SECTIONS; s++) {
        Py_ssize_t bytes;
        const char *what = NULL;
        int layer = -1;
        switch (s) {
        case S_U8: bytes = 256; what = "u8"; break;
        case S_C1_PAIRS: bytes = 15 * 4 * 32; what = "conv1_pairs"; break;
        case S_C1_PAIRS_T: bytes = 64 * 2; what = "conv1_pair_thresholds"; break;
        case S_C1_TAPS: bytes = 64 * 27; what = "conv1_taps"; break;
        case S_C1_T: bytes = 64 * 4; what = "conv1_thresholds"; break;
        case S_FC3: bytes = CLASSES * 8 * 8; what = "fc3_words"; break;
        default:
            if (s < S_LIMITS16) {
                layer = s - S_NIBBLES;
                bytes = (Py_ssize_t)binary_cout[layer] * binary_words[layer] * 16;
                what = "nibbles";
            } else if (s < S_WORDS) {
                layer = s - S_LIMITS16;
                bytes = (Py_ssize_t)binary_cout[layer] * 2;
                what = "limits16";
            } else if (s < S_LIMITS) {
                layer = s - S_WORDS;
                bytes = (Py_ssize_t)binary_cout[layer] * binary_words[layer] * 8;
                what = "words";
            } else {
                layer = s - S_LIMITS;
                bytes = (Py_ssize_t)binary_cout[layer] * 8;
                what = "limits";
            }
        }
        if (layer >= 0)
            snprintf(section_name[s], sizeof section_name[s], "%s_%s", binary_names[layer], what);
        else
            snprintf(section_name[s], sizeof section_name[s], "%s", what);
        section_offset[s] = at;
        section_bytes[s] = bytes;
        at += (bytes + 63) & ~(Py_ssize_t)63;  /* every section 64-byte aligned in an aligned buffer */
    }
    model_bytes = at;
}

#define SECTION(model, s, type) ((const type *)((model) + section_offset[s]))

/* ---------------------------------------------------------------- scratch buffers */

/* Activations between layers, one image at a time.  Plain words: bit c of word j of a
 * position is channel 64 j + c.  The AVX2 path also keeps its inputs as nibbles, one a
 * byte (nibble t of a word at byte 16 i + t, stored times 8), which select its lookup
 * tables. */
typedef struct {
    uint8_t u[PIXELS + 64];                     /* the image as u = q + 128, zero padded */
    uint64_t a1[900];                           /* conv1: 30 x 30 x 1 */
    uint64_t p2[196];                           /* conv2 pooled: 14 x 14 x 1 */
    uint64_t a3[288];                           /* conv3: 12 x 12 x 2 */
    uint64_t p4[50];                            /* conv4 pooled: 5 x 5 x 2 */
    uint64_t a5[36];                            /* conv5: 3 x 3 x 4 */
    uint64_t a6[4];                             /* conv6: 1 x 1 x 4 */
    uint64_t h1[8];                             /* fc1 */
    uint64_t h2[8];                             /* fc2 */
    uint8_t n1[900 * 16], n2[196 * 16], n3[288 * 16], n4[50 * 16], n5[36 * 16], n6[4 * 16], nh1[8 * 16];
} scratch;

static inline int popcount64(uint64_t x)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int)((x * 0x0101010101010101ULL) >> 56);
#endif
}

static void to_u(const uint8_t *model, const uint8_t *image, scratch *s)
{
    const uint8_t *table = SECTION(model, S_U8, uint8_t);
    for (int i = 0; i < PIXELS; i++)
        s->u[i] = table[image[i]];
    memset(s->u + PIXELS, 0, sizeof s->u - PIXELS);
}

static void fc3(const uint8_t *model, const uint64_t *h2, int64_t *result)
{
    const uint64_t *w = SECTION(model, S_FC3, uint64_t);
    for (int c = 0; c < CLASSES; c++) {
        int mismatches = 0;
        for (int j = 0; j < 8; j++)
            mismatches += popcount64(h2[j] ^ w[8 * c + j]);
        result[c] = 512 - mismatches;
    }
}

/* ---------------------------------------------------------------- portable path */

/* One binary layer, scalar: the K input words of each output position are `rows` runs of
 * `row_len` words, run r at base + r * row_stride; output channel c fires iff
 * sum popcount(x ^ w[c]) < limit[c], and its bit is ORed into the position's words
 * (positions map to output words through `pool`: 2x2 max-pooling is an OR). */
static void binary_portable(const uint8_t *model, int layer, const uint64_t *in, int in_w, int wpp,
                            int out_w, int pool, uint64_t *out)
{
    const int k_words = binary_words[layer], cout = binary_cout[layer], words_out = cout / 64;
    const uint64_t *w = SECTION(model, S_WORDS + layer, uint64_t);
    const int64_t *limit = SECTION(model, S_LIMITS + layer, int64_t);
    const int rows = in_w > 0 ? 3 : 1, row_len = k_words / rows, row_stride = in_w * wpp;
    const int out_h = in_w > 0 ? out_w : 1;
    uint64_t x[36];
    for (int y = 0; y < out_h; y++) {
        for (int xx = 0; xx < out_w; xx++) {
            const uint64_t *base = in + (ptrdiff_t)(y * in_w + xx) * wpp;
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < row_len; j++)
                    x[r * row_len + j] = base[r * row_stride + j];
            const int index = pool ? (y >> 1) * (out_w >> 1) + (xx >> 1) : y * out_w + xx;
            uint64_t *o = out + (ptrdiff_t)index * words_out;
            for (int c = 0; c < cout; c++) {
                const uint64_t *wc = w + (ptrdiff_t)c * k_words;
                int64_t mismatches = 0;
                for (int k = 0; k < k_words; k++)
                    mismatches += popcount64(x[k] ^ wc[k]);
                if (mismatches < limit[c])
                    o[c >> 6] |= 1ULL << (c & 63);
            }
        }
    }
}

static void network_portable(const uint8_t *model, const uint8_t *image, int64_t *result, scratch *s)
{
    to_u(model, image, s);
    const int8_t *w1 = SECTION(model, S_C1_TAPS, int8_t);
    const int32_t *t1 = SECTION(model, S_C1_T, int32_t);
    for (int y = 0; y < 30; y++) {
        for (int x = 0; x < 30; x++) {
            int32_t taps[27];
            for (int dy = 0; dy < 3; dy++)
                for (int t = 0; t < 9; t++)
                    taps[9 * dy + t] = s->u[(32 * (y + dy) + x) * 3 + t];
            uint64_t word = 0;
            for (int c = 0; c < 64; c++) {
                int32_t acc = 0;
                for (int t = 0; t < 27; t++)
                    acc += taps[t] * w1[27 * c + t];
                if (acc >= t1[c])
                    word |= 1ULL << c;
            }
            s->a1[30 * y + x] = word;
        }
    }
    memset(s->p2, 0, sizeof s->p2);
    memset(s->a3, 0, sizeof s->a3);
    memset(s->p4, 0, sizeof s->p4);
    memset(s->a5, 0, sizeof s->a5);
    memset(s->a6, 0, sizeof s->a6);
    memset(s->h1, 0, sizeof s->h1);
    memset(s->h2, 0, sizeof s->h2);
    binary_portable(model, CONV2, s->a1, 30, 1, 28, 1, s->p2);
    binary_portable(model, CONV3, s->p2, 14, 1, 12, 0, s->a3);
    binary_portable(model, CONV4, s->a3, 12, 2, 10, 1, s->p4);
    binary_portable(model, CONV5, s->p4, 5, 2, 3, 0, s->a5);
    binary_portable(model, CONV6, s->a5, 3, 4, 1, 0, s->a6);
    binary_portable(model, FC1, s->a6, 0, 4, 1, 0, s->h1);
    binary_portable(model, FC2, s->h1, 0, 8, 1, 0, s->h2);
    fc3(model, s->h2, result);
}

/* ---------------------------------------------------------------- AVX2 path */

#if CNV_HAVE_AVX2_PATH
#define AVX2 __attribute__((target("avx2,popcnt")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,popcnt")))
/* An empty asm that the compiler must assume changes v: it keeps each accumulator a
 * running sum.  Without it GCC reassociates an unrolled window's additions into a tree
 * and keeps every term alive at once, spilling most of them to the stack. */
#define KEEP(v) __asm__("" : "+x"(v))

/* Positions a pass of each binary layer, which share the loaded weights (measured best
 * with binary_regs, within a few per cent; each divides its layer's output width). */
#define MAX_P 5
static const int binary_positions[BINARY_LAYERS] = {4, 2, 5, 3, 1, 1, 1};

/* pop(v ^ i) for i = 0..15, twice (both 128-bit lanes), for each nibble v: table v is
 * the popcount of a weight nibble's mismatches with an input nibble v. */
static uint8_t nibble_tables[16 * 32] __attribute__((aligned(64)));

static void fill_nibble_tables(void)
{
    for (int v = 0; v < 16; v++)
        for (int i = 0; i < 32; i++)
            nibble_tables[32 * v + i] = (uint8_t)popcount64((uint64_t)(v ^ (i & 15)));
}

/* One byte of nibbles, read with an asm the compiler cannot see through: neighbouring
 * positions read the same bytes one word apart, and GCC's predictive commoning would
 * otherwise carry them from word to word in spilled registers. */
AVX2_INLINE size_t nibble_at(const uint8_t *p)
{
    size_t v;
    __asm__("movzbl %1, %k0" : "=r"(v) : "m"(*p));  /* on x86-64 a 32-bit write zeroes the upper half */
    return v;
}

/* words -> their 16 nibbles a byte each, times 8 (a table's offset / 4) */
AVX2_INLINE void expand(const uint64_t *words, int n, uint8_t *nibbles)
{
    const __m128i mask = _mm_set1_epi8(0x0F);
    for (int i = 0; i < n; i++) {
        const __m128i v = _mm_loadl_epi64((const __m128i *)(words + i));
        const __m128i lo = _mm_and_si128(v, mask), hi = _mm_and_si128(_mm_srli_epi16(v, 4), mask);
        _mm_storeu_si128((__m128i *)(nibbles + 16 * i), _mm_slli_epi16(_mm_unpacklo_epi8(lo, hi), 3));
    }
}

/* One pass of a binary layer: `regs` registers of 32 output channels (one a byte) at P
 * positions side by side.  The input words of the first position are `rows` runs of
 * row_len words, row_stride apart, the nibbles of the first at nib (see expand); each
 * next position is wpp words on.  w: the block's
 * weight nibbles, for each input word k and nibble t the block's channels (a byte each).
 * For each input nibble its lookup table (chosen by the nibble's value) turns 32
 * channels' weight nibbles into their mismatch counts in one vpshufb, so the inner loop
 * is a table load per position, and per register a vpshufb and a byte add.  Byte counts
 * (4 at most a nibble) are widened to 16 bits every 3 words.  A channel fires iff its
 * mismatches < its limit (limit16: per register the int16 limits of channels 0-7 16-23
 * then 8-15 24-31, the lane order of vpunpck{l,h}bw; vpacksswb + vpmovmskb then give
 * channel b at bit b). */
AVX2_INLINE void nibble_pass(const uint8_t *nib, const int wpp, const int P, const int regs, const int rows,
                             const int row_len, const ptrdiff_t row_stride, const uint8_t *w,
                             const __m256i *limit16, uint32_t *bits)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i acc[MAX_P][8], lo16[MAX_P][8], hi16[MAX_P][8];
#pragma GCC unroll 5
    for (int p = 0; p < P; p++) {
#pragma GCC unroll 8
        for (int q = 0; q < regs; q++)
            acc[p][q] = lo16[p][q] = hi16[p][q] = zero;
    }
    /* groups of at most 3 words (48 byte adds of at most 4), each within a run */
    for (int r = 0; r < rows; r++) {
        for (int g = 0; g < row_len; g += 3) {
            const int n = row_len - g < 3 ? row_len - g : 3;
            for (int j = g; j < g + n; j++) {
                const uint8_t *x = nib + (r * row_stride + j) * 16;
                const __m256i *wk = (const __m256i *)(w + (ptrdiff_t)(r * row_len + j) * 16 * regs * 32);
#pragma GCC unroll 16
                for (int t = 0; t < 16; t++) {
                    const __m256i *wt = wk + t * regs;
                    if (P == 1) {
                        const __m256i table = _mm256_load_si256((const __m256i *)(nibble_tables + 4 * nibble_at(x + t)));
#pragma GCC unroll 8
                        for (int q = 0; q < regs; q++) {
                            acc[0][q] = _mm256_add_epi8(acc[0][q], _mm256_shuffle_epi8(table, _mm256_loadu_si256(wt + q)));
                            KEEP(acc[0][q]);
                        }
                    } else {
                        __m256i wq[8];
#pragma GCC unroll 8
                        for (int q = 0; q < regs; q++)
                            wq[q] = _mm256_loadu_si256(wt + q);
#pragma GCC unroll 5
                        for (int p = 0; p < P; p++) {
                            const __m256i table = _mm256_load_si256(
                                (const __m256i *)(nibble_tables + 4 * nibble_at(x + 16 * wpp * p + t)));
#pragma GCC unroll 8
                            for (int q = 0; q < regs; q++) {
                                acc[p][q] = _mm256_add_epi8(acc[p][q], _mm256_shuffle_epi8(table, wq[q]));
                                KEEP(acc[p][q]);
                            }
                        }
                    }
                }
            }
#pragma GCC unroll 5
            for (int p = 0; p < P; p++) {
#pragma GCC unroll 8
                for (int q = 0; q < regs; q++) {
                    lo16[p][q] = _mm256_add_epi16(lo16[p][q], _mm256_unpacklo_epi8(acc[p][q], zero));
                    hi16[p][q] = _mm256_add_epi16(hi16[p][q], _mm256_unpackhi_epi8(acc[p][q], zero));
                    acc[p][q] = zero;
                }
            }
        }
    }
#pragma GCC unroll 5
    for (int p = 0; p < P; p++) {
#pragma GCC unroll 8
        for (int q = 0; q < regs; q++) {
            const __m256i lo = lo16[p][q], hi = hi16[p][q];
            const __m256i fires = _mm256_packs_epi16(_mm256_cmpgt_epi16(_mm256_loadu_si256(limit16 + 2 * q), lo),
                                                     _mm256_cmpgt_epi16(_mm256_loadu_si256(limit16 + 2 * q + 1), hi));
            bits[p * 8 + q] = (uint32_t)_mm256_movemask_epi8(fires);
        }
    }
}

/* A binary layer: a 3x3 convolution over an in_w x in_w x (64 wpp) input (in_w > 0),
 * or fully connected (in_w == 0, K words); out (zeroed by the caller) gets each
 * position's words, ORed 2x2 when pool.  Channel blocks outside, positions inside. */
AVX2_INLINE void binary_avx2(const uint8_t *model, const int layer, const uint8_t *nib, const int in_w,
                             const int wpp, const int out_w, const int pool, uint64_t *out)
{
    const int k_words = binary_words[layer], cout = binary_cout[layer], words_out = cout / 64;
    const int regs = binary_regs[layer], P = binary_positions[layer];
    const uint8_t *w = SECTION(model, S_NIBBLES + layer, uint8_t);
    const __m256i *limit16 = SECTION(model, S_LIMITS16 + layer, __m256i);
    const int rows = in_w > 0 ? 3 : 1, row_len = k_words / rows;
    const ptrdiff_t row_stride = (ptrdiff_t)in_w * wpp;
    const int positions = in_w > 0 ? out_w * out_w : 1;
    for (int block = 0; block < cout / (32 * regs); block++) {
        const uint8_t *wb = w + (ptrdiff_t)block * k_words * 16 * regs * 32;
        const __m256i *lb = limit16 + block * regs * 2;
        for (int first = 0; first < positions; first += P) {  /* P positions in one row */
            const int y = first / out_w, x0 = first % out_w;
            int index[MAX_P];
            for (int p = 0; p < P; p++)
                index[p] = pool ? (y >> 1) * (out_w >> 1) + ((x0 + p) >> 1) : y * out_w + x0 + p;
            uint32_t bits[MAX_P * 8];
            nibble_pass(nib + (ptrdiff_t)(y * in_w + x0) * wpp * 16, wpp, P, regs, rows, row_len, row_stride, wb, lb, bits);
            for (int p = 0; p < P; p++)
                for (int q = 0; q < regs; q++) {
                    const int reg = block * regs + q;
                    out[(ptrdiff_t)index[p] * words_out + (reg >> 1)] |= (uint64_t)bits[p * 8 + q] << (32 * (reg & 1));
                }
        }
    }
}

/* conv1 on u = q + 128 (so that vpmaddubsw, unsigned x signed bytes, applies; the
 * thresholds carry the offset 128 sum(w)).  Per window row dy the 9 bytes (dx, c) are
 * taken as pairs (0,1) (2,3) (4,5) (6,7) (8,9), tap 9 with weight 0; a pair broadcast
 * to 16 lanes times 32 weight bytes (16 channels x 2 taps) is one vpmaddubsw, and the
 * int16 sums (at most 27 x 255 in magnitude) never saturate.  The lanes of the four
 * registers hold the channels in the order that vpacksswb + vpmovmskb turn into bits
 * 0..63 (the packing in cnv_cpu.PackedModel). */
AVX2_INLINE void conv1_avx2(const uint8_t *model, scratch *s)
{
    const __m256i *w = SECTION(model, S_C1_PAIRS, __m256i);
    const __m256i *t = SECTION(model, S_C1_PAIRS_T, __m256i);
    const __m256i t0 = _mm256_loadu_si256(t), t1 = _mm256_loadu_si256(t + 1);
    const __m256i t2 = _mm256_loadu_si256(t + 2), t3 = _mm256_loadu_si256(t + 3);
    for (int y = 0; y < 30; y++) {
        for (int x = 0; x < 30; x++) {
            const uint8_t *u = s->u + (32 * y + x) * 3;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
#pragma GCC unroll 15
            for (int p = 0; p < 15; p++) {
                uint16_t two;
                memcpy(&two, u + 96 * (p / 5) + 2 * (p % 5), 2);
                const __m256i v = _mm256_set1_epi16((short)two);
                a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(v, _mm256_loadu_si256(w + 4 * p)));
                a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(v, _mm256_loadu_si256(w + 4 * p + 1)));
                a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(v, _mm256_loadu_si256(w + 4 * p + 2)));
                a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(v, _mm256_loadu_si256(w + 4 * p + 3)));
                KEEP(a0);
                KEEP(a1);
                KEEP(a2);
                KEEP(a3);
            }
            const __m256i lo = _mm256_packs_epi16(_mm256_cmpgt_epi16(a0, t0), _mm256_cmpgt_epi16(a1, t1));
            const __m256i hi = _mm256_packs_epi16(_mm256_cmpgt_epi16(a2, t2), _mm256_cmpgt_epi16(a3, t3));
            const uint64_t word = (uint64_t)(uint32_t)_mm256_movemask_epi8(lo)
                                  | (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
            s->a1[30 * y + x] = word;
        }
    }
}

/* One function a layer (not inlined into one another: that keeps each one's code, with
 * its constants, small enough to schedule well, and shows the layers apart in a profile). */
#define AVX2_LAYER static __attribute__((noinline, target("avx2,popcnt")))

AVX2_LAYER void conv1_layer(const uint8_t *model, const uint8_t *image, scratch *s)
{
    to_u(model, image, s);
    conv1_avx2(model, s);
    expand(s->a1, 900, s->n1);
}

AVX2_LAYER void conv2_layer(const uint8_t *model, scratch *s)
{
    memset(s->p2, 0, sizeof s->p2);
    binary_avx2(model, CONV2, s->n1, 30, 1, 28, 1, s->p2);
    expand(s->p2, 196, s->n2);
}

AVX2_LAYER void conv3_layer(const uint8_t *model, scratch *s)
{
    memset(s->a3, 0, sizeof s->a3);
    binary_avx2(model, CONV3, s->n2, 14, 1, 12, 0, s->a3);
    expand(s->a3, 288, s->n3);
}

AVX2_LAYER void conv4_layer(const uint8_t *model, scratch *s)
{
    memset(s->p4, 0, sizeof s->p4);
    binary_avx2(model, CONV4, s->n3, 12, 2, 10, 1, s->p4);
    expand(s->p4, 50, s->n4);
}

AVX2_LAYER void conv5_layer(const uint8_t *model, scratch *s)
{
    memset(s->a5, 0, sizeof s->a5);
    binary_avx2(model, CONV5, s->n4, 5, 2, 3, 0, s->a5);
    expand(s->a5, 36, s->n5);
}

AVX2_LAYER void conv6_fc_layers(const uint8_t *model, scratch *s, int64_t *result)
{
    memset(s->a6, 0, sizeof s->a6);
    binary_avx2(model, CONV6, s->n5, 3, 4, 1, 0, s->a6);
    expand(s->a6, 4, s->n6);
    memset(s->h1, 0, sizeof s->h1);
    binary_avx2(model, FC1, s->n6, 0, 4, 1, 0, s->h1);
    expand(s->h1, 8, s->nh1);
    memset(s->h2, 0, sizeof s->h2);
    binary_avx2(model, FC2, s->nh1, 0, 8, 1, 0, s->h2);
    fc3(model, s->h2, result);
}

AVX2 static void network_avx2(const uint8_t *model, const uint8_t *image, int64_t *result, scratch *s)
{
    conv1_layer(model, image, s);
    conv2_layer(model, s);
    conv3_layer(model, s);
    conv4_layer(model, s);
    conv5_layer(model, s);
    conv6_fc_layers(model, s, result);
}
#endif /* CNV_HAVE_AVX2_PATH */

static int cpu_has_avx2(void)
{
#if CNV_HAVE_AVX2_PATH
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

static int have_avx2;

/* ---------------------------------------------------------------- Python interface */

static PyObject *run(PyObject *self, PyObject *args)
{
    Py_buffer model, images, out;
    Py_ssize_t first, stop;
    int portable = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*nn|p", &model, &images, &out, &first, &stop, &portable))
        return NULL;
    PyObject *answer = NULL;
    const Py_ssize_t n = images.len / PIXELS;
    if (model.len != model_bytes) {
        PyErr_Format(PyExc_ValueError, "model buffer has %zd bytes, expected %zd", model.len, model_bytes);
    } else if (images.len % PIXELS != 0) {
        PyErr_SetString(PyExc_ValueError, "images must be a whole number of 32x32x3 uint8 images");
    } else if (out.len != n * CLASSES * (Py_ssize_t)sizeof(int64_t) || ((uintptr_t)out.buf & 7) != 0) {
        PyErr_SetString(PyExc_ValueError, "out must be an aligned int64 buffer of (N, 10)");
    } else if (first < 0 || stop < first || stop > n) {
        PyErr_Format(PyExc_ValueError, "bad image range [%zd, %zd) of %zd", first, stop, n);
    } else {
        scratch *s = malloc(sizeof *s);
        if (s == NULL) {
            PyErr_NoMemory();
        } else {
            const uint8_t *m = model.buf, *im = images.buf;
            int64_t *result = out.buf;
            const int avx2 = have_avx2 && !portable;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t i = first; i < stop; i++) {
#if CNV_HAVE_AVX2_PATH
                if (avx2) {
                    network_avx2(m, im + i * PIXELS, result + i * CLASSES, s);
                    continue;
                }
#endif
                network_portable(m, im + i * PIXELS, result + i * CLASSES, s);
            }
            Py_END_ALLOW_THREADS
            (void)avx2;
            free(s);
            answer = Py_NewRef(Py_None);
        }
    }
    PyBuffer_Release(&model);
    PyBuffer_Release(&images);
    PyBuffer_Release(&out);
    return answer;
}

static PyObject *code_path(PyObject *self, PyObject *args)
{
    int portable = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "|p", &portable))
        return NULL;
    return PyUnicode_FromString(have_avx2 && !portable ? "avx2" : "portable");
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS,
     "run(model, images, out, first, stop, portable=False): fc3 popcounts of images[first:stop] into out "
     "(int64 (N, 10)); releases the GIL."},
    {"code_path", code_path, METH_VARARGS,
     "code_path(portable=False): 'avx2' or 'portable', the path run() takes."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module)
{
    build_layout();
    have_avx2 = cpu_has_avx2();
#if CNV_HAVE_AVX2_PATH
    fill_nibble_tables();
#endif
    PyObject *layout = PyDict_New();
    if (layout == NULL)
        return -1;
    for (int s = 0; s < SECTIONS; s++) {
        PyObject *entry = Py_BuildValue("(nn)", section_offset[s], section_bytes[s]);
        if (entry == NULL || PyDict_SetItemString(layout, section_name[s], entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(layout);
            return -1;
        }
        Py_DECREF(entry);
    }
    if (PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_DECREF(layout);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "SIZE", (long)model_bytes) < 0)
        return -1;
    PyObject *blocks = PyDict_New();
    if (blocks == NULL)
        return -1;
    for (int layer = 0; layer < BINARY_LAYERS; layer++) {
        PyObject *channels = PyLong_FromLong(32L * binary_regs[layer]);
        if (channels == NULL || PyDict_SetItemString(blocks, binary_names[layer], channels) < 0) {
            Py_XDECREF(channels);
            Py_DECREF(blocks);
            return -1;
        }
        Py_DECREF(channels);
    }
    if (PyModule_AddObject(module, "BLOCKS", blocks) < 0) {
        Py_DECREF(blocks);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

static struct PyModuleDef definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_cnv_native",
    .m_doc = "CNV-W1A1 forward pass (see octoray.kernels.cnv_cpu).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__cnv_native(void)
{
    return PyModuleDef_Init(&definition);
}
