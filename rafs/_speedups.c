/* rafs._speedups: the hot path of RAFS reads, in C: chunk lookup, fetch runs, directory search.
 *
 * Twin of rafs/_chunkmap.py and rafs/_dirsearch.py, which are the reference: same functions, same
 * results, same errors (type and message). v5_pieces cuts a file range into pieces of its v5 chunk
 * records; v6_pieces does it from v6 chunk indexes, resolving each as v6_chunk does: the record
 * found through the chunk map (a dict keyed by chunk_key, see the twin) gives digest and crc, the
 * blob's ci table (when given) offsets, sizes and flags; chunk_map builds that map from the
 * bootstrap's chunk table. ci_entry decodes one ci table entry.
 * merge_runs groups chunks into runs of adjacent compressed ranges; find_dirent and v5_find_child
 * search a v6 or v5 directory for one name (twins in rafs/_dirsearch.py).
 *
 * Every offset and count read from an image, and every position taken from the chunk map, is
 * bounds-checked before use. An int argument beyond 64 bits gets the twin's answer (see "beyond 64
 * bits" below). The module keeps no state: the result classes come with each call (the `types`
 * argument, rafs.model.PIECE_TYPES), the error classes are looked up only when raising. Speed comes from building
 * the results directly (untracked instances of the NamedTuple classes, the chunk-size int shared by every
 * full-size length, a list preallocated to its final size) and, for v6, from looking up a batch
 * of records ahead and prefetching them: the chunk table is sorted by digest, so the records of
 * one read are scattered and would each cost a cache miss.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define NULL_ADDR 0xFFFFFFFFu
#define REC_SIZE 80
#define CI_V2_COMPRESSED 0x1
#define CI_V2_UNSUPPORTED 0xE /* zran, batch, encrypted */
#define CI_V2_KNOWN 0x1F
#define CHUNK_HAS_CRC32 0x10
#define BATCH 64          /* v6 chunk indexes whose records are looked up ahead */
#define HINT_NONE (-1)    /* looked up ahead: no record */
#define HINT_UNKNOWN (-2) /* not looked up ahead */

static inline uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | ((uint64_t)rd32(p + 4) << 32); }

/* -- module lookups and errors ------------------------------------------------------------------ */

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

/* raise rafs.errors.RafsError(message, structure=..., field=..., value=..., offset=...); every
 * part is stolen, and a NULL one is not passed (its default applies) */
static void raise_rafs_o(PyObject *message, PyObject *structure, PyObject *field, PyObject *value,
                         PyObject *offset) {
    PyObject *cls = NULL, *args = NULL, *kw = NULL, *exc = NULL;
    if (!message || PyErr_Occurred()) goto done;
    if (!(cls = module_attr("rafs.errors", "RafsError"))) goto done;
    if (!(args = PyTuple_Pack(1, message)) || !(kw = PyDict_New())) goto done;
    if (structure && PyDict_SetItemString(kw, "structure", structure) < 0) goto done;
    if (field && PyDict_SetItemString(kw, "field", field) < 0) goto done;
    if (value && PyDict_SetItemString(kw, "value", value) < 0) goto done;
    if (offset && PyDict_SetItemString(kw, "offset", offset) < 0) goto done;
    if ((exc = PyObject_Call(cls, args, kw))) PyErr_SetObject(cls, exc);
done:
    Py_XDECREF(exc); Py_XDECREF(kw); Py_XDECREF(args); Py_XDECREF(cls);
    Py_XDECREF(message); Py_XDECREF(structure); Py_XDECREF(field); Py_XDECREF(value); Py_XDECREF(offset);
}

/* raise_rafs_o with structure and field given as C strings (NULL: not passed) */
static void raise_rafs(PyObject *message, const char *structure, const char *field,
                       PyObject *value, PyObject *offset) {
    raise_rafs_o(message, structure ? PyUnicode_FromString(structure) : NULL,
                 field ? PyUnicode_FromString(field) : NULL, value, offset);
}

/* rafs.buf.Buf.check's RafsError: `what` needs `need` bytes at `off` (stolen), the buffer has `have` */
static void raise_short_at(const char *what, PyObject *off, long long need, Py_ssize_t have) {
    PyObject *hex = off ? PyNumber_ToBase(off, 16) : NULL;
    PyObject *msg = hex ? PyUnicode_FromFormat("bootstrap is too short: need %lld bytes at %U, "
                                               "file has %zd", need, hex, have) : NULL;
    Py_XDECREF(hex);
    if (!msg) {
        Py_XDECREF(off);
        return;
    }
    raise_rafs(msg, what, NULL, NULL, off);
}

static void raise_short(const char *what, long long off, long long need, Py_ssize_t have) {
    raise_short_at(what, PyLong_FromLongLong(off), need, have);
}

/* -- arguments and ranges ------------------------------------------------------------------------ */

