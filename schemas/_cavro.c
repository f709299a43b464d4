/*
 * schemas._cavro: the native Avro binary codec of the querytrail events (the hot path).
 *
 * schemas/_avro.py compiles each current schema into a "program", a tree of tuples:
 *
 *   ("null",) ("boolean",) ("int",) ("long",) ("float",) ("double",) ("bytes",) ("string",)
 *   ("uuid",) ("timestamp-micros",) ("enum", symbols) ("array", item) ("map", value)
 *   ("union", null_index, other) ("record", name, cls, ((field_name, node), ...))
 *
 * Codec(program, corrupt_body_exception) turns it into C nodes once; encode() and decode()
 * walk them. The bytes are exactly what fastavro and the generated Python code write: one
 * block (positive count) then 0 for non-empty arrays and maps, zig-zag varints, [null, T]
 * unions as branch 0 or 1.
 *
 * decode() reads untrusted bytes: every read is bounds-checked, varints are at most 10 bytes,
 * lengths and counts are checked against the bytes left BEFORE anything is allocated, and
 * every refusal raises the CorruptBody exception handed to the constructor.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 32 /* program nesting; records cannot recurse (tuples cannot form cycles) */

enum {
    K_NULL,
    K_BOOLEAN,
    K_INT,
    K_LONG,
    K_FLOAT,
    K_DOUBLE,
    K_BYTES,
    K_STRING,
    K_UUID,
    K_TIMESTAMP,
    K_ENUM,
    K_ARRAY,
    K_MAP,
    K_UNION,
    K_RECORD,
};

static const char *const KIND_NAMES[] = {
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    "uuid", "timestamp-micros", "enum", "array", "map", "union", "record",
};
#define N_KINDS ((int)(sizeof(KIND_NAMES) / sizeof(KIND_NAMES[0])))

typedef struct Node {
    int kind;
    int null_index;       /* union: branch of null, 0 or 1 */
    Py_ssize_t min_size;  /* fewest bytes one encoded value takes (bounds array/map counts) */
    struct Node *item;    /* array item, map value, union's non-null branch */
    PyObject *symbols;    /* enum: tuple of str */
    PyObject *index;      /* enum: dict str -> int */
    PyObject *name;       /* record: name, for messages */
    PyObject *cls;        /* record: the dataclass */
    Py_ssize_t nfields;
    PyObject **field_names; /* record: interned str */
    struct Node **fields;
} Node;

static PyObject *str_utcoffset; /* "utcoffset" */
static PyObject *empty_tuple;

/* ------------------------------------------------------------------ program */

static void node_free(Node *n) {
    if (n == NULL) return;
    node_free(n->item);
    Py_XDECREF(n->symbols);
    Py_XDECREF(n->index);
    Py_XDECREF(n->name);
    Py_XDECREF(n->cls);
    for (Py_ssize_t i = 0; i < n->nfields; i++) {
        if (n->field_names) Py_XDECREF(n->field_names[i]);
        if (n->fields) node_free(n->fields[i]);
    }
    PyMem_Free(n->field_names);
    PyMem_Free(n->fields);
    PyMem_Free(n);
}

