/* The hot loops of decoding chunked gzip members (octoray.formats.gzip_chunks):
 *
 * find_marker(buffer, start, end) -> int: the offset just past the first 00 00 ff ff (the
 *   empty stored block that ends a chunk) lying wholly inside buffer[start:end], or -1.  A
 *   reader of a pipe has no index and scans every byte of input for it on its own thread,
 *   before handing chunks out, so it must cost little beside decoding (Python's bytes.find
 *   managed 1.8 GB/s here; this tests 32 positions a step with AVX2, else 16).  A match is
 *   only a candidate.  The GIL is released while scanning.
 *
 * bind(path, crc_path=None) -> bool: find libdeflate's decompressor in the already loaded
 *   library at `path` (the `deflate` package's extension, which exports it).  libdeflate
 *   decodes a whole chunk into a buffer of known size in 25 % less time than ISA-L's streaming
 *   inflater here, and its _ex call says how many input bytes the stream took, which the
 *   verification needs.  The CRC-32 comes from ISA-L's crc32_gzip_refl where `crc_path` (an
 *   isal extension, which exports it) has it: twice libdeflate's speed here (42 against 20
 *   GB/s on hot data), and every output byte goes through it.
 *
 * inflate(data, probe, chunk_size, exact) -> (output, crc32, used, final) | None: decode
 *   data + probe as one raw deflate stream into at most chunk_size bytes (GIL released).
 *   `data` is a buffer or a list of buffers (a chunk lying across two of the reader's
 *   blocks): they are copied into one input with the probe either way, so the reader need
 *   not join them first.
 *   final: the stream ended inside `data` (used <= len(data)).  Otherwise it must have taken
 *   exactly data + probe, with chunk_size bytes of output if `exact`.  None for anything else;
 *   octoray.formats.chunk_inflate explains why this proves a chunk's end.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* --- the marker scan ------------------------------------------------------------------ */

static inline int is_marker(const uint8_t *p) {
    return p[0] == 0 && p[1] == 0 && p[2] == 0xff && p[3] == 0xff;
}

/* Offset of the first marker starting in [from, to - 4], or -1: `step` tests 16 (SSE2) or 32
 * (AVX2, where the CPU has it) start positions at a time, the bytewise loop the rest. */
static Py_ssize_t scan_tail(const uint8_t *data, Py_ssize_t i, Py_ssize_t to) {
    for (; i + 4 <= to; i++) {
        if (is_marker(data + i))
            return i;
    }
    return -1;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) static Py_ssize_t scan_avx2(const uint8_t *data, Py_ssize_t from, Py_ssize_t to) {
    Py_ssize_t i = from;
    const __m256i zero = _mm256_setzero_si256(), ones = _mm256_set1_epi8((char)0xff);
    while (i + 35 <= to) {  /* start positions i..i+31, each needing 4 bytes */
        __m256i a = _mm256_loadu_si256((const __m256i *)(data + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(data + i + 1));
        __m256i c = _mm256_loadu_si256((const __m256i *)(data + i + 2));
        __m256i d = _mm256_loadu_si256((const __m256i *)(data + i + 3));
        __m256i hit = _mm256_and_si256(_mm256_and_si256(_mm256_cmpeq_epi8(a, zero), _mm256_cmpeq_epi8(b, zero)),
                                       _mm256_and_si256(_mm256_cmpeq_epi8(c, ones), _mm256_cmpeq_epi8(d, ones)));
        unsigned mask = (unsigned)_mm256_movemask_epi8(hit);
        if (mask)
            return i + __builtin_ctz(mask);
        i += 32;
    }
    return scan_tail(data, i, to);
}
#endif

static Py_ssize_t scan(const uint8_t *data, Py_ssize_t from, Py_ssize_t to) {
    Py_ssize_t i = from;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2"))
        return scan_avx2(data, from, to);
#endif
#if defined(__SSE2__)
    const __m128i zero = _mm_setzero_si128(), ones = _mm_set1_epi8((char)0xff);
    while (i + 19 <= to) {  /* start positions i..i+15, each needing 4 bytes */
        __m128i a = _mm_loadu_si128((const __m128i *)(data + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(data + i + 1));
        __m128i c = _mm_loadu_si128((const __m128i *)(data + i + 2));
        __m128i d = _mm_loadu_si128((const __m128i *)(data + i + 3));
        __m128i hit = _mm_and_si128(_mm_and_si128(_mm_cmpeq_epi8(a, zero), _mm_cmpeq_epi8(b, zero)),
                                    _mm_and_si128(_mm_cmpeq_epi8(c, ones), _mm_cmpeq_epi8(d, ones)));
        int mask = _mm_movemask_epi8(hit);
        if (mask)
            return i + __builtin_ctz((unsigned)mask);
        i += 16;
    }
#endif
    return scan_tail(data, i, to);
}

static PyObject *find_marker(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t start, end;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &start, &end))
        return NULL;
    if (start < 0)
        start = 0;
    if (end > view.len)
        end = view.len;
    Py_ssize_t found = -1;
    if (start < end) {
        Py_BEGIN_ALLOW_THREADS  /* the reader scans while the workers run Python */
        found = scan((const uint8_t *)view.buf, start, end);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(found < 0 ? -1 : found + 4);
}

/* --- libdeflate, borrowed from the deflate package ------------------------------------ */

typedef void *(*alloc_fn)(void);
typedef void (*free_fn)(void *);
typedef int (*decompress_ex_fn)(void *, const void *, size_t, void *, size_t, size_t *, size_t *);
typedef uint32_t (*crc32_fn)(uint32_t, const void *, size_t);

static alloc_fn alloc_decompressor;
static free_fn free_decompressor;
static decompress_ex_fn decompress_ex;
static crc32_fn crc32_of;

typedef uint32_t (*crc32_u64_fn)(uint32_t, const unsigned char *, uint64_t);
static crc32_u64_fn isal_crc32;

static uint32_t crc32_of_output(const void *data, size_t length) {
    return isal_crc32 ? isal_crc32(0, (const unsigned char *)data, (uint64_t)length) : crc32_of(0, data, length);
}

static PyObject *bind(PyObject *self, PyObject *args) {
    const char *path, *crc_path = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "s|z", &path, &crc_path))
        return NULL;
    if (crc_path) {
        void *isal = dlopen(crc_path, RTLD_NOW | RTLD_LOCAL);
        isal_crc32 = isal ? (crc32_u64_fn)dlsym(isal, "crc32_gzip_refl") : NULL;
    }
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (library) {
        alloc_decompressor = (alloc_fn)dlsym(library, "libdeflate_alloc_decompressor");
        free_decompressor = (free_fn)dlsym(library, "libdeflate_free_decompressor");
        decompress_ex = (decompress_ex_fn)dlsym(library, "libdeflate_deflate_decompress_ex");
        crc32_of = (crc32_fn)dlsym(library, "libdeflate_crc32");
    }
    if (!alloc_decompressor || !free_decompressor || !decompress_ex || !crc32_of) {
        alloc_decompressor = NULL;
        decompress_ex = NULL;
        Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* The pieces of `data` (one buffer, or a list of buffers) as views in a new array; NULL with
 * an exception set otherwise. */
static Py_buffer *take_pieces(PyObject *data, int *count, Py_ssize_t *length) {
    Py_ssize_t n = PyList_Check(data) ? PyList_GET_SIZE(data) : 1;
    if (n < 1 || n > INT_MAX / (Py_ssize_t)sizeof(Py_buffer)) {
        PyErr_SetString(PyExc_ValueError, "data: a buffer or a non-empty list of buffers");
        return NULL;
    }
    Py_buffer *views = PyMem_Malloc((size_t)n * sizeof(Py_buffer));
    if (!views) {
        PyErr_NoMemory();
        return NULL;
    }
    *length = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *piece = PyList_Check(data) ? PyList_GET_ITEM(data, i) : data;
        if (PyObject_GetBuffer(piece, &views[i], PyBUF_SIMPLE) < 0) {
            while (i-- > 0)
                PyBuffer_Release(&views[i]);
            PyMem_Free(views);
            return NULL;
        }
        *length += views[i].len;
    }
    *count = (int)n;
    return views;
}