static int check_nargs(const char *fn, Py_ssize_t nargs, Py_ssize_t want) {
    if (nargs == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", fn, want, nargs);
    return -1;
}

/* args[0..n) as C long longs */
static int ll_args(PyObject *const *args, Py_ssize_t n, long long *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* the end of a read of `size` bytes at `offset`, min(offset + size, file_size); 0 when the range
 * is empty or the chunk size is not positive */
static int read_range(long long offset, long long size, long long fsize, long long cs, long long *end) {
    if (offset < 0 || size <= 0 || cs <= 0 || offset >= fsize) return 0;
    *end = size > fsize - offset ? fsize : offset + size;
    return 1;
}

/* the position start + step * i of table entry i, if [pos, pos + step) lies inside a buffer of
 * `len` bytes (1); else 0 */
static inline int entry_fits(long long start, long long step, long long i, Py_ssize_t len, long long *pos) {
    long long t;
    return !__builtin_mul_overflow(step, i, &t) && !__builtin_add_overflow(start, t, pos) && *pos >= 0 &&
           *pos <= len - step;
}

/* entry_fits, raising the twin's "too short" RafsError (exact even past 64 bits) when it fails */
static int entry_pos(const char *what, long long start, long long step, long long i, Py_ssize_t len,
                     long long *pos) {
    long long t;
    if (entry_fits(start, step, i, len, pos)) return 0;
    if (!__builtin_mul_overflow(step, i, &t) && !__builtin_add_overflow(start, t, pos)) {
        raise_short(what, *pos, step, len);
        return -1;
    }
    PyObject *a = PyLong_FromLongLong(start), *b = PyLong_FromLongLong(step), *c = PyLong_FromLongLong(i);
    PyObject *bc = a && b && c ? PyNumber_Multiply(b, c) : NULL;
    PyObject *exact = bc ? PyNumber_Add(a, bc) : NULL;
    Py_XDECREF(a); Py_XDECREF(b); Py_XDECREF(c); Py_XDECREF(bc);
    if (exact) raise_short_at(what, exact, step, len);
    return -1;
}

/* -- results ------------------------------------------------------------------------------------- */

/* What one call builds its results with: the ChunkInfo and ChunkPiece types passed in, the chunk
 * size as an int, and the result list, preallocated to the expected number of pieces when that is sane. */
typedef struct {
    PyTypeObject *info, *piece;
    PyObject *cs;
    long long cs_val;
    PyObject *list;
    Py_ssize_t filled;
} Out;

/* a subclass of tuple laid out exactly as tuple (no __dict__, __weakref__ or slots), which
 * make_tuple can allocate */
static int plain_tuple_type(PyTypeObject *t) {
    return PyType_Check(t) && PyType_IsSubtype(t, &PyTuple_Type) && t->tp_basicsize == PyTuple_Type.tp_basicsize &&
           t->tp_itemsize == PyTuple_Type.tp_itemsize && t->tp_dictoffset == 0 && t->tp_weaklistoffset == 0 &&
           PyType_HasFeature(t, Py_TPFLAGS_HAVE_GC) &&
           /* not a struct sequence (os.stat_result, time.struct_time): tuple layout, but hidden
            * fields past the items and its own dealloc; those are never subclassable */
           PyType_HasFeature(t, Py_TPFLAGS_BASETYPE);
}

/* the result types argument, (ChunkInfo, ChunkPiece) (borrowed: the caller holds them for the
 * call), checked as the twin checks it */
static int result_types(PyObject *types, Out *o) {
    if (!PyTuple_CheckExact(types) || PyTuple_GET_SIZE(types) != 2 ||
        !plain_tuple_type((PyTypeObject *)PyTuple_GET_ITEM(types, 0)) ||
        !plain_tuple_type((PyTypeObject *)PyTuple_GET_ITEM(types, 1))) {
        PyErr_SetString(PyExc_TypeError, "types must be (ChunkInfo, ChunkPiece): two tuple types "
                                         "with no slots of their own (NamedTuples)");
        return -1;
    }
    o->info = (PyTypeObject *)PyTuple_GET_ITEM(types, 0);
    o->piece = (PyTypeObject *)PyTuple_GET_ITEM(types, 1);
    return 0;
}

/* expect: the number of pieces the call makes unless it fails; -1: no list. The result types are
 * set already (result_types). */
static int out_open(Out *o, long long cs, long long expect) {
    o->cs_val = cs;
    o->filled = 0;
    if (!(o->cs = PyLong_FromLongLong(cs))) return -1;
    if (expect >= 0) o->list = PyList_New((Py_ssize_t)expect);
    return expect < 0 || o->list ? 0 : -1;
}

/* the result list (trimmed to the pieces made), or NULL after an error; releases the rest */
static PyObject *out_close(Out *o, int ok) {
    PyObject *list = o->list;
    if (list && ok && o->filled < PyList_GET_SIZE(list) &&
        PyList_SetSlice(list, o->filled, PyList_GET_SIZE(list), NULL) < 0)
        ok = 0;
    if (!ok) Py_CLEAR(list);
    Py_XDECREF(o->cs);
    return list;
}

/* an int; the shared chunk-size int when equal to it */
static inline PyObject *num(const Out *o, uint64_t v) {
    if (v == (uint64_t)o->cs_val) {
        Py_INCREF(o->cs);
        return o->cs;
    }
    return v <= (uint64_t)LLONG_MAX ? PyLong_FromLongLong((long long)v) : PyLong_FromUnsignedLongLong(v);
}

static inline PyObject *unum(uint64_t v) {
    return v <= (uint64_t)LLONG_MAX ? PyLong_FromLongLong((long long)v) : PyLong_FromUnsignedLongLong(v);
}

/* an instance of NamedTuple class `t` holding `items` (stolen, any may be NULL after an error).
 * It is left untracked by the cycle collector, as CPython does with plain tuples that hold only
 * atomic objects: the items are ints, bytes, None and untracked ChunkInfos, so it can be in no
 * cycle. (CPython untracks exact tuples only; NamedTuple instances would stay tracked and make every
 * collection walk them.) Allocated without tp_alloc's zeroing and tracking: every item is set
 * before the object is returned. */
static PyObject *make_tuple(PyTypeObject *t, PyObject **items, Py_ssize_t n) {
    PyObject *obj = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!items[i]) goto fail;
    if (!(obj = (PyObject *)PyObject_GC_NewVar(PyVarObject, t, n))) goto fail;
#if PY_VERSION_HEX >= 0x030E0000
    ((PyTupleObject *)obj)->ob_hash = -1; /* 3.14 caches a tuple's hash: "not computed yet" */
#endif
    for (Py_ssize_t i = 0; i < n; i++) PyTuple_SET_ITEM(obj, i, items[i]);
    return obj;
fail:
    for (Py_ssize_t i = 0; i < n; i++) Py_XDECREF(items[i]);
    return NULL;
}

/* ChunkInfo(blob, index, flags, c_off, c_size, d_off, d_size, digest, crc) */
static PyObject *make_info(const Out *o, uint32_t blob, uint32_t index, uint32_t flags, uint64_t c_off,
                           uint64_t c_size, uint64_t d_off, uint64_t d_size, const unsigned char *digest,
                           uint32_t crc) {
    PyObject *items[9] = {
        PyLong_FromLong((long)blob), PyLong_FromLong((long)index), PyLong_FromLong((long)flags),
        unum(c_off), num(o, c_size), unum(d_off), num(o, d_size),
        PyBytes_FromStringAndSize((const char *)digest, 32), PyLong_FromLong((long)crc)};
    return make_tuple(o->info, items, 9);
}

/* add ChunkPiece(chunk, off, len) to the result; `chunk` is stolen (NULL: an error is set) */
static int add_piece(Out *o, PyObject *chunk, long long off, long long len) {
    PyObject *items[3] = {chunk, PyLong_FromLongLong(off), num(o, (uint64_t)len)};
    PyObject *p = make_tuple(o->piece, items, 3);
    if (!p) return -1;
    if (o->filled < PyList_GET_SIZE(o->list)) {
        PyList_SET_ITEM(o->list, o->filled++, p);
        return 0;
    }
    int r = PyList_Append(o->list, p);
    Py_DECREF(p);
    o->filled += r == 0;
    return r;
}

/* -- v5 ------------------------------------------------------------------------------------------- */

static PyObject *v5_pieces_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[7], end;
    Out o = {0};
    if (check_nargs("v5_pieces", nargs, 9) < 0 || result_types(args[8], &o) < 0 ||
        ll_args(args + 1, 7, a) < 0)
        return NULL;
    long long rec_off = a[0], count = a[1], cs = a[2], fsize = a[3], nblobs = a[4], offset = a[5],
              size = a[6];
    if (!read_range(offset, size, fsize, cs, &end)) return PyList_New(0);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *buf = view.buf;
    long long first = offset / cs, last = (end - 1) / cs;
    /* pieces: one per record in range, then one hole if the records end first; a count past what
     * the buffer can hold fails before the list fills, so it is not preallocated */
    long long expect = first >= count ? 1 : (last < count ? last : count - 1) - first + 1 + (last >= count);
    if (out_open(&o, cs, expect <= view.len / REC_SIZE + 1 ? expect : 0) < 0) goto fail;
    for (long long i = first; i <= last; i++) {
        long long base = i * cs;
        long long lo = offset > base ? offset : base, hi = cs > end - base ? end : base + cs;
        if (i >= count) { /* no records past here: the rest of the range is one hole */
            Py_INCREF(Py_None);
            if (add_piece(&o, Py_None, 0, end - lo) < 0) goto fail;
            break;
        }
        long long off;
        if (entry_pos("chunk record", rec_off, REC_SIZE, i, view.len, &off) < 0) goto fail;
        const unsigned char *r = buf + off;
        uint32_t blob = rd32(r + 32), c_size = rd32(r + 40), d_size = rd32(r + 44);
        uint64_t file_off = rd64(r + 64);
        if ((long long)blob >= nblobs) {
            raise_rafs(PyUnicode_FromString("chunk refers to a blob not in the blob table"), "chunk record",
                       "blob_index", PyLong_FromUnsignedLong(blob), PyLong_FromLongLong(off + 32));
            goto fail;
        }
        if (d_size == 0 || (long long)d_size > cs || c_size == 0) {
            raise_rafs(PyUnicode_FromString("bad chunk size"), "chunk record", "uncompressed_size",
                       PyLong_FromUnsignedLong(d_size), PyLong_FromLongLong(off + 44));
            goto fail;
        }
        long long want = cs > fsize - base ? fsize - base : cs;
        if (file_off != (uint64_t)base || (long long)d_size != want) {
            raise_rafs(PyUnicode_FromFormat("chunk %lld does not cover bytes %lld..%lld", i, base, base + want),
                       "chunk record", "file_offset", PyLong_FromUnsignedLongLong(file_off),
                       PyLong_FromLongLong(off + 64));
            goto fail;
        }
        PyObject *chunk = make_info(&o, blob, rd32(r + 72), rd32(r + 36), rd64(r + 48), c_size, rd64(r + 56),
                                    d_size, r, rd32(r + 76));
        if (add_piece(&o, chunk, lo - base, hi - lo) < 0) goto fail;
    }
    PyBuffer_Release(&view);
    return out_close(&o, 1);
fail:
    PyBuffer_Release(&view);
    return out_close(&o, 0);
}

