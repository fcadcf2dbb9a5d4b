/* Negative control for the ThreadSanitizer job: a deliberate data race.
 *
 * racy.hammer(n) calls racy_increment() n times; racy_increment() does a
 * plain (non-atomic) read-modify-write of a global int64_t.  Calling hammer()
 * from two Python threads of a free-threaded interpreter must make TSan report
 * "WARNING: ThreadSanitizer: data race" with racy_increment in the stack.
 * The module declares Py_MOD_GIL_NOT_USED so importing it does not turn the
 * GIL back on (which would serialise the threads and hide the race).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int64_t counter;   /* shared, unprotected */

__attribute__((noinline)) static void
racy_increment(void)
{
    counter++;            /* the race */
}

static PyObject *
hammer(PyObject *self, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    for (long long i = 0; i < n; i++)
        racy_increment();
    Py_RETURN_NONE;
}

static PyObject *
value(PyObject *self, PyObject *unused)
{
    return PyLong_FromLongLong((long long)counter);
}

static PyMethodDef racy_methods[] = {
    {"hammer", hammer, METH_O, "hammer(n): increment the shared counter n times, racily"},
    {"value", value, METH_NOARGS, "value(): the shared counter"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot racy_slots[] = {
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef racy_module = {
    PyModuleDef_HEAD_INIT, "racy", "deliberately racy extension (TSan negative control)",
    0, racy_methods, racy_slots,
};

PyMODINIT_FUNC
PyInit_racy(void)
{
    return PyModuleDef_Init(&racy_module);
}