static Node *node_build(PyObject *spec, int depth) {
    if (depth > MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "schema nested too deeply for the native codec");
        return NULL;
    }
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 1 || !PyUnicode_Check(PyTuple_GET_ITEM(spec, 0))) {
        PyErr_SetString(PyExc_TypeError, "a program node is a tuple starting with its kind");
        return NULL;
    }
    Py_ssize_t size = PyTuple_GET_SIZE(spec);
    int kind = -1;
    for (int k = 0; k < N_KINDS; k++) {
        if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(spec, 0), KIND_NAMES[k]) == 0) kind = k;
    }
    if (kind < 0) {
        PyErr_Format(PyExc_ValueError, "unknown program node kind %R", PyTuple_GET_ITEM(spec, 0));
        return NULL;
    }
    const char *kname = KIND_NAMES[kind];
    Node *n = PyMem_Calloc(1, sizeof(Node));
    if (n == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    n->kind = kind;
    switch (kind) {
    case K_NULL:
        n->min_size = 0;
        break;
    case K_FLOAT:
        n->min_size = 4;
        break;
    case K_DOUBLE:
        n->min_size = 8;
        break;
    case K_ENUM: {
        PyObject *syms;
        if (size != 2 || !PyTuple_Check(syms = PyTuple_GET_ITEM(spec, 1)) || PyTuple_GET_SIZE(syms) == 0) {
            PyErr_SetString(PyExc_ValueError, "enum node: (\"enum\", non-empty tuple of symbols)");
            goto fail;
        }
        n->symbols = Py_NewRef(syms);
        n->index = PyDict_New();
        if (n->index == NULL) goto fail;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(syms); i++) {
            PyObject *s = PyTuple_GET_ITEM(syms, i);
            if (!PyUnicode_CheckExact(s)) {
                PyErr_SetString(PyExc_TypeError, "enum symbols must be str");
                goto fail;
            }
            PyObject *ix = PyLong_FromSsize_t(i);
            if (ix == NULL || PyDict_SetItem(n->index, s, ix) < 0) {
                Py_XDECREF(ix);
                goto fail;
            }
            Py_DECREF(ix);
        }
        n->min_size = 1;
        break;
    }
    case K_ARRAY:
    case K_MAP:
        if (size != 2) {
            PyErr_SetString(PyExc_ValueError, "array/map node: (kind, item node)");
            goto fail;
        }
        n->item = node_build(PyTuple_GET_ITEM(spec, 1), depth + 1);
        if (n->item == NULL) goto fail;
        n->min_size = 1;
        break;
    case K_UNION: {
        int ni;
        if (size != 3 || !PyLong_Check(PyTuple_GET_ITEM(spec, 1))) {
            PyErr_SetString(PyExc_ValueError, "union node: (\"union\", null_index, other node)");
            goto fail;
        }
        ni = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
        if (ni != 0 && ni != 1) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "union null index must be 0 or 1");
            goto fail;
        }
        n->null_index = ni;
        n->item = node_build(PyTuple_GET_ITEM(spec, 2), depth + 1);
        if (n->item == NULL) goto fail;
        n->min_size = 1;
        break;
    }
    case K_RECORD: {
        PyObject *name, *cls, *fields;
        if (size != 4 || !PyUnicode_Check(name = PyTuple_GET_ITEM(spec, 1)) ||
            !PyType_Check(cls = PyTuple_GET_ITEM(spec, 2)) || !PyTuple_Check(fields = PyTuple_GET_ITEM(spec, 3))) {
            PyErr_SetString(PyExc_ValueError, "record node: (\"record\", name, class, fields)");
            goto fail;
        }
        /* decode builds instances with object.__new__ and fills their __dict__: the class must allow that */
        if (((PyTypeObject *)cls)->tp_new != PyBaseObject_Type.tp_new ||
            ((PyTypeObject *)cls)->tp_dictoffset == 0) {
            PyErr_Format(PyExc_ValueError, "record class %U needs object.__new__ and an instance __dict__", name);
            goto fail;
        }
        n->name = Py_NewRef(name);
        n->cls = Py_NewRef(cls);
        Py_ssize_t nf = PyTuple_GET_SIZE(fields);
        n->field_names = PyMem_Calloc(nf ? nf : 1, sizeof(PyObject *));
        n->fields = PyMem_Calloc(nf ? nf : 1, sizeof(Node *));
        if (n->field_names == NULL || n->fields == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        n->nfields = nf;
        for (Py_ssize_t i = 0; i < nf; i++) {
            PyObject *f = PyTuple_GET_ITEM(fields, i), *fname;
            if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 2 || !PyUnicode_CheckExact(fname = PyTuple_GET_ITEM(f, 0))) {
                PyErr_SetString(PyExc_ValueError, "record field: (name, node)");
                goto fail;
            }
            Py_INCREF(fname);
            PyUnicode_InternInPlace(&fname);
            n->field_names[i] = fname;
            n->fields[i] = node_build(PyTuple_GET_ITEM(f, 1), depth + 1);
            if (n->fields[i] == NULL) goto fail;
            if (n->min_size <= PY_SSIZE_T_MAX - n->fields[i]->min_size) n->min_size += n->fields[i]->min_size;
        }
        break;
    }
    default: /* boolean, int, long, bytes, string, uuid, timestamp-micros: at least one byte */
        n->min_size = 1;
    }
    if (kind != K_RECORD && kind != K_ENUM && kind != K_ARRAY && kind != K_MAP && kind != K_UNION && size != 1) {
        PyErr_Format(PyExc_ValueError, "%s node takes no arguments", kname);
        goto fail;
    }
    return n;
fail:
    node_free(n);
    return NULL;
}

/* ------------------------------------------------------------------ encoding */

typedef struct {
    PyObject *out; /* bytes object grown in place, trimmed at the end */
    char *buf;
    Py_ssize_t len, cap;
    int annotated; /* the error already names its record field */
} Enc;