/* -- ci tables ------------------------------------------------------------------------------------ */

static inline long long ci_width(long long version) { return version == 2 ? 24 : 16; }

/* Decode entry `index` of a ci table of `fits` whole entries into e = (c_off, c_size, d_off,
 * d_size, v2 flags). */
static int ci_decode(const unsigned char *data, long long fits, long long version, long long count,
                     long long index, uint64_t e[5]) {
    if (index < 0 || index >= count) {
        raise_rafs(PyUnicode_FromString("chunk index beyond the ci table"), "blob meta", "chunk_index",
                   PyLong_FromLongLong(index), NULL);
        return -1;
    }
    if (index >= fits) {
        raise_rafs(PyUnicode_FromString("ci table shorter than its entry count"), "blob meta", "chunk_index",
                   PyLong_FromLongLong(index), NULL);
        return -1;
    }
    const unsigned char *r = data + index * ci_width(version);
    uint64_t d = rd64(r), c = rd64(r + 8);
    e[0] = c & 0xFFFFFFFFFFULL;
    if (version != 2) {
        e[1] = ((c >> 44) | ((c & 0xF0000000000ULL) >> 20)) + 1;
        e[2] = d & 0x00000FFFFFFFF000ULL;
        e[3] = ((d >> 44) | ((d & 0xF00) << 12)) + 1;
        e[4] = e[1] != e[3];
    } else {
        e[1] = c >> 40;
        e[2] = (d & 0xFFFFFFFFULL) << 12;
        e[3] = ((d >> 32) & 0xFFFFFF) + 1;
        e[4] = d >> 56;
    }
    return 0;
}

/* hex(v) */
static PyObject *hex_of(uint64_t v) {
    PyObject *n = unum(v), *h = n ? PyNumber_ToBase(n, 16) : NULL;
    Py_XDECREF(n);
    return h;
}

/* the chunk flags of the flags ci_decode gave (twin: ci_flags) */
static int ci_flags(uint64_t f, long long version, long long index, uint32_t *flags) {
    if (version != 2) {
        *flags = f ? 1 : 0;
        return 0;
    }
    if (f & CI_V2_UNSUPPORTED) {
        PyObject *cls = module_attr("rafs.errors", "UnsupportedImageError"), *hex = hex_of(f);
        PyObject *detail = hex ? PyUnicode_FromFormat("ci v2 flags %U on chunk %lld", hex, index) : NULL;
        PyObject *exc = cls && detail ? PyObject_CallFunction(cls, "sO", "zran/batch/encrypted chunks", detail)
                                      : NULL;
        if (exc) PyErr_SetObject(cls, exc);
        Py_XDECREF(exc); Py_XDECREF(detail); Py_XDECREF(hex); Py_XDECREF(cls);
        return -1;
    }
    if (f & ~(uint64_t)CI_V2_KNOWN) {
        raise_rafs(PyUnicode_FromString("unknown ci v2 chunk flags"), "blob meta", "flags", hex_of(f), NULL);
        return -1;
    }
    *flags = f & CI_V2_COMPRESSED ? 1 : 0;
    return 0;
}

static PyObject *ci_entry_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[3];
    if (check_nargs("ci_entry", nargs, 4) < 0 || ll_args(args + 1, 3, a) < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t e[5];
    PyObject *res = NULL;
    if (ci_decode(view.buf, view.len / ci_width(a[0]), a[0], a[1], a[2], e) == 0)
        res = Py_BuildValue("(NNNNN)", unum(e[0]), unum(e[1]), unum(e[2]), unum(e[3]), unum(e[4]));
    PyBuffer_Release(&view);
    return res;
}

/* -- v6 ------------------------------------------------------------------------------------------- */

/* What resolving v6 chunks needs besides the result classes. */
typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    long long bs, nblobs;
    uint64_t max_blk; /* the largest block address whose offset fits in 64 bits (bs > 0) */
    PyObject *map; /* dict: chunk_key -> position of an 80-byte chunk table record */
    PyObject *ci;  /* list or tuple, by blob: None or (data, version, count) */
    /* the ci table last used (a reference is held on its data while in use) */
    long long ci_blob; /* -1: none yet */
    PyObject *ci_obj;
    Py_buffer ci_view;
    long long ci_version, ci_count, ci_fits; /* ci_fits: whole entries in the data */
} V6;

