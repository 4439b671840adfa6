/* mallopt for octoray.engine.allocator: the one C call it needs, without importing ctypes
 * (about 2 ms of fgzip's start-up, a visible share of a parallel `fgzip -d`).
 *
 * mallopt(option, value) -> bool: glibc's mallopt; False where the C library is not glibc.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

static PyObject *set_option(PyObject *self, PyObject *args) {
    int option, value;
    (void)self;
    if (!PyArg_ParseTuple(args, "ii", &option, &value))
        return NULL;
#if defined(__GLIBC__)
    return PyBool_FromLong(mallopt(option, value) == 1);
#else
    (void)option;
    (void)value;
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"mallopt", set_option, METH_VARARGS, "mallopt(option, value) -> whether glibc accepted it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_malloc", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__malloc(void) {
    return PyModule_Create(&module);
}