static void release_pieces(Py_buffer *views, int count) {
    for (int i = 0; i < count; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
}

static PyObject *inflate(PyObject *self, PyObject *args) {
    PyObject *data;
    Py_buffer probe;
    Py_ssize_t chunk_size, length;
    int exact;
    (void)self;
    if (!decompress_ex) {
        PyErr_SetString(PyExc_RuntimeError, "libdeflate is not bound");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "Oy*np", &data, &probe, &chunk_size, &exact))
        return NULL;
    int count = 0;
    Py_buffer *pieces = take_pieces(data, &count, &length);
    if (!pieces) {
        PyBuffer_Release(&probe);
        return NULL;
    }
    PyObject *result = NULL, *out = PyBytes_FromStringAndSize(NULL, chunk_size);
    size_t total = (size_t)length + (size_t)probe.len;
    uint8_t *input = out ? malloc(total ? total : 1) : NULL;
    void *decompressor = input ? alloc_decompressor() : NULL;
    if (!decompressor) {
        if (out)
            PyErr_NoMemory();
        goto done;
    }
    size_t used = 0, produced = 0;
    int status;
    uint32_t crc = 0;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *at = input;
    for (int i = 0; i < count; i++) {
        memcpy(at, pieces[i].buf, (size_t)pieces[i].len);
        at += pieces[i].len;
    }
    memcpy(at, probe.buf, (size_t)probe.len);
    status = decompress_ex(decompressor, input, total, PyBytes_AS_STRING(out), (size_t)chunk_size, &used, &produced);
    if (status == 0)
        crc = crc32_of_output(PyBytes_AS_STRING(out), produced);
    Py_END_ALLOW_THREADS
    int final = status == 0 && used <= (size_t)length;
    int boundary = status == 0 && used == total && (!exact || produced == (size_t)chunk_size);
    if (!final && !boundary) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (produced != (size_t)chunk_size && _PyBytes_Resize(&out, (Py_ssize_t)produced) < 0)
        goto done;
    result = Py_BuildValue("(OknO)", out, (unsigned long)crc, final ? (Py_ssize_t)used : length,
                           final ? Py_True : Py_False);
done:
    if (decompressor)
        free_decompressor(decompressor);
    free(input);
    Py_XDECREF(out);
    release_pieces(pieces, count);
    PyBuffer_Release(&probe);
    return result;
}

static PyMethodDef methods[] = {
    {"find_marker", find_marker, METH_VARARGS,
     "find_marker(buffer, start, end) -> offset just past the first 00 00 ff ff inside buffer[start:end], or -1"},
    {"bind", bind, METH_VARARGS,
     "bind(path, crc_path=None) -> whether libdeflate's decompressor was found in that library"},
    {"inflate", inflate, METH_VARARGS,
     "inflate(data, probe, chunk_size, exact) -> (output, crc32, used, final) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_chunks", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__chunks(void) {
    return PyModule_Create(&module);
}