/* args: block_size, blob_count, chunk_map, ci_tables */
static int v6_open(V6 *v, PyObject *const *args, const Py_buffer *view) {
    v->buf = view->buf;
    v->len = view->len;
    v->map = args[2];
    v->ci = args[3];
    v->ci_blob = -1;
    v->ci_obj = NULL;
    if ((v->bs = PyLong_AsLongLong(args[0])) == -1 && PyErr_Occurred()) return -1;
    if ((v->nblobs = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred()) return -1;
    v->max_blk = v->bs > 0 ? UINT64_MAX / (uint64_t)v->bs : 0;
    if (!PyDict_Check(v->map)) {
        PyErr_SetString(PyExc_TypeError, "chunk_map must be a dict");
        return -1;
    }
    if (!PyList_Check(v->ci) && !PyTuple_Check(v->ci)) {
        PyErr_SetString(PyExc_TypeError, "ci_tables must be a list or a tuple");
        return -1;
    }
    return 0;
}

static void v6_release_ci(V6 *v) {
    if (v->ci_obj) {
        PyBuffer_Release(&v->ci_view);
        Py_CLEAR(v->ci_obj);
    }
    v->ci_blob = -1;
}

/* make blob's ci table the current one: 1 it has one, 0 it has none, -1 error */
static int v6_ci_table(V6 *v, long long blob) {
    if (blob == v->ci_blob) return v->ci_obj != NULL;
    v6_release_ci(v);
    PyObject *t = blob < PySequence_Fast_GET_SIZE(v->ci) ? PySequence_Fast_GET_ITEM(v->ci, blob) : Py_None;
    if (t == Py_None) {
        v->ci_blob = blob;
        return 0;
    }
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
        PyErr_SetString(PyExc_TypeError, "a ci table must be None or (data, version, count)");
        return -1;
    }
    Py_INCREF(t); /* int conversions may run Python code */
    int r = -1;
    if ((v->ci_version = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 1))) == -1 && PyErr_Occurred()) goto done;
    if ((v->ci_count = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 2))) == -1 && PyErr_Occurred()) goto done;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(t, 0), &v->ci_view, PyBUF_SIMPLE) < 0) goto done;
    v->ci_fits = v->ci_view.len / ci_width(v->ci_version);
    v->ci_obj = PyTuple_GET_ITEM(t, 0);
    Py_INCREF(v->ci_obj);
    v->ci_blob = blob;
    r = 1;
done:
    Py_DECREF(t);
    return r;
}

/* look up (blob, c_index, blkaddr) in the chunk map: 1 found (*pos unchecked, -1 if it does not
 * fit in 64 bits; *val is the map's value, a new reference: its __index__ may take it out of the
 * map), 0 none, -1 error */
static int v6_lookup(const V6 *v, long long blob, long long c_index, long long blkaddr, long long *pos,
                     PyObject **val) {
    if (blob < 0 || blob > 0xFF || c_index < 0 || c_index > 0xFFFFFF || blkaddr < 0 || blkaddr > 0xFFFFFFFFLL)
        return 0; /* no chunk_key: no record */
    PyObject *key = PyLong_FromUnsignedLongLong(((uint64_t)blob << 56) | ((uint64_t)c_index << 32) |
                                                (uint64_t)blkaddr);
    if (!key) return -1;
    *val = PyDict_GetItemWithError(v->map, key);
    Py_DECREF(key);
    if (!*val) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(*val);
    int overflow;
    *pos = PyLong_AsLongLongAndOverflow(*val, &overflow);
    if (*pos == -1 && PyErr_Occurred()) {
        Py_CLEAR(*val);
        return -1;
    }
    if (overflow) *pos = -1;
    return 1;
}

static inline int record_fits(const V6 *v, long long pos) { return pos >= 0 && pos <= v->len - REC_SIZE; }

/* the checked position of the chunk table record of (blob, c_index, blkaddr): 1 found, 0 none,
 * -1 error */
static int v6_record(const V6 *v, long long blob, long long c_index, long long blkaddr, long long *pos) {
    PyObject *val = NULL;
    int found = v6_lookup(v, blob, c_index, blkaddr, pos, &val);
    if (found == 1 && !record_fits(v, *pos)) {
        /* the position as converted (the value's __index__ is not run again); the value itself
         * only when it does not fit in 64 bits, so that the message shows it whole */
        PyObject *shown = *pos == -1 ? val : PyLong_FromLongLong(*pos);
        if (shown != val) Py_DECREF(val);
        raise_short_at("chunk table", shown, REC_SIZE, v->len); /* steals shown */
        return -1;
    }
    if (found == 1) Py_DECREF(val);
    return found;
}

/* The ChunkInfo of chunk c_index of blob `blob`, `want` bytes at block blkaddr, named by the chunk
 * index at `where` (-1: none); twin: v6_chunk. hint: the record's position if known, HINT_NONE if
 * known to have none, else HINT_UNKNOWN. */
static PyObject *v6_resolve(V6 *v, const Out *o, long long blob, long long c_index, long long blkaddr,
                            long long want, long long where, long long hint) {
    if (blob < 0 || blob >= v->nblobs) {
        raise_rafs(PyUnicode_FromString("chunk index names a blob not in the blob table"), "chunk index",
                   "device_id", PyLong_FromLongLong(blob + 1), PyLong_FromLongLong(where));
        return NULL;
    }
    long long pos = hint;
    int found = hint >= 0 ? 1 : hint == HINT_NONE ? 0 : v6_record(v, blob, c_index, blkaddr, &pos);
    if (found < 0) return NULL;
    const unsigned char *rec = found ? v->buf + pos : NULL;
    uint32_t rflags = rec ? rd32(rec + 36) : 0, flags;
    uint64_t c_off, c_size, d_off, d_size;
    int has_ci = v6_ci_table(v, blob);
    if (has_ci < 0) return NULL;
    if (has_ci) {
        uint64_t e[5];
        if (ci_decode(v->ci_view.buf, v->ci_fits, v->ci_version, v->ci_count, c_index, e) < 0 ||
            ci_flags(e[4], v->ci_version, c_index, &flags) < 0)
            return NULL;
        c_off = e[0], c_size = e[1], d_off = e[2], d_size = e[3];
        flags |= rflags & CHUNK_HAS_CRC32;
    } else if (!rec) {
        raise_rafs(PyUnicode_FromString("chunk has no chunk table record and no ci table is loaded"),
                   "chunk index", "chunk_index", PyLong_FromLongLong(c_index), PyLong_FromLongLong(where));
        return NULL;
    } else {
        flags = rflags;
        c_size = rd32(rec + 40), d_size = rd32(rec + 44), c_off = rd64(rec + 48), d_off = rd64(rec + 56);
    }
    /* d_off == blkaddr * block_size, in exact arithmetic */
    int at = v->bs > 0 ? blkaddr >= 0 && (uint64_t)blkaddr <= v->max_blk &&
                             d_off == (uint64_t)blkaddr * (uint64_t)v->bs
                       : d_off == 0 && (v->bs == 0 || blkaddr == 0);
    if (!at || want < 0 || d_size != (uint64_t)want || c_size == 0) {
        raise_rafs(PyUnicode_FromFormat("chunk %lld of blob %lld disagrees with its index "
                                        "(offset %llu vs block %lld, size %llu vs %lld)",
                                        c_index, blob, (unsigned long long)d_off, blkaddr,
                                        (unsigned long long)d_size, want),
                   "chunk index", "blkaddr", PyLong_FromLongLong(blkaddr), PyLong_FromLongLong(where));
        return NULL;
    }
    if (!rec) {
        raise_rafs(PyUnicode_FromString("chunk has no digest in the chunk table"), "chunk index",
                   "chunk_index", PyLong_FromLongLong(c_index), PyLong_FromLongLong(where));
        return NULL;
    }
    /* a record was found, so blob and c_index fit chunk_key's 8 and 24 bits */
    return make_info(o, (uint32_t)blob, (uint32_t)c_index, flags, c_off, c_size, d_off, d_size, rec,
                     rd32(rec + 76));
}

