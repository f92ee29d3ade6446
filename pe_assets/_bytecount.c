/*
 * Byte histogram of a buffer: the only loop of the parser that must visit every byte of a file
 * (for the `entropy` field), so it is the one piece written in C.
 *
 * numpy's bincount converts every byte to a 64-bit index before counting (~0.9 ns a byte even
 * when counting byte pairs); this loop spreads consecutive bytes over four tables of 32-bit
 * counters, so a run of one value (PE files are full of zeros) does not serialise on one
 * counter, and runs at about 0.3 ns a byte. The GIL is released while counting.
 *
 * pe_assets.pe_parser falls back to numpy when this module is missing (no C compiler at
 * install time, or the package shipped to Spark workers as a zip): same counts, slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LANES 4
/* Bytes counted between folds into the 64-bit totals: a lane then holds at most a quarter of
 * this, far below the 2^32 limit of its counters. */
#define FOLD_BYTES ((size_t)1 << 30)

static void
count_bytes(const uint8_t *p, size_t n, uint64_t totals[256])
{
    uint32_t lanes[LANES][256];
    size_t i = 0;

    while (i < n) {
        size_t end = (n - i > FOLD_BYTES) ? i + FOLD_BYTES : n;

        memset(lanes, 0, sizeof lanes);
        for (; i + LANES <= end; i += LANES) {
            lanes[0][p[i]]++;
            lanes[1][p[i + 1]]++;
            lanes[2][p[i + 2]]++;
            lanes[3][p[i + 3]]++;
        }
        for (; i < end; i++) {
            lanes[0][p[i]]++;
        }

        for (int b = 0; b < 256; b++) {
            totals[b] += (uint64_t)lanes[0][b] + lanes[1][b] + lanes[2][b] + lanes[3][b];
        }
    }
}

static PyObject *
byte_counts(PyObject *module, PyObject *data)
{
    Py_buffer view;
    uint64_t totals[256] = {0};

    (void)module;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    count_bytes((const uint8_t *)view.buf, (size_t)view.len, totals);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);

    return PyBytes_FromStringAndSize((const char *)totals, sizeof totals);
}

static PyMethodDef methods[] = {
    {"byte_counts", byte_counts, METH_O,
     "byte_counts(buffer) -> bytes\n\n"
     "How often each byte value occurs in a contiguous buffer: 256 native-endian unsigned\n"
     "64-bit counts (read them with numpy.frombuffer(..., dtype=numpy.uint64))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_bytecount", "Byte histogram of a buffer, in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__bytecount(void)
{
    return PyModule_Create(&module_def);
}
