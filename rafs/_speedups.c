/* rafs._speedups: the hot path of chunk lookup, in C.
 *
 * Twin of rafs/_chunkmap.py: same functions, same results, same RafsError messages. Every offset
 * and count read from an image is bounds-checked against the buffer before use. The module keeps
 * no state: rafs.errors and rafs.model are looked up (in sys.modules) when needed.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NULL_ADDR 0xFFFFFFFFu

static inline uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

static PyObject *module_attr(const char *module, const char *name) {
    PyObject *modname = PyUnicode_FromString(module);
    if (!modname) return NULL;
    PyObject *m = PyImport_GetModule(modname);
    if (!m && !PyErr_Occurred()) m = PyImport_Import(modname);
    Py_DECREF(modname);
    if (!m) return NULL;
    PyObject *attr = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return attr;
}

/* raise rafs.errors.RafsError(message, structure=..., field=..., value=..., offset=...) */
static void raise_rafs(PyObject *message, const char *structure, const char *field,
                       PyObject *value, long long offset) {
    if (!message) return;
    PyObject *cls = module_attr("rafs.errors", "RafsError");
    PyObject *args = NULL, *kw = NULL, *exc = NULL, *off = NULL;
    if (!cls) goto done;
    args = PyTuple_Pack(1, message);
    kw = PyDict_New();
    if (!args || !kw) goto done;
    if (structure && PyDict_SetItemString(kw, "structure", PyUnicode_FromString(structure)) < 0) goto done;
    if (field && PyDict_SetItemString(kw, "field", PyUnicode_FromString(field)) < 0) goto done;
    if (value && PyDict_SetItemString(kw, "value", value) < 0) goto done;
    if (offset >= 0) {
        off = PyLong_FromLongLong(offset);
        if (!off || PyDict_SetItemString(kw, "offset", off) < 0) goto done;
    }
    exc = PyObject_Call(cls, args, kw);
    if (exc) PyErr_SetObject(cls, exc);
done:
    Py_XDECREF(off); Py_XDECREF(exc); Py_XDECREF(kw); Py_XDECREF(args); Py_XDECREF(cls);
    Py_DECREF(message);
    Py_XDECREF(value);
}

static void raise_short(const char *what, long long off, long long need, Py_ssize_t have) {
    PyObject *o = PyLong_FromLongLong(off);
    PyObject *hex = o ? PyNumber_ToBase(o, 16) : NULL;
    Py_XDECREF(o);
    if (!hex) return;
    PyObject *msg = PyUnicode_FromFormat("bootstrap is too short: need %lld bytes at %U, file has %zd",
                                         need, hex, have);
    Py_DECREF(hex);
    raise_rafs(msg, what, NULL, NULL, off);
}

/* an instance of tuple subclass `cls` (a NamedTuple) holding `items` (references stolen) */
static PyObject *make_tuple(PyObject *cls, PyObject **items, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (!items[i]) { for (Py_ssize_t j = 0; j < n; j++) Py_XDECREF(items[j]); return NULL; }
    PyTypeObject *t = (PyTypeObject *)cls;
    PyObject *obj = t->tp_alloc(t, n);
    if (!obj) { for (Py_ssize_t j = 0; j < n; j++) Py_DECREF(items[j]); return NULL; }
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(obj, i, items[i]);
    return obj;
}

static PyObject *piece(PyObject *piece_cls, PyObject *chunk, long long off, long long len) {
    PyObject *items[3] = {chunk, PyLong_FromLongLong(off), PyLong_FromLongLong(len)};
    return make_tuple(piece_cls, items, 3);
}

static PyObject *v5_pieces(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    long long rec_off, count, cs, fsize, nblobs, offset, size;
    if (!PyArg_ParseTuple(args, "y*LLLLLLL", &view, &rec_off, &count, &cs, &fsize, &nblobs,
                          &offset, &size))
        return NULL;
    PyObject *out = PyList_New(0), *info_cls = NULL, *piece_cls = NULL;
    long long end = offset + size < fsize ? offset + size : fsize;
    if (!out || offset < 0 || offset >= end || cs <= 0) goto finish;
    info_cls = module_attr("rafs.model", "ChunkInfo");
    piece_cls = module_attr("rafs.model", "ChunkPiece");
    if (!info_cls || !piece_cls) goto fail;
    const unsigned char *buf = view.buf;
    for (long long i = offset / cs; i <= (end - 1) / cs; i++) {
        long long base = i * cs;
        long long lo = offset > base ? offset : base, hi = end < base + cs ? end : base + cs;
        PyObject *p;
        if (i >= count) {  /* no records past here: the rest of the range is one hole */
            Py_INCREF(Py_None);
            p = piece(piece_cls, Py_None, 0, end - lo);
            if (!p || PyList_Append(out, p) < 0) { Py_XDECREF(p); goto fail; }
            Py_DECREF(p);
            break;
        } else {
            long long off = rec_off + 80 * i;
            if (off < 0 || off + 80 > view.len) { raise_short("chunk record", off, 80, view.len); goto fail; }
            const unsigned char *r = buf + off;
            uint32_t blob = rd32(r + 32), flags = rd32(r + 36), c_size = rd32(r + 40), d_size = rd32(r + 44);
            uint64_t c_off = rd64(r + 48), d_off = rd64(r + 56), file_off = rd64(r + 64);
            uint32_t index = rd32(r + 72), crc = rd32(r + 76);
            if ((long long)blob >= nblobs) {
                raise_rafs(PyUnicode_FromString("chunk refers to a blob not in the blob table"),
                           "chunk record", "blob_index", PyLong_FromUnsignedLong(blob), off + 32);
                goto fail;
            }
            if (d_size == 0 || (long long)d_size > cs || c_size == 0) {
                raise_rafs(PyUnicode_FromString("bad chunk size"), "chunk record",
                           "uncompressed_size", PyLong_FromUnsignedLong(d_size), off + 44);
                goto fail;
            }
            long long want = fsize - base < cs ? fsize - base : cs;
            if (file_off != (uint64_t)base || (long long)d_size != want) {
                raise_rafs(PyUnicode_FromFormat("chunk %lld does not cover bytes %lld..%lld", i, base, base + want),
                           "chunk record", "file_offset", PyLong_FromUnsignedLongLong(file_off), off + 64);
                goto fail;
            }
            PyObject *items[9] = {
                PyLong_FromUnsignedLong(blob), PyLong_FromUnsignedLong(index), PyLong_FromUnsignedLong(flags),
                PyLong_FromUnsignedLongLong(c_off), PyLong_FromUnsignedLong(c_size),
                PyLong_FromUnsignedLongLong(d_off), PyLong_FromUnsignedLong(d_size),
                PyBytes_FromStringAndSize((const char *)r, 32), PyLong_FromUnsignedLong(crc)};
            PyObject *chunk = make_tuple(info_cls, items, 9);
            if (!chunk) goto fail;
            p = piece(piece_cls, chunk, lo - base, hi - lo);
        }
        if (!p || PyList_Append(out, p) < 0) { Py_XDECREF(p); goto fail; }
        Py_DECREF(p);
    }
    goto finish;
fail:
    Py_CLEAR(out);
finish:
    Py_XDECREF(info_cls);
    Py_XDECREF(piece_cls);
    PyBuffer_Release(&view);
    return out;
}