/* the chunk index at r: blob index (-1: none), chunk index, block address (NULL_ADDR: hole) */
static inline void v6_index(const unsigned char *r, long long *blob, long long *c_index, long long *blkaddr) {
    uint16_t lo16 = rd16(r), hi16 = rd16(r + 2);
    *blob = (long long)(hi16 & 0xFF) - 1;
    *c_index = ((long long)(hi16 >> 8) << 16) | lo16;
    *blkaddr = rd32(r + 4);
}

/* First pass over the n chunk indexes from index i: look up each chunk's record and prefetch it
 * and its ci entry, so that they load while the second pass builds the results. Raises nothing:
 * it stops where the second pass may meet an error, leaving HINT_UNKNOWN there and after. */
static void v6_prefetch(V6 *v, long long idx_off, long long i, long long n, long long *hint) {
    long long k = 0;
    for (; k < n; k++) {
        long long off, blob, c_index, blkaddr, pos;
        PyObject *val;
        if (!entry_fits(idx_off, 8, i + k, v->len, &off)) break;
        v6_index(v->buf + off, &blob, &c_index, &blkaddr);
        hint[k] = HINT_NONE;
        if (blkaddr == NULL_ADDR || blob < 0) continue; /* a hole */
        if (blob >= v->nblobs) break;
        int found = v6_lookup(v, blob, c_index, blkaddr, &pos, &val);
        if (found == 1) Py_DECREF(val);
        if (found < 0 || v6_ci_table(v, blob) < 0) {
            PyErr_Clear();
            break;
        }
        if (v->ci_obj && c_index < v->ci_fits)
            __builtin_prefetch((const char *)v->ci_view.buf + c_index * ci_width(v->ci_version));
        if (found) {
            if (!record_fits(v, pos)) break;
            __builtin_prefetch(v->buf + pos);
            __builtin_prefetch(v->buf + pos + REC_SIZE - 1);
            hint[k] = pos;
        }
    }
    for (; k < n; k++) hint[k] = HINT_UNKNOWN;
}

static PyObject *v6_pieces_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[5], end;
    Out o = {0};
    if (check_nargs("v6_pieces", nargs, 11) < 0 || result_types(args[10], &o) < 0 ||
        ll_args(args + 1, 5, a) < 0)
        return NULL;
    long long idx_off = a[0], cs = a[1], fsize = a[2], offset = a[3], size = a[4];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    V6 v;
    if (v6_open(&v, args + 6, &view) < 0) goto fail;
    if (!read_range(offset, size, fsize, cs, &end)) {
        PyBuffer_Release(&view);
        return PyList_New(0);
    }
    long long first = offset / cs, last = (end - 1) / cs, hint[BATCH];
    /* one piece per chunk index; more indexes than the buffer holds fail before the list fills */
    if (out_open(&o, cs, last - first < view.len / 8 ? last - first + 1 : 0) < 0) goto fail;
    for (long long i = first, k = BATCH; i <= last; i++, k++) {
        if (k == BATCH) {
            v6_prefetch(&v, idx_off, i, last - i < BATCH ? last - i + 1 : BATCH, hint);
            k = 0;
        }
        long long base = i * cs;
        long long lo = offset > base ? offset : base, hi = cs > end - base ? end : base + cs;
        long long off, blob, c_index, blkaddr;
        if (entry_pos("chunk index", idx_off, 8, i, view.len, &off) < 0) goto fail;
        v6_index(v.buf + off, &blob, &c_index, &blkaddr);
        if (blkaddr == NULL_ADDR || blob < 0) {
            Py_INCREF(Py_None);
            if (add_piece(&o, Py_None, 0, hi - lo) < 0) goto fail;
            continue;
        }
        long long want = cs > fsize - base ? fsize - base : cs;
        PyObject *chunk = v6_resolve(&v, &o, blob, c_index, blkaddr, want, off, hint[k]);
        if (add_piece(&o, chunk, lo - base, hi - lo) < 0) goto fail;
    }
    v6_release_ci(&v);
    PyBuffer_Release(&view);
    return out_close(&o, 1);
fail:
    v6_release_ci(&v);
    PyBuffer_Release(&view);
    return out_close(&o, 0);
}

static PyObject *v6_chunk_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[5];
    Out o = {0};
    if (check_nargs("v6_chunk", nargs, 11) < 0 || result_types(args[10], &o) < 0 ||
        ll_args(args + 1, 5, a) < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    V6 v;
    PyObject *res = NULL;
    if (v6_open(&v, args + 6, &view) == 0 && out_open(&o, a[3], -1) == 0)
        res = v6_resolve(&v, &o, a[0], a[1], a[2], a[3], a[4], HINT_UNKNOWN);
    v6_release_ci(&v);
    out_close(&o, 0);
    PyBuffer_Release(&view);
    return res;
}

/* the twins' "too short" RafsError for `need` bytes at `pos` of a buffer of `have` bytes, naming
 * the structure and field (NULL: none) read */
static void raise_short_field(long long need, long long pos, Py_ssize_t have, const char *structure,
                              const char *field) {
    PyObject *off = PyLong_FromLongLong(pos), *hex = off ? PyNumber_ToBase(off, 16) : NULL;
    PyObject *msg = hex ? PyUnicode_FromFormat("bootstrap is too short: need %lld bytes at %U, file has %zd",
                                               need, hex, have)
                        : NULL;
    Py_XDECREF(hex);
    raise_rafs(msg, structure, field, NULL, off);
}

/* -- v6 chunk map --------------------------------------------------------------------------------- */

typedef struct {
    uint64_t key;
    long long pos;
} KeyPos;

/* Sort rows[0..n) by key, keeping rows of equal keys in their order: an LSD radix sort, a byte at
 * a time, skipping the bytes every key shares (a blob index or the top of the chunk indexes).
 * Returns the sorted array (rows or a new one, the other freed), or NULL when out of memory. */
