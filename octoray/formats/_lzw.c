/* Streaming decoder for compress(1)'s LZW format (.Z), with gzip 1.12's reading of it.
 *
 * Why C: LZW walks a table one code at a time; in Python that is some 5 MB/s, here it runs
 * at the speed of gzip's own unlzw.
 *
 * The format, as gzip reads it (the caller has checked the magic 1f 9d and parsed the flags
 * byte: maxbits = flags & 0x1f, block mode = flags & 0x80):
 * - codes are little-endian bit fields, 9 bits wide at first; codes 0-255 are bytes, 256 is
 *   CLEAR in block mode, and each code after the first adds a table entry (the previous
 *   code's string plus the first byte of this one) while the table has room (1 << maxbits);
 * - when the next entry would not fit the width, the width grows by one bit; when it
 *   reaches maxbits the width stays (maxbits 9 therefore grows to 10: 9 never quite means 9);
 * - codes come in groups of eight, and on a change of width or a CLEAR the rest of the
 *   current group is skipped (a relic of the VAX implementation);
 * - a code one past the last entry is the KwKwK case; any larger code is corrupt input, and
 *   so is a first code above 255; bits too few for a whole code at the end are ignored.
 *
 * Decoder(maxbits, block_mode); decoder.decompress(data, write): `write` gets the output in
 * pieces of at most 1 MiB, so memory stays flat however far the data expands.  Raises
 * Corrupt("first") for a bad first code and Corrupt("code") for a code past the table, after
 * writing what came before it (gzip writes that too).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OUT_SIZE (1 << 20)

static PyObject *Corrupt;
#define TABLE (1 << 16)

typedef struct {
    PyObject_HEAD
    int maxbits, block_mode;
    long maxmaxcode;
    int n_bits;
    long maxcode, free_ent, oldcode;
    int finchar;
    uint64_t acc;          /* bits not yet used, lowest first */
    int nacc;
    long skip;             /* bits still to skip to the end of a group */
    long codes;            /* codes read since the width last changed (position in the group) */
    uint16_t prefix[TABLE];
    uint8_t suffix[TABLE];
    uint8_t stack[TABLE + 2];
    uint8_t *out;
    Py_ssize_t outpos;
} Decoder;

/* A new code width: 9 bits at the start and after CLEAR, one more on growth, where the
 * last entry may then reach the table's end (gzip's rule, applied on growth only). */
static void set_width(Decoder *d, int bits, int grown) {
    d->n_bits = bits;
    d->maxcode = grown && bits == d->maxbits ? d->maxmaxcode : (1L << bits) - 1;
    d->codes = 0;
}

/* Skip the rest of the current group of eight codes. */
static void end_group(Decoder *d) {
    long left = (8 - d->codes % 8) % 8;
    d->skip += left * d->n_bits;
}