static int enc_grow(Enc *e, Py_ssize_t need) {
    if (need > PY_SSIZE_T_MAX / 2 - e->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t cap = e->cap * 2;
    if (cap < e->len + need) cap = e->len + need;
    if (_PyBytes_Resize(&e->out, cap) < 0) { /* frees e->out and sets it to NULL */
        e->buf = NULL;
        return -1;
    }
    e->buf = PyBytes_AS_STRING(e->out);
    e->cap = cap;
    return 0;
}

#define RESERVE(e, n) ((e)->cap - (e)->len >= (Py_ssize_t)(n) ? 0 : enc_grow((e), (Py_ssize_t)(n)))

static int put_long(Enc *e, int64_t v) {
    if (RESERVE(e, 10) < 0) return -1;
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    unsigned char *p = (unsigned char *)e->buf + e->len;
    while (z > 0x7F) {
        *p++ = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    *p++ = (unsigned char)z;
    e->len = (char *)p - e->buf;
    return 0;
}

static int put_byte(Enc *e, unsigned char b) {
    if (RESERVE(e, 1) < 0) return -1;
    e->buf[e->len++] = (char)b;
    return 0;
}

static int put_sized(Enc *e, const char *data, Py_ssize_t n) {
    if (put_long(e, n) < 0 || RESERVE(e, n) < 0) return -1;
    memcpy(e->buf + e->len, data, (size_t)n);
    e->len += n;
    return 0;
}

static int type_error(const char *expected, PyObject *v) {
    PyErr_Format(PyExc_TypeError, "expected %s, got %.100s", expected, Py_TYPE(v)->tp_name);
    return -1;
}

/* UTF-8 of a non-ASCII str written straight into the buffer: CPython's encoder builds a bytes
 * object first, and is slow on Latin-1 text (~1.8 us for a 2 KB prompt). */
static Py_ssize_t utf8_size(int kind, const void *data, Py_ssize_t n) {
    Py_ssize_t size = n;
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *s = data;
        Py_ssize_t i = 0;
        for (; i + 8 <= n; i += 8) { /* count the high bits of 8 bytes at once */
            uint64_t w;
            memcpy(&w, s + i, 8);
            size += (Py_ssize_t)((((w >> 7) & UINT64_C(0x0101010101010101)) * UINT64_C(0x0101010101010101)) >> 56);
        }
        for (; i < n; i++) size += s[i] >> 7;
        return size;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) continue;
        if (c >= 0xD800 && c <= 0xDFFF) return -1; /* a lone surrogate has no UTF-8 */
        size += c < 0x800 ? 1 : c < 0x10000 ? 2 : 3;
    }
    return size;
}

static void utf8_write(int kind, const void *data, Py_ssize_t n, unsigned char *out) {
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *s = data;
        Py_ssize_t i = 0;
        while (i < n) {
            uint64_t w;
            if (i + 8 <= n) { /* copy runs of ASCII a word at a time */
                memcpy(&w, s + i, 8);
                if (!(w & UINT64_C(0x8080808080808080))) {
                    memcpy(out, &w, 8);
                    out += 8;
                    i += 8;
                    continue;
                }
            }
            Py_UCS1 c = s[i++];
            if (c < 0x80) {
                *out++ = c;
            } else {
                *out++ = (unsigned char)(0xC0 | (c >> 6));
                *out++ = (unsigned char)(0x80 | (c & 0x3F));
            }
        }
        return;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c < 0x80) {
            *out++ = (unsigned char)c;
        } else if (c < 0x800) {
            *out++ = (unsigned char)(0xC0 | (c >> 6));
            *out++ = (unsigned char)(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            *out++ = (unsigned char)(0xE0 | (c >> 12));
            *out++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *out++ = (unsigned char)(0x80 | (c & 0x3F));
        } else {
            *out++ = (unsigned char)(0xF0 | (c >> 18));
            *out++ = (unsigned char)(0x80 | ((c >> 12) & 0x3F));
            *out++ = (unsigned char)(0x80 | ((c >> 6) & 0x3F));
            *out++ = (unsigned char)(0x80 | (c & 0x3F));
        }
    }
}

static int put_str(Enc *e, PyObject *v) {
    if (!PyUnicode_Check(v)) return type_error("str", v);
    if (PyUnicode_IS_ASCII(v)) return put_sized(e, (const char *)PyUnicode_DATA(v), PyUnicode_GET_LENGTH(v));
    int kind = PyUnicode_KIND(v);
    const void *data = PyUnicode_DATA(v);
    Py_ssize_t n = PyUnicode_GET_LENGTH(v), size = utf8_size(kind, data, n);
    if (size < 0) { /* let str.encode() raise its UnicodeEncodeError (position, reason) */
        PyObject *b = PyUnicode_AsUTF8String(v);
        if (b != NULL) { /* cannot happen: it had a surrogate */
            Py_DECREF(b);
            PyErr_SetString(PyExc_SystemError, "surrogate check disagrees with the UTF-8 encoder");
        }
        return -1;
    }
    if (put_long(e, size) < 0 || RESERVE(e, size) < 0) return -1;
    utf8_write(kind, data, n, (unsigned char *)e->buf + e->len);
    e->len += size;
    return 0;
}