static KeyPos *sort_rows(KeyPos *rows, Py_ssize_t n) {
    KeyPos *a = rows, *b = PyMem_New(KeyPos, n);
    if (!b) {
        PyMem_Free(rows);
        PyErr_NoMemory();
        return NULL;
    }
    for (int shift = 0; shift < 64; shift += 8) {
        Py_ssize_t count[257] = {0};
        for (Py_ssize_t i = 0; i < n; i++) count[((a[i].key >> shift) & 0xFF) + 1]++;
        if (count[((a[0].key >> shift) & 0xFF) + 1] == n) continue;
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (Py_ssize_t i = 0; i < n; i++) b[count[(a[i].key >> shift) & 0xFF]++] = a[i];
        KeyPos *t = a;
        a = b, b = t;
    }
    PyMem_Free(b);
    return a;
}

/* chunk_map(buf, off, size, block_size): chunk_key -> position of each 80-byte record of the chunk
 * table at [off, off+size), filled in key order; records no chunk index can name are left out, and
 * of equal keys the last record wins (see the twin). The records are read into a C array first,
 * so no Python code runs while the buffer is read. */
static PyObject *chunk_map_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[3];
    if (check_nargs("chunk_map", nargs, 4) < 0 || ll_args(args + 1, 3, a) < 0) return NULL;
    long long off = a[0], size = a[1], bs = a[2];
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *m = NULL;
    KeyPos *rows = NULL;
    if (off < 0 || size < 0 || size > view.len || off > view.len - size) {
        raise_short("chunk table", off, size, view.len);
        goto done;
    }
    if (size % REC_SIZE) {
        raise_rafs(PyUnicode_FromString("chunk table size is not a multiple of 80"), "chunk table", "size",
                   PyLong_FromLongLong(size), PyLong_FromLongLong(off));
        goto done;
    }
    if (bs <= 0) {
        raise_rafs(PyUnicode_FromString("bad block size"), "chunk table", "block_size", PyLong_FromLongLong(bs),
                   NULL);
        goto done;
    }
    Py_ssize_t n = (Py_ssize_t)(size / REC_SIZE), k = 0;
    if (n && !(rows = PyMem_New(KeyPos, n))) {
        PyErr_NoMemory();
        goto done;
    }
    const unsigned char *r = (const unsigned char *)view.buf + off;
    for (Py_ssize_t i = 0; i < n; i++, r += REC_SIZE) {
        uint32_t blob = rd32(r + 32), c_index = rd32(r + 72);
        uint64_t blkaddr = rd64(r + 56) / (uint64_t)bs;
        if (blob <= 0xFF && c_index <= 0xFFFFFF && blkaddr <= 0xFFFFFFFFULL) {
            rows[k].key = (uint64_t)blob << 56 | (uint64_t)c_index << 32 | blkaddr;
            rows[k++].pos = off + (long long)i * REC_SIZE;
        }
    }
    if (k > 1 && !(rows = sort_rows(rows, k))) goto done; /* rows were made in record order */
    if (!(m = PyDict_New())) goto done;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *key = unum(rows[i].key), *pos = key ? PyLong_FromLongLong(rows[i].pos) : NULL;
        int err = !pos || PyDict_SetItem(m, key, pos) < 0;
        Py_XDECREF(key);
        Py_XDECREF(pos);
        if (err) {
            Py_CLEAR(m);
            break;
        }
    }
done:
    PyMem_Free(rows);
    PyBuffer_Release(&view);
    return m;
}

/* -- v6 directories ------------------------------------------------------------------------------ */

#define DIRENT_SIZE 12
#define DIR_LIMIT (1LL << 56) /* bound of every directory offset and size: their sums stay in 64 bits */

/* One directory being searched (twin: rafs._dirsearch.find_dirent). nid and inode_off are the
 * caller's objects, only put into error messages. */
typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    PyObject *nid, *inode_off, *size_obj;
    long long data_off, tail_off, size, bs, nblocks;
} Dir;

static inline int bytes_cmp(const unsigned char *a, Py_ssize_t an, const unsigned char *b, Py_ssize_t bn) {
    int c = memcmp(a, b, (size_t)(an < bn ? an : bn));
    return c ? c : (an > bn) - (an < bn);
}

static inline uint16_t dirent_nameoff(const unsigned char *blk, long long j) { return rd16(blk + DIRENT_SIZE * j + 8); }

/* the bounds-checked block k: its position, length and entry count */
static int dir_block(const Dir *d, long long k, long long *pos, long long *blen, long long *count) {
    long long length = d->bs < d->size - k * d->bs ? d->bs : d->size - k * d->bs;
    const char *field;
    if (d->tail_off >= 0 && k == d->nblocks - 1) {
        if (d->tail_off / d->bs != (d->tail_off + length - 1) / d->bs) {
            Py_INCREF(d->size_obj);
            Py_INCREF(d->inode_off);
            raise_rafs(PyUnicode_FromString("inline tail crosses a block boundary"), "inode", "i_size",
                       d->size_obj, d->inode_off);
            return -1;
        }
        *pos = d->tail_off, field = "inline data";
    } else {
        *pos = d->data_off + k * d->bs, field = "data block";
    }
    if (*pos < 0 || *pos > d->len - length) {
        raise_short_field(length, *pos, d->len, "inode", field);
        return -1;
    }
    *blen = length;
    if (length < DIRENT_SIZE) {
        raise_rafs_o(PyUnicode_FromString("directory block too short"),
                     PyUnicode_FromFormat("directory %S block %lld", d->nid, k), NULL, PyLong_FromLongLong(length),
                     NULL);
        return -1;
    }
    uint16_t first = dirent_nameoff(d->buf + *pos, 0);
    if (first % DIRENT_SIZE || first == 0 || first > length) {
        raise_rafs_o(PyUnicode_FromString("bad first nameoff"),
                     PyUnicode_FromFormat("directory %S block %lld", d->nid, k), PyUnicode_FromString("nameoff"),
                     PyLong_FromLong(first), NULL);
        return -1;
    }
    *count = first / DIRENT_SIZE;
    return 0;
}

/* the name of entry j of block k at blk (the last entry's ends at its first NUL) */
static int dir_name(const Dir *d, long long k, const unsigned char *blk, long long blen, long long count,
                    long long j, const unsigned char **name, Py_ssize_t *n) {
    long long off = dirent_nameoff(blk, j), end = j + 1 < count ? dirent_nameoff(blk, j + 1) : blen;
    if (!(count * DIRENT_SIZE <= off && off < end && end <= blen)) {
        raise_rafs_o(PyUnicode_FromString("nameoff out of order or outside the block"),
                     PyUnicode_FromFormat("directory %S block %lld", d->nid, k),
                     PyUnicode_FromFormat("dirent[%lld].nameoff", j), PyLong_FromLongLong(off), NULL);
        return -1;
    }
    *name = blk + off;
    *n = (Py_ssize_t)(end - off);
    if (j + 1 == count) {
        const unsigned char *nul = memchr(*name, 0, (size_t)*n);
        if (nul) *n = nul - *name;
    }
    return 0;
}

/* an int argument, clamped to the long long range */
static int clamped_ll(PyObject *o, long long *v) {
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (*v == -1 && PyErr_Occurred()) return -1;
    if (overflow) *v = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    return 0;
}

