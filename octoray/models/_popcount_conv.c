/* Binary 3x3 convolutions by XNOR-popcount, for training CNV-W1A1 on the CPU
 * (octoray.models.popcount): the forward pass of a layer whose inputs and weights are all
 * +-1 gives the same integers as a float convolution, from bits instead of floats.
 *
 * pack(x, bits, first, stop): rows [first, stop) of a float32 (M, C) buffer, C a multiple
 *   of 64, as their sign bits in a uint64 (M, C / 64) buffer: bit i of word j is 1 where
 *   x[r, 64 j + i] is negative (-1).
 * conv(x_bits, w_bits, out, height, width, words, first, stop, portable=False): images [first, stop) of
 *   x_bits, uint64 (N, height, width, words), against w_bits, uint64 (Cout, 3, 3, words),
 *   into out, float32 (N, height - 2, width - 2, Cout):
 *   out[n, y, x, o] = 576 words - 2 * (the bits of the 3x3 window that differ from o's),
 *   the sum of the +-1 products.
 * Both release the GIL and use no numpy C-API; the callers check shapes and alignment.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86 1
#include <immintrin.h>
#define TARGET_POPCNT __attribute__((target("popcnt")))
#define TARGET_AVX2 __attribute__((target("avx2,popcnt")))
#else
#define HAVE_X86 0
#define TARGET_POPCNT
#endif

#define MAX_WORDS 4 /* 256 input channels */

static int have_avx2, have_popcnt = 1;

/* ---------------------------------------------------------------- sign bits */

static void pack_portable(const float *x, uint64_t *bits, Py_ssize_t words)
{
    for (Py_ssize_t j = 0; j < words; j++) {
        uint64_t word = 0;
        for (int i = 0; i < 64; i++) {
            uint32_t u;
            memcpy(&u, x + 64 * j + i, 4);
            word |= (uint64_t)(u >> 31) << i;
        }
        bits[j] = word;
    }
}

#if HAVE_X86
TARGET_AVX2 static void pack_avx2(const float *x, uint64_t *bits, Py_ssize_t words)
{
    for (Py_ssize_t j = 0; j < words; j++) {
        uint64_t word = 0;
        for (int i = 0; i < 8; i++)
            word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_loadu_ps(x + 64 * j + 8 * i)) << (8 * i);
        bits[j] = word;
    }
}
#endif

/* ---------------------------------------------------------------- the convolution */

/* One row of outputs: for each position the window's 9 * words words are gathered once,
 * then every output channel's weights run over them (a layer's weights, at most 74 KB,
 * stay in L2).  WORDS is a constant in each instance, so the inner loop unrolls. */
#define CONV_ROW(NAME, WORDS)                                                                      \
    TARGET_POPCNT static void NAME(const uint64_t *x, const uint64_t *w, float *out, int width,   \
                                   int cout)                                                      \
    {                                                                                             \
        const int taps = 9 * (WORDS);                                                             \
        const float k = 64.0f * (float)taps;                                                      \
        uint64_t window[9 * MAX_WORDS];                                                           \
        for (int col = 0; col + 2 < width; col++) {                                               \
            for (int ky = 0; ky < 3; ky++)                                                        \
                memcpy(window + 3 * (WORDS) * ky, x + ((Py_ssize_t)ky * width + col) * (WORDS),   \
                       sizeof(uint64_t) * 3 * (WORDS));                                           \
            float *o = out + (Py_ssize_t)col * cout;                                              \
            for (int c = 0; c < cout; c++) {                                                      \
                const uint64_t *wc = w + (Py_ssize_t)c * taps;                                    \
                int differ = 0;                                                                   \
                for (int t = 0; t < taps; t++)                                                    \
                    differ += __builtin_popcountll(window[t] ^ wc[t]);                            \
                o[c] = k - 2.0f * (float)differ;                                                  \
            }                                                                                     \
        }                                                                                         \
    }

CONV_ROW(conv_row1, 1)
CONV_ROW(conv_row2, 2)
CONV_ROW(conv_row4, 4)

#if HAVE_X86
/* The AVX2 path counts eight output channels at once: the window's word t, broadcast, is
 * xored with word t of eight channels' weights (interleaved four channels a register, see
 * interleave), and the bits of each byte are counted by two nibble lookups (vpshufb);
 * vpsadbw adds each channel's bytes before they can overflow (8 a word, at most 31 words). */