static PyObject *v6_indexes(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    long long idx_off, cs, fsize, offset, size;
    if (!PyArg_ParseTuple(args, "y*LLLLL", &view, &idx_off, &cs, &fsize, &offset, &size))
        return NULL;
    PyObject *out = PyList_New(0);
    long long end = offset + size < fsize ? offset + size : fsize;
    if (!out || offset < 0 || offset >= end || cs <= 0) goto finish;
    for (long long i = offset / cs; i <= (end - 1) / cs; i++) {
        long long base = i * cs;
        long long lo = offset > base ? offset : base, hi = end < base + cs ? end : base + cs;
        long long off = idx_off + 8 * i;
        if (off < 0 || off + 8 > view.len) { raise_short("chunk index", off, 8, view.len); goto fail; }
        const unsigned char *r = (const unsigned char *)view.buf + off;
        uint16_t lo16 = rd16(r), hi16 = rd16(r + 2);
        uint32_t blkaddr = rd32(r + 4);
        long long want = fsize - base < cs ? fsize - base : cs;
        PyObject *t;
        if (blkaddr == NULL_ADDR)
            t = Py_BuildValue("(iiiLiLL)", -1, 0, 0, want, 0, hi - lo, off);
        else
            t = Py_BuildValue("(ikkLLLL)", (int)(hi16 & 0xFF) - 1,
                              (unsigned long)(((uint32_t)(hi16 >> 8) << 16) | lo16),
                              (unsigned long)blkaddr, want, lo - base, hi - lo, off);
        if (!t || PyList_Append(out, t) < 0) { Py_XDECREF(t); goto fail; }
        Py_DECREF(t);
    }
    goto finish;
fail:
    Py_CLEAR(out);
finish:
    PyBuffer_Release(&view);
    return out;
}

static PyObject *ci_entry(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    long long version, count, index;
    if (!PyArg_ParseTuple(args, "y*LLL", &view, &version, &count, &index)) return NULL;
    PyObject *res = NULL;
    long long width = version == 2 ? 24 : 16;
    if (index < 0 || index >= count) {
        raise_rafs(PyUnicode_FromString("chunk index beyond the ci table"), "blob meta", "chunk_index",
                   PyLong_FromLongLong(index), -1);
    } else if ((index + 1) * width > view.len) {
        raise_rafs(PyUnicode_FromString("ci table shorter than its entry count"), "blob meta",
                   "chunk_index", PyLong_FromLongLong(index), -1);
    } else {
        const unsigned char *r = (const unsigned char *)view.buf + index * width;
        uint64_t d = rd64(r), c = rd64(r + 8);
        if (version != 2) {
            uint64_t d_size = ((d >> 44) | ((d & 0xF00) << 12)) + 1;
            uint64_t c_size = ((c >> 44) | ((c & 0xF0000000000ULL) >> 20)) + 1;
            res = Py_BuildValue("(KKKKi)", (unsigned long long)(c & 0xFFFFFFFFFFULL), (unsigned long long)c_size,
                                (unsigned long long)(d & 0x00000FFFFFFFF000ULL), (unsigned long long)d_size,
                                c_size != d_size ? 1 : 0);
        } else {
            res = Py_BuildValue("(KKKKK)", (unsigned long long)(c & 0xFFFFFFFFFFULL), (unsigned long long)(c >> 40),
                                (unsigned long long)((d & 0xFFFFFFFFULL) << 12),
                                (unsigned long long)(((d >> 32) & 0xFFFFFF) + 1), (unsigned long long)(d >> 56));
        }
    }
    PyBuffer_Release(&view);
    return res;
}

static PyMethodDef methods[] = {
    {"v5_pieces", v5_pieces, METH_VARARGS, "Chunk pieces of a byte range of a RAFS v5 file."},
    {"v6_indexes", v6_indexes, METH_VARARGS, "Decoded chunk indexes of a byte range of a RAFS v6 file."},
    {"ci_entry", ci_entry, METH_VARARGS, "One entry of a blob's ci table (v1 or v2)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {{0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rafs._speedups", "C speedups for RAFS chunk lookup.", 0, methods, slots,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModuleDef_Init(&module); }