static PyObject *find_dirent(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (check_nargs("find_dirent", nargs, 8) < 0) return NULL;
    Dir d = {.nid = args[1], .size_obj = args[4], .inode_off = args[6]};
    PyObject *name_obj = args[7];
    if (!PyBytes_Check(name_obj)) {
        PyErr_SetString(PyExc_TypeError, "find_dirent: name must be bytes");
        return NULL;
    }
    if (clamped_ll(args[2], &d.data_off) < 0 || clamped_ll(args[3], &d.tail_off) < 0 ||
        clamped_ll(args[4], &d.size) < 0 || clamped_ll(args[5], &d.bs) < 0)
        return NULL;
    if (d.bs <= 0 || d.size <= 0) Py_RETURN_NONE;
    if (d.data_off <= -DIR_LIMIT || d.data_off >= DIR_LIMIT || d.tail_off <= -DIR_LIMIT || d.tail_off >= DIR_LIMIT ||
        d.size >= DIR_LIMIT || d.bs >= DIR_LIMIT) {
        Py_INCREF(d.size_obj);
        Py_INCREF(d.inode_off);
        raise_rafs(PyUnicode_FromString("directory geometry out of range"), "inode", "i_size", d.size_obj,
                   d.inode_off);
        return NULL;
    }
    const unsigned char *name = (const unsigned char *)PyBytes_AS_STRING(name_obj);
    Py_ssize_t name_len = PyBytes_GET_SIZE(name_obj);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    d.buf = view.buf, d.len = view.len;
    d.nblocks = d.size / d.bs + (d.size % d.bs != 0);
    PyObject *res = NULL;
    long long lo = 0, hi = d.nblocks;
    while (lo < hi) {
        long long mid = lo + (hi - lo) / 2, pos, blen, count;
        const unsigned char *e;
        Py_ssize_t en;
        if (dir_block(&d, mid, &pos, &blen, &count) < 0 || dir_name(&d, mid, d.buf + pos, blen, count, 0, &e, &en) < 0)
            goto done;
        if (bytes_cmp(name, name_len, e, en) < 0) {
            hi = mid;
            continue;
        }
        if (dir_name(&d, mid, d.buf + pos, blen, count, count - 1, &e, &en) < 0) goto done;
        if (bytes_cmp(name, name_len, e, en) > 0) {
            lo = mid + 1;
            continue;
        }
        long long a = 0, b = count;
        while (a < b) {
            long long m = a + (b - a) / 2;
            if (dir_name(&d, mid, d.buf + pos, blen, count, m, &e, &en) < 0) goto done;
            int c = bytes_cmp(name, name_len, e, en);
            if (c < 0) {
                b = m;
            } else if (c > 0) {
                a = m + 1;
            } else {
                if ((name_len == 1 && name[0] == '.') || (name_len == 2 && name[0] == '.' && name[1] == '.'))
                    break;
                const unsigned char *ent = d.buf + pos + DIRENT_SIZE * m;
                res = Py_BuildValue("(NN)", PyLong_FromUnsignedLongLong(rd64(ent)), PyLong_FromLong(ent[10]));
                goto done;
            }
        }
        break;
    }
    res = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    return res;
}

/* -- v5 directories ------------------------------------------------------------------------------ */

#define V5_SB_SIZE 8192
#define V5_INODE_HDR 128
#define U32_LIMIT (1LL << 32)

static PyObject *v5_find_child(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (check_nargs("v5_find_child", nargs, 6) < 0) return NULL;
    PyObject *name_obj = args[5];
    if (!PyBytes_Check(name_obj)) {
        PyErr_SetString(PyExc_TypeError, "v5_find_child: name must be bytes");
        return NULL;
    }
    long long itable_off, entries, child_index, count;
    if (clamped_ll(args[1], &itable_off) < 0 || clamped_ll(args[2], &entries) < 0 ||
        clamped_ll(args[3], &child_index) < 0 || clamped_ll(args[4], &count) < 0)
        return NULL;
    if (!(itable_off >= 0 && itable_off < DIR_LIMIT && entries >= 0 && entries < U32_LIMIT && child_index >= 0 &&
          child_index < U32_LIMIT && count >= 0 && count < U32_LIMIT)) {
        Py_INCREF(args[3]);
        raise_rafs(PyUnicode_FromString("directory geometry out of range"), "inode", "i_child_index", args[3], NULL);
        return NULL;
    }
    const unsigned char *name = (const unsigned char *)PyBytes_AS_STRING(name_obj);
    Py_ssize_t name_len = PyBytes_GET_SIZE(name_obj);
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *buf = view.buf;
    long long lo = 0, hi = count, found = -1;
    while (lo < hi) {
        long long mid = lo + (hi - lo) / 2, index = child_index + mid;
        if (index < 1 || index > entries) {
            raise_rafs(PyUnicode_FromString("inode index out of range"), "inode table", "index",
                       PyLong_FromLongLong(index), NULL);
            goto fail;
        }
        long long ent_off = itable_off + 4 * (index - 1);
        if (ent_off > view.len - 4) {
            raise_short_field(4, ent_off, view.len, "inode table", "entry");
            goto fail;
        }
        uint32_t ent = rd32(buf + ent_off);
        if (ent <= V5_SB_SIZE / 8 || ent >= (1u << 29)) {
            raise_rafs_o(PyUnicode_FromString("inode table entry out of range"), PyUnicode_FromString("inode table"),
                         PyUnicode_FromFormat("entry[%lld]", index - 1), PyLong_FromUnsignedLong(ent),
                         PyLong_FromLongLong(ent_off));
            goto fail;
        }
        long long off = (long long)ent * 8;
        if (off > view.len - V5_INODE_HDR) {
            raise_short_field(V5_INODE_HDR, off, view.len, "inode", NULL);
            goto fail;
        }
        long long size = rd16(buf + off + 100), pos = off + V5_INODE_HDR;
        if (pos > view.len - size) {
            raise_short_field(size, pos, view.len, "inode", "name");
            goto fail;
        }
        int c = bytes_cmp(buf + pos, (Py_ssize_t)size, name, name_len);
        if (c == 0) {
            found = mid;
            break;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(found);
fail:
    PyBuffer_Release(&view);
    return NULL;
}

/* -- fetch runs ----------------------------------------------------------------------------------- */

/* One chunk being merged: blob_index, compressed offset and size (ChunkInfo fields 0, 3 and 4),
 * its position in the input (sorting ties keep input order, like Python's stable sort) and the
 * ChunkInfo itself (borrowed from the input sequence). */
typedef struct {
    uint64_t blob, off, size;
    Py_ssize_t pos;
    PyObject *obj;
} Span;

#define SPAN_STACK 64

static int span_cmp(const void *a, const void *b) {
    const Span *x = a, *y = b;
    if (x->blob != y->blob) return x->blob < y->blob ? -1 : 1;
    if (x->off != y->off) return x->off < y->off ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* a ChunkInfo field as an unsigned 64-bit value (the parsers make no others) */
static int span_field(PyObject *chunk, Py_ssize_t i, uint64_t *out) {
    PyObject *v = PyTuple_GET_ITEM(chunk, i);
    if (!PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "merge_runs: ChunkInfo fields must be ints");
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(v);
    return *out == (uint64_t)-1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *merge_runs_c(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (check_nargs("merge_runs", nargs, 2) < 0) return NULL;
    long long max_size = PyLong_AsLongLong(args[1]);
    if (max_size == -1 && PyErr_Occurred()) return NULL;
    /* a tuple of our own: the allocations below may run the cycle collector, whose finalisers
     * could empty a list passed in and free the ChunkInfos the spans point to */
    PyObject *seq = PySequence_Tuple(args[0]);
    if (!seq) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    Span stack[SPAN_STACK], *s = n <= SPAN_STACK ? stack : PyMem_New(Span, n);
    PyObject *runs = NULL, *run = NULL;
    if (!s) {
        PyErr_NoMemory();
        goto done;
    }
    int sorted = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyTuple_GET_ITEM(seq, i);
        if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) < 5) {
            PyErr_SetString(PyExc_TypeError, "merge_runs: chunks must be ChunkInfos");
            goto done;
        }
        if (span_field(c, 0, &s[i].blob) < 0 || span_field(c, 3, &s[i].off) < 0 ||
            span_field(c, 4, &s[i].size) < 0)
            goto done;
        s[i].pos = i;
        s[i].obj = c;
        if (i && span_cmp(&s[i - 1], &s[i]) > 0) sorted = 0;
    }
    if (!sorted) qsort(s, (size_t)n, sizeof(Span), span_cmp);
    if (!(runs = PyList_New(0))) goto done;
    /* the current run: blob, first offset, end (exact: offsets and sizes are below 2^64) */
    uint64_t blob = 0;
    unsigned __int128 start = 0, end = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const Span *c = &s[i];
        if (run && c->blob == blob) {
            unsigned __int128 c_end = (unsigned __int128)c->off + c->size;
            if (c->off == end && max_size >= 0 && c_end - start <= (unsigned __int128)max_size) {
                if (PyList_Append(run, c->obj) < 0) goto done;
                end = c_end;
                continue;
            }
            if (c->off == s[i - 1].off) continue; /* the same chunk twice */
        }
        Py_XDECREF(run);
        if (!(run = PyList_New(1))) goto done;
        Py_INCREF(c->obj);
        PyList_SET_ITEM(run, 0, c->obj);
        if (PyList_Append(runs, run) < 0) goto done;
        blob = c->blob, start = c->off, end = (unsigned __int128)c->off + c->size;
    }
    Py_XDECREF(run);
    if (s != stack) PyMem_Free(s);
    Py_DECREF(seq);
    return runs;
done:
    Py_XDECREF(run);
    Py_XDECREF(runs);
    if (s && s != stack) PyMem_Free(s);
    Py_DECREF(seq);
    return NULL;
}