TARGET_AVX2 static void conv_row_avx2(const uint64_t *x, const uint64_t *w4, float *out, int width, int words,
                                      int cout)
{
    const int taps = 9 * words;
    const __m256i nibbles = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    const __m256i k = _mm256_set1_epi32(64 * taps);
    uint64_t window[9 * MAX_WORDS];
    for (int col = 0; col + 2 < width; col++) {
        for (int ky = 0; ky < 3; ky++)
            memcpy(window + 3 * words * ky, x + ((Py_ssize_t)ky * width + col) * words, sizeof(uint64_t) * 3 * words);
        float *o = out + (Py_ssize_t)col * cout;
        for (int c = 0; c < cout; c += 8) {
            const uint64_t *wa = w4 + (Py_ssize_t)c * taps, *wb = wa + 4 * taps;
            __m256i sum_a = zero, sum_b = zero, bytes_a = zero, bytes_b = zero;
            for (int t = 0; t < taps; t++) {
                const __m256i v = _mm256_set1_epi64x((long long)window[t]);
                const __m256i a = _mm256_xor_si256(v, _mm256_loadu_si256((const __m256i *)(wa + 4 * t)));
                const __m256i b = _mm256_xor_si256(v, _mm256_loadu_si256((const __m256i *)(wb + 4 * t)));
                bytes_a = _mm256_add_epi8(bytes_a, _mm256_add_epi8(
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(a, nibbles)),
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(a, 4), nibbles))));
                bytes_b = _mm256_add_epi8(bytes_b, _mm256_add_epi8(
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(b, nibbles)),
                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(b, 4), nibbles))));
                if (t % 31 == 30 || t + 1 == taps) {
                    sum_a = _mm256_add_epi64(sum_a, _mm256_sad_epu8(bytes_a, zero));
                    sum_b = _mm256_add_epi64(sum_b, _mm256_sad_epu8(bytes_b, zero));
                    bytes_a = bytes_b = zero;
                }
            }
            /* the eight counts (each < 2^32) in the low halves of the 64-bit lanes, in order */
            const __m256i counts = _mm256_permutevar8x32_epi32(
                _mm256_or_si256(sum_a, _mm256_slli_epi64(sum_b, 32)), order);
            _mm256_storeu_ps(o + c, _mm256_cvtepi32_ps(_mm256_sub_epi32(k, _mm256_slli_epi32(counts, 1))));
        }
    }
}
#endif

/* Eight channels' weights for conv_row_avx2: word t of channel c at [c / 4][t][c % 4]. */
static void interleave(const uint64_t *w, uint64_t *w4, int taps, int cout)
{
    for (int c = 0; c < cout; c++)
        for (int t = 0; t < taps; t++)
            w4[((Py_ssize_t)(c / 4) * taps + t) * 4 + c % 4] = w[(Py_ssize_t)c * taps + t];
}

static void conv_images(const uint64_t *x, const uint64_t *w, const uint64_t *w4, float *out, int height,
                        int width, int words, int cout, Py_ssize_t first, Py_ssize_t stop)
{
    const Py_ssize_t in_row = (Py_ssize_t)width * words, out_row = (Py_ssize_t)(width - 2) * cout;
    for (Py_ssize_t n = first; n < stop; n++) {
        for (int y = 0; y + 2 < height; y++) {
            const uint64_t *xr = x + (n * height + y) * in_row;
            float *o = out + (n * (height - 2) + y) * out_row;
#if HAVE_X86
            if (w4 != NULL) {
                conv_row_avx2(xr, w4, o, width, words, cout);
                continue;
            }
#endif
            (void)w4;
            if (words == 1)
                conv_row1(xr, w, o, width, cout);
            else if (words == 2)
                conv_row2(xr, w, o, width, cout);
            else
                conv_row4(xr, w, o, width, cout);
        }
    }
}

/* ---------------------------------------------------------------- Python interface */

