/* The C half of octoray.streams: a pipe's read finished without joining pieces.
 *
 * read_rest(fd, head, size) -> bytes: `head` (what a first read brought, shorter than
 *   `size`) followed by further reads of `fd` into the same new bytes object until it holds
 *   `size` bytes or the input ends.  A pipe delivers a 1 MiB read in several pieces when its
 *   writer is slower than the reader; joining them costs a second copy of every byte on
 *   the reading thread.  The GIL is released while reading; an interrupted read is retried
 *   after the signal handlers have run, as os.read does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

static PyObject *read_rest(PyObject *self, PyObject *args) {
    int fd;
    Py_buffer head;
    Py_ssize_t size;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*n", &fd, &head, &size))
        return NULL;
    if (size < head.len)
        size = head.len;
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (!out) {
        PyBuffer_Release(&head);
        return NULL;
    }
    char *buffer = PyBytes_AS_STRING(out);
    memcpy(buffer, head.buf, (size_t)head.len);
    Py_ssize_t filled = head.len;
    PyBuffer_Release(&head);
    while (filled < size) {
        ssize_t got;
        Py_BEGIN_ALLOW_THREADS
        got = read(fd, buffer + filled, (size_t)(size - filled));
        Py_END_ALLOW_THREADS
        if (got > 0) {
            filled += got;
        } else if (got == 0) {
            break;
        } else if (errno == EINTR) {
            if (PyErr_CheckSignals() < 0)
                goto failed;
        } else {
            PyErr_SetFromErrno(PyExc_OSError);
            goto failed;
        }
    }
    if (filled < size && _PyBytes_Resize(&out, filled) < 0)
        return NULL;
    return out;
failed:
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_rest", read_rest, METH_VARARGS,
     "read_rest(fd, head, size) -> head and further reads of fd, up to size bytes in all"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_streams", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__streams(void) {
    return PyModule_Create(&module);
}