static int is_hex_lower(Py_UCS1 c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

static int put_uuid(Enc *e, PyObject *v) {
    if (!PyUnicode_Check(v)) return type_error("a UUID str", v);
    /* refused here: fastavro and Java readers would fail on a non-canonical UUID */
    if (!PyUnicode_IS_ASCII(v) || PyUnicode_GET_LENGTH(v) != 36) goto bad;
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(v);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') goto bad;
        } else if (!is_hex_lower(s[i])) {
            goto bad;
        }
    }
    return put_sized(e, (const char *)s, 36);
bad:
    PyErr_SetString(PyExc_ValueError, "not a canonical lower-case UUID string");
    return -1;
}

static int get_long(PyObject *v, int bits, int64_t *out) {
    if (!PyLong_Check(v)) return type_error("int", v);
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (overflow || (bits == 32 && (x < INT32_MIN || x > INT32_MAX))) {
        PyErr_Format(PyExc_OverflowError, "value out of range for an Avro %s (%d-bit)", bits == 32 ? "int" : "long", bits);
        return -1;
    }
    *out = (int64_t)x;
    return 0;
}

/* Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

#define US_PER_DAY INT64_C(86400000000)

static int put_timestamp(Enc *e, PyObject *v) {
    if (!PyDateTime_Check(v)) return type_error("a datetime", v);
    int64_t offset = 0;
    PyObject *tz = PyDateTime_DATE_GET_TZINFO(v);
    if (tz != PyDateTime_TimeZone_UTC) {
        PyObject *off = tz == Py_None ? Py_NewRef(Py_None) : PyObject_CallMethodNoArgs(v, str_utcoffset);
        if (off == NULL) return -1;
        if (off == Py_None) {
            Py_DECREF(off);
            PyErr_SetString(PyExc_TypeError, "naive datetime (no UTC offset): timestamp-micros needs an aware one");
            return -1;
        }
        if (!PyDelta_Check(off)) {
            Py_DECREF(off);
            PyErr_SetString(PyExc_TypeError, "utcoffset() did not return a timedelta");
            return -1;
        }
        /* datetime bounds the offset to under a day */
        offset = (int64_t)PyDateTime_DELTA_GET_DAYS(off) * US_PER_DAY +
                 (int64_t)PyDateTime_DELTA_GET_SECONDS(off) * 1000000 + PyDateTime_DELTA_GET_MICROSECONDS(off);
        Py_DECREF(off);
    }
    int64_t days = days_from_civil(PyDateTime_GET_YEAR(v), (unsigned)PyDateTime_GET_MONTH(v),
                                   (unsigned)PyDateTime_GET_DAY(v));
    int64_t secs = (int64_t)PyDateTime_DATE_GET_HOUR(v) * 3600 + PyDateTime_DATE_GET_MINUTE(v) * 60 +
                   PyDateTime_DATE_GET_SECOND(v);
    /* years 1..9999: |micros| < 2.6e17, far from overflow */
    return put_long(e, days * US_PER_DAY + secs * 1000000 + PyDateTime_DATE_GET_MICROSECOND(v) - offset);
}

static int encode_value(Enc *e, const Node *n, PyObject *v);

static int encode_record(Enc *e, const Node *n, PyObject *obj) {
    if (!PyObject_TypeCheck(obj, (PyTypeObject *)n->cls)) {
        PyErr_Format(PyExc_TypeError, "expected a %U record, got %.100s", n->name, Py_TYPE(obj)->tp_name);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n->nfields; i++) {
        PyObject *v = PyObject_GetAttr(obj, n->field_names[i]);
        int r = v == NULL ? -1 : encode_value(e, n->fields[i], v);
        Py_XDECREF(v);
        if (r < 0) {
            if (!e->annotated) {
                /* name the innermost field; keep the exception type (never the value: it may be a secret) */
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                if (type == PyExc_TypeError || type == PyExc_ValueError || type == PyExc_OverflowError ||
                    type == PyExc_AttributeError) {
                    PyErr_NormalizeException(&type, &value, &tb);
                    PyObject *msg = value ? PyObject_Str(value) : NULL;
                    if (msg != NULL) {
                        PyErr_Format(type, "%U.%U: %U", n->name, n->field_names[i], msg);
                        Py_DECREF(msg);
                        Py_XDECREF(type);
                        Py_XDECREF(value);
                        Py_XDECREF(tb);
                        e->annotated = 1;
                        return -1;
                    }
                    PyErr_Clear();
                }
                PyErr_Restore(type, value, tb);
                e->annotated = 1;
            }
            return -1;
        }
    }
    return 0;
}

