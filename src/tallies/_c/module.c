/*
 * tallies._tallies: the one module definition of tallies' C core (read
 * _module.h first: how the C files make one extension).
 *
 * The module is multi-phase (PEP 489): Py_mod_exec runs tl_module_exec on a
 * fresh module object, which calls each file's tl_*_exec.  It declares
 * Py_MOD_GIL_NOT_USED (a free-threaded interpreter keeps its GIL off: every
 * type is safe without it) and does not support sub-interpreters (some
 * types live once per process: keyed.c's Count, the statics of the headers).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_cells.h" /* _platform.h: tl_cpu_count */
#include "_internals.h"
#include "_module.h"

uint32_t tl_cpus = 1;
int64_t tl_monotonic_tick = -1, tl_realtime_tick = -1;

static int64_t
coarse_tick(clockid_t clk)
{
    struct timespec res;
    return clock_getres(clk, &res) == 0 && res.tv_sec == 0 ? (int64_t)res.tv_nsec : -1;
}

PyTypeObject *
tl_add_type(PyObject *m, PyType_Spec *spec, int which, int add)
{
    tl_module_state *st = PyModule_GetState(m);
    PyTypeObject *tp = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec, NULL);
    if (tp == NULL) {
        return NULL;
    }
    st->types[which] = tp;
    if (add && PyModule_AddType(m, tp) < 0) {
        return NULL;
    }
    return tp;
}

static int
tl_module_exec(PyObject *m)
{
    long cpus = tl_cpu_count();
    tl_cpus = cpus < 1 ? 1 : (cpus > TL_MAX_SLOTS ? TL_MAX_SLOTS : (uint32_t)cpus);
    tl_monotonic_tick = coarse_tick(CLOCK_MONOTONIC_COARSE);
    tl_realtime_tick = coarse_tick(CLOCK_REALTIME_COARSE);
    if (PyModule_AddIntConstant(m, "FREE_THREADED_BUILD", TL_FREE_THREADED) < 0 ||
        PyModule_AddIntConstant(m, "CPU_SLOTS", (long)tl_cpus) < 0 ||
        PyModule_AddStringConstant(m, "CPYTHON_INTERNALS", TL_INTERNALS_USED) < 0) {
        return -1;
    }
    if (tl_counter_exec(m) < 0 || tl_keyed_exec(m) < 0 || tl_rate_exec(m) < 0 ||
        tl_shm_exec(m) < 0 || tl_buffered_exec(m) < 0 || tl_limiter_exec(m) < 0 ||
        tl_wallrate_exec(m) < 0) {
        return -1;
    }
    return 0;
}

/* The module's GC: its state holds a reference to each type, which
 * traverse visits and clear drops (OP: Py_VISIT or Py_CLEAR). */
#define TL_EACH_STATE_TYPE(m, OP)                                 \
    do {                                                          \
        tl_module_state *st_ = PyModule_GetState(m);              \
        for (int i_ = 0; i_ < TL_NTYPES; i_++) {                  \
            OP(st_->types[i_]);                                   \
        }                                                         \
    } while (0)

static int
tl_module_traverse(PyObject *m, visitproc visit, void *arg)
{
    TL_EACH_STATE_TYPE(m, Py_VISIT);
    return 0;
}

static int
tl_module_clear(PyObject *m)
{
    TL_EACH_STATE_TYPE(m, Py_CLEAR);
    return 0;
}

static void
tl_module_free(void *m)
{
    (void)tl_module_clear((PyObject *)m);
}

static PyModuleDef_Slot tl_module_slots[] = {
    {Py_mod_exec, tl_module_exec},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef tl_module = {
    PyModuleDef_HEAD_INIT,
    "tallies._tallies",
    "The C core of tallies (private: tallies._impl takes every type from here).",
    sizeof(tl_module_state),
    NULL,
    tl_module_slots,
    tl_module_traverse,
    tl_module_clear,
    tl_module_free,
};

PyMODINIT_FUNC
PyInit__tallies(void)
{
    return PyModuleDef_Init(&tl_module);
}