static int flush(Decoder *d, PyObject *write) {
    if (!d->outpos)
        return 0;
    PyObject *piece = PyBytes_FromStringAndSize((const char *)d->out, d->outpos);
    d->outpos = 0;
    if (!piece)
        return -1;
    PyObject *r = PyObject_CallOneArg(write, piece);
    Py_DECREF(piece);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int put(Decoder *d, const uint8_t *bytes, Py_ssize_t n, PyObject *write) {
    while (n > 0) {
        Py_ssize_t room = OUT_SIZE - d->outpos, take = n < room ? n : room;
        memcpy(d->out + d->outpos, bytes, take);
        d->outpos += take;
        bytes += take;
        n -= take;
        if (d->outpos == OUT_SIZE && flush(d, write) < 0)
            return -1;
    }
    return 0;
}

static int Decoder_init(Decoder *d, PyObject *args, PyObject *kw) {
    int maxbits, block_mode;
    if (!PyArg_ParseTuple(args, "ip", &maxbits, &block_mode))
        return -1;
    if (maxbits < 0 || maxbits > 16) {
        PyErr_SetString(PyExc_ValueError, "maxbits must be 0..16");
        return -1;
    }
    d->maxbits = maxbits;
    d->block_mode = block_mode;
    d->maxmaxcode = 1L << maxbits;
    set_width(d, 9, 0);
    d->free_ent = block_mode ? 257 : 256;
    d->oldcode = -1;
    d->finchar = 0;
    d->acc = 0;
    d->nacc = 0;
    d->skip = 0;
    memset(d->prefix, 0, sizeof d->prefix);
    for (int i = 0; i < 256; i++)
        d->suffix[i] = (uint8_t)i;
    if (!d->out)
        d->out = PyMem_Malloc(OUT_SIZE);
    if (!d->out) {
        PyErr_NoMemory();
        return -1;
    }
    d->outpos = 0;
    return 0;
}

static void Decoder_dealloc(Decoder *d) {
    PyMem_Free(d->out);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

/* One code: 1 done, 0 needs more input, -1 error (exception set). */
static int step(Decoder *d, long code, PyObject *write) {
    if (d->oldcode == -1) {
        if (code >= 256) {
            PyErr_SetString(Corrupt, "first");
            return -1;
        }
        d->finchar = (int)code;
        d->oldcode = code;
        uint8_t byte = (uint8_t)code;
        return put(d, &byte, 1, write) < 0 ? -1 : 1;
    }
    if (code == 256 && d->block_mode) {
        end_group(d);
        d->free_ent = 256;
        set_width(d, 9, 0);
        return 1;
    }
    long incode = code;
    uint8_t *top = d->stack + sizeof d->stack, *sp = top;
    if (code >= d->free_ent) {
        if (code > d->free_ent) {
            if (flush(d, write) < 0)
                return -1;
            PyErr_SetString(Corrupt, "code");
            return -1;
        }
        *--sp = (uint8_t)d->finchar;
        code = d->oldcode;
    }
    while (code >= 256) {
        *--sp = d->suffix[code];
        code = d->prefix[code];
    }
    *--sp = (uint8_t)(d->finchar = d->suffix[code]);
    if (put(d, sp, top - sp, write) < 0)
        return -1;
    if (d->free_ent < d->maxmaxcode) {
        d->prefix[d->free_ent] = (uint16_t)d->oldcode;
        d->suffix[d->free_ent] = (uint8_t)d->finchar;
        d->free_ent++;
    }
    d->oldcode = incode;
    return 1;
}

static PyObject *Decoder_decompress(Decoder *d, PyObject *args) {
    Py_buffer view;
    PyObject *write;
    if (!PyArg_ParseTuple(args, "y*O", &view, &write))
        return NULL;
    const uint8_t *in = view.buf;
    Py_ssize_t n = view.len, pos = 0;
    int failed = 0;
    for (;;) {
        /* skip what is left of a group, from the held bits first */
        if (d->skip) {
            long held = d->skip < d->nacc ? d->skip : d->nacc;
            d->acc >>= held;
            d->nacc -= (int)held;
            d->skip -= held;
            long bytes = d->skip / 8;
            if (bytes > n - pos)
                bytes = n - pos;
            pos += bytes;
            d->skip -= bytes * 8;
            if (d->skip) {
                if (pos == n)
                    break;
                d->acc = in[pos++] >> d->skip;
                d->nacc = 8 - (int)d->skip;
                d->skip = 0;
            }
        }
        while (d->nacc < d->n_bits && pos < n) {
            d->acc |= (uint64_t)in[pos++] << d->nacc;
            d->nacc += 8;
        }
        if (d->nacc < d->n_bits)
            break;
        if (d->free_ent > d->maxcode) {  /* the next entry needs a wider code */
            end_group(d);
            set_width(d, d->n_bits + 1, 1);
            continue;
        }
        long code = (long)(d->acc & ((1u << d->n_bits) - 1));
        d->acc >>= d->n_bits;
        d->nacc -= d->n_bits;
        d->codes++;
        if (step(d, code, write) < 0) {
            failed = 1;
            break;
        }
    }
    PyBuffer_Release(&view);
    if (failed || flush(d, write) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Decoder_methods[] = {
    {"decompress", (PyCFunction)Decoder_decompress, METH_VARARGS,
     "decompress(data, write): decode more input, passing output to write in pieces"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "octoray.formats._lzw.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
    .tp_doc = "Decoder(maxbits, block_mode): a streaming LZW (.Z) decoder",
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lzw", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__lzw(void) {
    if (PyType_Ready(&DecoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Corrupt = PyErr_NewException("octoray.formats._lzw.Corrupt", NULL, NULL);
    if (!Corrupt || PyModule_AddObject(m, "Corrupt", Corrupt) < 0) {
        Py_XDECREF(Corrupt);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(Corrupt);
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) {
        Py_DECREF(&DecoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