static int encode_value(Enc *e, const Node *n, PyObject *v) {
    int64_t x;
    switch (n->kind) {
    case K_NULL:
        if (v != Py_None) return type_error("None", v);
        return 0;
    case K_BOOLEAN:
        if (!PyBool_Check(v)) return type_error("bool", v);
        return put_byte(e, v == Py_True);
    case K_INT:
    case K_LONG:
        if (get_long(v, n->kind == K_INT ? 32 : 64, &x) < 0) return -1;
        return put_long(e, x);
    case K_FLOAT:
    case K_DOUBLE: {
        if (!PyFloat_Check(v) && !PyLong_Check(v)) return type_error("float", v);
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return -1;
        int size = n->kind == K_FLOAT ? 4 : 8;
        if (RESERVE(e, size) < 0) return -1;
        int r = size == 4 ? PyFloat_Pack4(d, e->buf + e->len, 1) : PyFloat_Pack8(d, e->buf + e->len, 1);
        if (r < 0) return -1;
        e->len += size;
        return 0;
    }
    case K_BYTES:
        if (PyBytes_Check(v)) return put_sized(e, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
        if (PyByteArray_Check(v)) {
            /* copy first: nothing runs between the size and the copy, but keep it obviously safe */
            PyObject *b = PyBytes_FromObject(v);
            if (b == NULL) return -1;
            int r = put_sized(e, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
            Py_DECREF(b);
            return r;
        }
        return type_error("bytes", v);
    case K_STRING:
        return put_str(e, v);
    case K_UUID:
        return put_uuid(e, v);
    case K_TIMESTAMP:
        return put_timestamp(e, v);
    case K_ENUM: {
        if (!PyUnicode_Check(v)) return type_error("an enum symbol (str)", v);
        PyObject *ix = PyDict_GetItemWithError(n->index, v); /* borrowed */
        if (ix == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "not a symbol of the enum");
            return -1;
        }
        return put_long(e, PyLong_AsLongLong(ix));
    }
    case K_UNION:
        if (v == Py_None) return put_byte(e, (unsigned char)(n->null_index * 2));
        if (put_byte(e, (unsigned char)((1 - n->null_index) * 2)) < 0) return -1;
        return encode_value(e, n->item, v);
    case K_ARRAY: {
        /* a str is refused: it would be written one character per item */
        int is_list = PyList_Check(v);
        if (!is_list && !PyTuple_Check(v)) return type_error("a tuple or list", v);
        Py_ssize_t count = Py_SIZE(v);
        if (count == 0) return put_byte(e, 0);
        if (put_long(e, count) < 0) return -1;
        for (Py_ssize_t i = 0; i < count; i++) {
            /* a list can change under us (attribute lookups may run Python code): re-check, own the item */
            if (is_list && i >= PyList_GET_SIZE(v)) goto changed;
            PyObject *item = Py_NewRef(is_list ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i));
            int r = encode_value(e, n->item, item);
            Py_DECREF(item);
            if (r < 0) return -1;
        }
        if (Py_SIZE(v) != count) goto changed;
        return put_byte(e, 0);
    changed:
        PyErr_SetString(PyExc_RuntimeError, "list changed size during encoding");
        return -1;
    }
    case K_MAP: {
        if (!PyDict_Check(v)) return type_error("a dict", v);
        Py_ssize_t count = PyDict_GET_SIZE(v), pos = 0, seen = 0;
        if (count == 0) return put_byte(e, 0);
        if (put_long(e, count) < 0) return -1;
        PyObject *key, *val;
        while (PyDict_Next(v, &pos, &key, &val)) {
            if (++seen > count) break;
            Py_INCREF(key);
            Py_INCREF(val);
            int r = PyUnicode_Check(key) ? put_str(e, key) : type_error("str map keys", key);
            if (r == 0) r = encode_value(e, n->item, val);
            Py_DECREF(key);
            Py_DECREF(val);
            if (r < 0) return -1;
        }
        if (seen != count || PyDict_GET_SIZE(v) != count) {
            PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
            return -1;
        }
        return put_byte(e, 0);
    }
    case K_RECORD:
        return encode_record(e, n, v);
    }
    PyErr_SetString(PyExc_SystemError, "bad program node");
    return -1;
}

