/*
 * Argument conversion shared by every type of tallies' C core: one set of
 * rules and one set of error messages for every counter.
 *
 * - An amount is any object with __index__; anything else is a TypeError
 *   naming its type.  A value outside int64 is an OverflowError.  Conversion
 *   happens before any cell is touched, so a bad argument changes nothing.
 * - Sums of int64 cells are returned exactly, as a Python int when they do
 *   not fit in an int64.
 *
 * Include after Python.h, _cells.h and _module.h.
 */
#ifndef TALLIES_PYARGS_H
#define TALLIES_PYARGS_H

/* The type's name without its module, as Python's own messages show it. */
static inline const char *
type_name(PyTypeObject *tp)
{
    const char *dot = strrchr(tp->tp_name, '.');
    return dot == NULL ? tp->tp_name : dot + 1;
}

/* A METH_FASTCALL method that takes exactly `want` positional arguments: 0,
 * or -1 with TypeError "<fname>() takes exactly <want> arguments". */
static inline int
tl_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *fname)
{
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments", fname, want);
        return -1;
    }
    return 0;
}

/* Convert any object with __index__ to int64. */
static inline int
to_int64(PyObject *obj, const char *fname, int64_t *out)
{
    int overflow;
    long long v;
    if (TL_LIKELY(PyLong_Check(obj))) {
        v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    }
    else if (Py_TYPE(obj)->tp_as_number != NULL &&
             Py_TYPE(obj)->tp_as_number->nb_index != NULL) {
        PyObject *idx = PyNumber_Index(obj);
        if (idx == NULL) {
            return -1;
        }
        v = PyLong_AsLongLongAndOverflow(idx, &overflow);
        Py_DECREF(idx);
    }
    else {
        PyErr_Format(PyExc_TypeError, "%s() expects an integer, not '%.200s'",
                     fname, type_name(Py_TYPE(obj)));
        return -1;
    }
    if (overflow) {
        PyErr_Format(PyExc_OverflowError,
                     "%s() argument %R is outside the signed 64-bit range",
                     fname, obj);
        return -1;
    }
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

/* The optional amount of increment(n=1) / decrement(n=1), vectorcall form;
 * call it only when nargs != 0 or kwnames != NULL. */
static inline int
parse_amount(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
             const char *fname, int64_t *n)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most 1 argument (%zd given)", fname,
                     nargs + nkw);
        return -1;
    }
    if (nkw == 1 &&
        PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "n") != 0) {
        PyErr_Format(PyExc_TypeError,
                     "%s() got an unexpected keyword argument '%U'", fname,
                     PyTuple_GET_ITEM(kwnames, 0));
        return -1;
    }
    return to_int64(args[0], fname, n);
}

/* increment(key, n=1) / decrement(key, n=1), vectorcall form, when there is
 * more than the key (the hot path, one positional key, needs no parsing).
 * Out of line: inlined, it costs the hot path registers. */
static TL_COLD int
parse_key_amount(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                 const char *fname, PyObject **key, int64_t *n)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs < 1) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'key'",
                     fname);
        return -1;
    }
    if (nargs + nkw > 2) {
        PyErr_Format(PyExc_TypeError,
                     "%s() takes at most 2 arguments (%zd given)", fname,
                     nargs + nkw);
        return -1;
    }
    if (nkw == 1) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        if (PyUnicode_CompareWithASCIIString(name, "n") != 0) {
            PyErr_Format(PyExc_TypeError,
                         "%s() got an unexpected keyword argument '%U'", fname,
                         name);
            return -1;
        }
    }
    *key = args[0];
    if (nargs + nkw == 1) {
        *n = 1;
        return 0;
    }
    return to_int64(args[1], fname, n);
}

/* Sum k int64 values exactly, into a Python int if they overflow int64. */
static inline PyObject *
sum_to_pylong(const int64_t *vals, Py_ssize_t k)
{
    int64_t acc = 0;
    Py_ssize_t i;
    for (i = 0; i < k; i++) {
        if (TL_ADD_OVERFLOWS(acc, vals[i], &acc)) {
            break;
        }
    }
    if (TL_LIKELY(i == k)) {
        return PyLong_FromLongLong((long long)acc);
    }
    PyObject *total = PyLong_FromLong(0);
    for (i = 0; total != NULL && i < k; i++) {
        PyObject *v = PyLong_FromLongLong((long long)vals[i]);
        if (v == NULL) {
            Py_CLEAR(total);
            break;
        }
        Py_SETREF(total, PyNumber_Add(total, v));
        Py_DECREF(v);
    }
    return total;
}

#endif /* TALLIES_PYARGS_H */