/* -- beyond 64 bits -------------------------------------------------------------------------------
 * The C code holds offsets, counts and sizes in 64-bit integers. When an argument (or a ChunkInfo
 * field given to merge_runs) does not fit, the conversion raises OverflowError; the pure-Python
 * twin, the reference, then answers instead, so results and errors stay identical for every
 * input. No image reaches this: the readers pass only values they decoded from 64-bit fields. */

static PyObject *twin_call(const char *module, const char *name, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *fn = module_attr(module, name);
    if (!fn) return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, NULL);
    Py_DECREF(fn);
    return r;
}

#define TWIN_BEYOND_64_BITS(name)                                                    \
    static PyObject *name(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { \
        PyObject *r = name##_c(self, args, nargs);                                   \
        if (r || !PyErr_ExceptionMatches(PyExc_OverflowError)) return r;             \
        PyErr_Clear();                                                               \
        return twin_call("rafs._chunkmap", #name, args, nargs);                      \
    }

TWIN_BEYOND_64_BITS(v5_pieces)
TWIN_BEYOND_64_BITS(v6_pieces)
TWIN_BEYOND_64_BITS(v6_chunk)
TWIN_BEYOND_64_BITS(chunk_map)
TWIN_BEYOND_64_BITS(ci_entry)
TWIN_BEYOND_64_BITS(merge_runs)

static PyMethodDef methods[] = {
    {"v5_pieces", (PyCFunction)(void (*)(void))v5_pieces, METH_FASTCALL,
     "v5_pieces(buf, records_off, count, chunk_size, file_size, blob_count, offset, size, types)\n--\n\n"
     "Chunk pieces of [offset, offset+size) of a RAFS v5 file."},
    {"v6_pieces", (PyCFunction)(void (*)(void))v6_pieces, METH_FASTCALL,
     "v6_pieces(buf, index_off, chunk_size, file_size, offset, size, block_size, blob_count, chunk_map, "
     "ci_tables, types)\n--\n\nChunk pieces of [offset, offset+size) of a RAFS v6 file."},
    {"v6_chunk", (PyCFunction)(void (*)(void))v6_chunk, METH_FASTCALL,
     "v6_chunk(buf, blob, chunk_index, blkaddr, want, where, block_size, blob_count, chunk_map, "
     "ci_tables, types)\n--\n\nThe ChunkInfo of one RAFS v6 chunk."},
    {"merge_runs", (PyCFunction)(void (*)(void))merge_runs, METH_FASTCALL,
     "merge_runs(chunks, max_size)\n--\n\nGroup chunks into runs of adjacent compressed ranges of one blob."},
    {"find_dirent", (PyCFunction)(void (*)(void))find_dirent, METH_FASTCALL,
     "find_dirent(buf, nid, data_off, tail_off, size, block_size, inode_off, name)\n--\n\n"
     "(child nid, file type) of one name in a RAFS v6 directory, or None."},
    {"v5_find_child", (PyCFunction)(void (*)(void))v5_find_child, METH_FASTCALL,
     "v5_find_child(buf, itable_off, itable_entries, child_index, child_count, name)\n--\n\n"
     "The position of one name among the children of a RAFS v5 directory, or -1."},
    {"chunk_map", (PyCFunction)(void (*)(void))chunk_map, METH_FASTCALL,
     "chunk_map(buf, off, size, block_size)\n--\n\nchunk_key -> record position for a RAFS v6 chunk table."},
    {"ci_entry", (PyCFunction)(void (*)(void))ci_entry, METH_FASTCALL,
     "ci_entry(data, version, count, index)\n--\n\nOne entry of a blob's ci table (v1 or v2)."},
    {NULL, NULL, 0, NULL},
};

/* API: the version of the functions' signatures (2: the pieces functions take the result types);
 * rafs.chunkmap uses a build only when it is the version the Python side expects */
static int module_exec(PyObject *m) { return PyModule_AddIntConstant(m, "API", 2); }

static struct PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)module_exec}, {0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "rafs._speedups",
    "The C hot path of RAFS: chunk lookup, fetch runs, directory search.", 0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModuleDef_Init(&module); }