/* ------------------------------------------------------------------ decoding */

typedef struct {
    const unsigned char *p, *end;
    PyObject *corrupt;
} Dec;

static int corrupt(Dec *d, const char *why) {
    PyErr_SetString(d->corrupt, why);
    return -1;
}

static int read_long(Dec *d, int64_t *out) {
    uint64_t z = 0;
    for (int i = 0; i < 10; i++) {
        if (d->p >= d->end) return corrupt(d, "truncated: a varint runs past the end");
        unsigned b = *d->p++;
        if (i == 9) {
            if (b & 0x80) return corrupt(d, "varint longer than 10 bytes");
            if (b > 1) return corrupt(d, "varint overflows a 64-bit long");
        }
        z |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *out = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
            return 0;
        }
    }
    return corrupt(d, "varint longer than 10 bytes"); /* unreachable */
}

/* A length prefix: not negative and no larger than the bytes left. */
static int read_size(Dec *d, Py_ssize_t *out) {
    int64_t v;
    if (read_long(d, &v) < 0) return -1;
    if (v < 0) return corrupt(d, "negative length");
    if (v > d->end - d->p) return corrupt(d, "truncated: a length runs past the end");
    *out = (Py_ssize_t)v;
    return 0;
}

static PyObject *read_str(Dec *d) {
    Py_ssize_t n;
    if (read_size(d, &n) < 0) return NULL;
    PyObject *s = PyUnicode_DecodeUTF8((const char *)d->p, n, "strict");
    if (s == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            PyErr_Format(d->corrupt, "string is not valid UTF-8 (UnicodeDecodeError: %S)", value);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(tb);
        }
        return NULL;
    }
    d->p += n;
    return s;
}

/* Count of the next array/map block; 0 ends. A negative count is followed by the block's byte size. */
static int read_block(Dec *d, Py_ssize_t *budget, Py_ssize_t *out) {
    int64_t c;
    if (read_long(d, &c) < 0) return -1;
    if (c < 0) {
        int64_t bytes;
        if (c == INT64_MIN) return corrupt(d, "block count out of range");
        c = -c;
        if (read_long(d, &bytes) < 0) return -1;
        if (bytes < 0 || bytes > d->end - d->p) return corrupt(d, "block size out of range");
    }
    /* every item takes at least one byte (min_size) here: more items than bytes left is corrupt */
    if (c > *budget) return corrupt(d, "block count larger than the bytes left");
    *budget -= (Py_ssize_t)c;
    *out = (Py_ssize_t)c;
    return 0;
}

static Py_ssize_t item_budget(Dec *d, const Node *item, Py_ssize_t extra) {
    Py_ssize_t per = item->min_size + extra;
    if (per < 1) per = 1; /* zero-byte items (null): at most one per byte left */
    return (d->end - d->p) / per;
}

static PyObject *decode_value(Dec *d, const Node *n);

#define STACK_FIELDS 32

static PyObject *decode_record(Dec *d, const Node *n) {
    /* Values first (nothing half-built is ever visible), then object.__new__(cls) and each value
     * stored with object.__setattr__: what the frozen dataclass's __init__ does, minus __init__.
     * Unlike assigning a whole __dict__ (_avro.py), this keeps CPython's compact shared-key
     * attribute storage, which makes a decode + re-encode ~20% faster. */
    PyObject *stack[STACK_FIELDS], **vals = stack, *obj = NULL;
    Py_ssize_t i, got = 0;
    if (n->nfields > STACK_FIELDS && (vals = PyMem_Calloc((size_t)n->nfields, sizeof(PyObject *))) == NULL)
        return PyErr_NoMemory();
    for (; got < n->nfields; got++) {
        if ((vals[got] = decode_value(d, n->fields[got])) == NULL) goto done;
    }
    obj = PyBaseObject_Type.tp_new((PyTypeObject *)n->cls, empty_tuple, NULL);
    for (i = 0; obj != NULL && i < n->nfields; i++) {
        if (PyObject_GenericSetAttr(obj, n->field_names[i], vals[i]) < 0) Py_CLEAR(obj);
    }
done:
    for (i = 0; i < got; i++) Py_DECREF(vals[i]);
    if (vals != stack) PyMem_Free(vals);
    return obj;
}