static PyObject *pack(PyObject *self, PyObject *args)
{
    Py_buffer x, bits;
    Py_ssize_t first, stop;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*nn", &x, &bits, &first, &stop))
        return NULL;
    PyObject *answer = NULL;
    const Py_ssize_t rows_words = bits.len / 8, values = x.len / 4;
    if (values != rows_words * 64 || bits.len % 8 != 0 || ((uintptr_t)bits.buf & 7) != 0) {
        PyErr_SetString(PyExc_ValueError, "bits must be an aligned uint64 buffer of one bit a float of x");
    } else if (first < 0 || stop < first || stop * 64 > values || (first * 64) > values) {
        PyErr_Format(PyExc_ValueError, "bad word range [%zd, %zd)", first, stop);
    } else {
        const float *xs = (const float *)x.buf + first * 64;
        uint64_t *b = (uint64_t *)bits.buf + first;
        const Py_ssize_t words = stop - first;
        Py_BEGIN_ALLOW_THREADS
#if HAVE_X86
        if (have_avx2)
            pack_avx2(xs, b, words);
        else
#endif
            pack_portable(xs, b, words);
        Py_END_ALLOW_THREADS
        answer = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&bits);
    return answer;
}

static PyObject *conv(PyObject *self, PyObject *args)
{
    Py_buffer x, w, out;
    int height, width, words, portable = 0;
    Py_ssize_t first, stop;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*iiinn|p", &x, &w, &out, &height, &width, &words, &first, &stop, &portable))
        return NULL;
    PyObject *answer = NULL;
    const Py_ssize_t image_words = (Py_ssize_t)height * width * words;
    const Py_ssize_t n = image_words > 0 ? x.len / 8 / image_words : 0;
    const Py_ssize_t cout = words > 0 ? w.len / 8 / (9 * words) : 0;
    if (!(words == 1 || words == 2 || words == 4) || height < 3 || width < 3) {
        PyErr_SetString(PyExc_ValueError, "words must be 1, 2 or 4, height and width at least 3");
    } else if (x.len != n * image_words * 8 || w.len != cout * 9 * words * 8 || cout == 0 ||
               ((uintptr_t)x.buf & 7) != 0 || ((uintptr_t)w.buf & 7) != 0) {
        PyErr_SetString(PyExc_ValueError, "x_bits and w_bits must be aligned uint64 buffers of whole images and filters");
    } else if (out.len != n * (height - 2) * (width - 2) * cout * 4 || ((uintptr_t)out.buf & 3) != 0) {
        PyErr_SetString(PyExc_ValueError, "out must be an aligned float32 buffer of (N, height - 2, width - 2, Cout)");
    } else if (first < 0 || stop < first || stop > n) {
        PyErr_Format(PyExc_ValueError, "bad image range [%zd, %zd) of %zd", first, stop, n);
    } else {
        uint64_t *w4 = NULL;
        if (have_avx2 && !portable && cout % 8 == 0) {
            w4 = PyMem_RawMalloc((size_t)w.len);
            if (w4 == NULL)
                PyErr_NoMemory();
        }
        if (!PyErr_Occurred()) {
            Py_BEGIN_ALLOW_THREADS
            if (w4 != NULL)
                interleave(w.buf, w4, 9 * words, (int)cout);
            conv_images(x.buf, w.buf, w4, out.buf, height, width, words, (int)cout, first, stop);
            Py_END_ALLOW_THREADS
            answer = Py_NewRef(Py_None);
        }
        PyMem_RawFree(w4);
    }
    PyBuffer_Release(&x);
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    return answer;
}

static PyMethodDef methods[] = {
    {"pack", pack, METH_VARARGS,
     "pack(x, bits, first, stop): the sign bits of float32 x into uint64 words [first, stop) of bits."},
    {"conv", conv, METH_VARARGS,
     "conv(x_bits, w_bits, out, height, width, words, first, stop, portable=False): the binary 3x3 "
     "convolution of images [first, stop) into float32 out (N, height - 2, width - 2, Cout)."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *module)
{
#if HAVE_X86
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
    have_popcnt = __builtin_cpu_supports("popcnt");
#endif
    /* conv's rows are compiled for popcnt: where the CPU has none, the caller convolves floats */
    return PyModule_AddIntConstant(module, "AVAILABLE", have_popcnt);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_popcount_conv", NULL, 0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__popcount_conv(void)
{
    module_def.m_slots = slots;
    return PyModuleDef_Init(&module_def);
}