static PyObject *decode_array(Dec *d, const Node *n) {
    Py_ssize_t budget = item_budget(d, n->item, 0), filled = 0, count;
    PyObject *out = NULL;
    for (;;) {
        if (read_block(d, &budget, &count) < 0) goto fail;
        if (count == 0) break;
        if (out == NULL) {
            out = PyTuple_New(count);
            if (out == NULL) goto fail;
        } else if (_PyTuple_Resize(&out, filled + count) < 0) {
            goto fail; /* out is NULL now */
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *v = decode_value(d, n->item);
            if (v == NULL) goto fail;
            PyTuple_SET_ITEM(out, filled++, v);
        }
    }
    return out ? out : PyTuple_New(0);
fail:
    Py_XDECREF(out); /* unfilled slots are NULL, which tuple dealloc skips */
    return NULL;
}

static PyObject *decode_map(Dec *d, const Node *n) {
    Py_ssize_t budget = item_budget(d, n->item, 1), count;
    PyObject *out = PyDict_New();
    if (out == NULL) return NULL;
    for (;;) {
        if (read_block(d, &budget, &count) < 0) goto fail;
        if (count == 0) break;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *k = read_str(d), *v = k ? decode_value(d, n->item) : NULL;
            if (v == NULL || PyDict_SetItem(out, k, v) < 0) {
                Py_XDECREF(k);
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(k);
            Py_DECREF(v);
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *decode_timestamp(Dec *d) {
    int64_t us, y;
    unsigned m, day;
    if (read_long(d, &us) < 0) return NULL;
    int64_t days = us / US_PER_DAY, rem = us % US_PER_DAY;
    if (rem < 0) {
        rem += US_PER_DAY;
        days -= 1;
    }
    civil_from_days(days, &y, &m, &day);
    if (y < 1 || y > 9999) {
        corrupt(d, "timestamp out of the datetime range");
        return NULL;
    }
    int64_t secs = rem / 1000000;
    return PyDateTimeAPI->DateTime_FromDateAndTime((int)y, (int)m, (int)day, (int)(secs / 3600),
                                                   (int)(secs / 60 % 60), (int)(secs % 60), (int)(rem % 1000000),
                                                   PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

static PyObject *decode_value(Dec *d, const Node *n) {
    int64_t x;
    Py_ssize_t len;
    switch (n->kind) {
    case K_NULL:
        Py_RETURN_NONE;
    case K_BOOLEAN:
        if (d->p >= d->end) return corrupt(d, "truncated: boolean"), NULL;
        if (*d->p > 1) return corrupt(d, "boolean byte is not 0 or 1"), NULL;
        return PyBool_FromLong(*d->p++);
    case K_INT:
    case K_LONG:
        if (read_long(d, &x) < 0) return NULL;
        if (n->kind == K_INT && (x < INT32_MIN || x > INT32_MAX)) return corrupt(d, "int overflow"), NULL;
        return PyLong_FromLongLong(x);
    case K_FLOAT:
    case K_DOUBLE: {
        int size = n->kind == K_FLOAT ? 4 : 8;
        if (d->end - d->p < size) return corrupt(d, "truncated: float"), NULL;
        double v = size == 4 ? PyFloat_Unpack4((const char *)d->p, 1) : PyFloat_Unpack8((const char *)d->p, 1);
        if (v == -1.0 && PyErr_Occurred()) return NULL;
        d->p += size;
        return PyFloat_FromDouble(v);
    }
    case K_BYTES: {
        if (read_size(d, &len) < 0) return NULL;
        PyObject *b = PyBytes_FromStringAndSize((const char *)d->p, len);
        if (b != NULL) d->p += len;
        return b;
    }
    case K_STRING:
    case K_UUID: /* like the Python path, a uuid is not re-validated on the way in */
        return read_str(d);
    case K_TIMESTAMP:
        return decode_timestamp(d);
    case K_ENUM:
        if (read_long(d, &x) < 0) return NULL;
        if (x < 0 || x >= PyTuple_GET_SIZE(n->symbols)) return corrupt(d, "enum index out of range"), NULL;
        return Py_NewRef(PyTuple_GET_ITEM(n->symbols, (Py_ssize_t)x));
    case K_UNION: {
        /* branch 0 or 1 is one varint byte (0x00 or 0x02); anything else is corrupt */
        if (d->p >= d->end) return corrupt(d, "truncated: union branch"), NULL;
        unsigned b = *d->p++;
        if (b == (unsigned)n->null_index * 2) Py_RETURN_NONE;
        if (b == (unsigned)(1 - n->null_index) * 2) return decode_value(d, n->item);
        return corrupt(d, "union branch index out of range"), NULL;
    }
    case K_ARRAY:
        return decode_array(d, n);
    case K_MAP:
        return decode_map(d, n);
    case K_RECORD:
        return decode_record(d, n);
    }
    PyErr_SetString(PyExc_SystemError, "bad program node");
    return NULL;
}

/* ------------------------------------------------------------------ the Codec type */

typedef struct {
    PyObject_HEAD
    Node *root;
    PyObject *corrupt;
    Py_ssize_t size_hint; /* last output size: the next buffer starts that big */
} CodecObject;

static PyObject *Codec_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *program, *corrupt_exc;
    static char *kwlist[] = {"program", "corrupt_body", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Codec", kwlist, &program, &corrupt_exc)) return NULL;
    if (!PyExceptionClass_Check(corrupt_exc)) {
        PyErr_SetString(PyExc_TypeError, "corrupt_body must be an exception class");
        return NULL;
    }
    Node *root = node_build(program, 0);
    if (root == NULL) return NULL;
    if (root->kind != K_RECORD) {
        node_free(root);
        PyErr_SetString(PyExc_ValueError, "the program's root must be a record");
        return NULL;
    }
    CodecObject *self = (CodecObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        node_free(root);
        return NULL;
    }
    self->root = root;
    self->corrupt = Py_NewRef(corrupt_exc);
    self->size_hint = 256;
    return (PyObject *)self;
}

static void Codec_dealloc(CodecObject *self) {
    node_free(self->root);
    Py_XDECREF(self->corrupt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Codec_encode(CodecObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "encode(event, prefix=b'')");
        return NULL;
    }
    const char *pre = "";
    Py_ssize_t npre = 0;
    if (nargs == 2) {
        if (!PyBytes_Check(args[1])) return type_error("bytes prefix", args[1]), NULL;
        pre = PyBytes_AS_STRING(args[1]);
        npre = PyBytes_GET_SIZE(args[1]);
    }
    Enc e = {NULL, NULL, 0, 0, 0};
    e.cap = npre + self->size_hint;
    e.out = PyBytes_FromStringAndSize(NULL, e.cap);
    if (e.out == NULL) return NULL;
    e.buf = PyBytes_AS_STRING(e.out);
    memcpy(e.buf, pre, (size_t)npre);
    e.len = npre;
    Py_INCREF(self); /* the program must outlive any Python code an attribute lookup runs */
    int r = encode_record(&e, self->root, args[0]);
    if (r == 0) self->size_hint = e.len - npre < (1 << 20) ? e.len - npre + 64 : (1 << 20);
    Py_DECREF(self);
    if (r < 0) {
        Py_XDECREF(e.out);
        return NULL;
    }
    if (_PyBytes_Resize(&e.out, e.len) < 0) return NULL;
    return e.out;
}

static PyObject *Codec_decode(CodecObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode(data, offset, n)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) return type_error("bytes", args[0]), NULL;
    Py_ssize_t off = PyLong_AsSsize_t(args[1]);
    if (off == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (off < 0 || n < off || n > PyBytes_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "need 0 <= offset <= n <= len(data)");
        return NULL;
    }
    const unsigned char *base = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Dec d = {base + off, base + n, self->corrupt};
    PyObject *obj = decode_record(&d, self->root);
    if (obj == NULL) return NULL;
    PyObject *end = PyLong_FromSsize_t(d.p - base);
    if (end == NULL) {
        Py_DECREF(obj);
        return NULL;
    }
    PyObject *res = PyTuple_Pack(2, obj, end);
    Py_DECREF(obj);
    Py_DECREF(end);
    return res;
}

static PyMethodDef Codec_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))Codec_encode, METH_FASTCALL,
     "encode(event, prefix=b'') -> prefix + Avro body of the event"},
    {"decode", (PyCFunction)(void (*)(void))Codec_decode, METH_FASTCALL,
     "decode(data, offset, n) -> (event, end): the record in data[offset:n]; CorruptBody if it is not one"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CodecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schemas._cavro.Codec",
    .tp_basicsize = sizeof(CodecObject),
    .tp_dealloc = (destructor)Codec_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Codec(program, corrupt_body): encoder and decoder of one record schema",
    .tp_methods = Codec_methods,
    .tp_new = Codec_new,
};

static struct PyModuleDef cavro_module = {
    PyModuleDef_HEAD_INIT, "schemas._cavro", "Native Avro binary codec for the querytrail events.", -1, NULL,
};

PyMODINIT_FUNC PyInit__cavro(void) {
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) return NULL;
    if (str_utcoffset == NULL && (str_utcoffset = PyUnicode_InternFromString("utcoffset")) == NULL) return NULL;
    if (empty_tuple == NULL && (empty_tuple = PyTuple_New(0)) == NULL) return NULL;
    if (PyType_Ready(&CodecType) < 0) return NULL;
    PyObject *m = PyModule_Create(&cavro_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Codec", (PyObject *)&CodecType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
