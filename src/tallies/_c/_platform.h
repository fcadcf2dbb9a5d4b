/*
 * tallies: the one place for what differs between compilers and operating
 * systems in the C core.  Everything else is ISO C11 (<stdatomic.h>,
 * _Thread_local) plus the CPython API; setup.py compiles with -std=c11 (not
 * gnu11), and the CI leg scripts/test-compilers builds with gcc and clang,
 * -Werror, with and without TL_PORTABLE=1.
 *
 * Compiler
 *   TL_LIKELY / TL_UNLIKELY      branch hints (__builtin_expect), else nothing
 *   TL_ADD_OVERFLOWS / TL_SUB_OVERFLOWS(a, b, &r)
 *                                checked int64 arithmetic: 1 when a+b (a-b)
 *                                leaves int64 (r then unspecified), else 0 with
 *                                the result in r.  GCC/Clang builtins, else (or
 *                                with -DTL_PORTABLE=1) plain C comparisons
 *                                that accept int64_t operands only
 *   TL_TLS_FAST                  initial-exec TLS model for hot thread-locals
 *                                (ELF only: one instruction instead of a call
 *                                to __tls_get_addr), else nothing
 *   TL_ALIGNED(n)                alignment of a static object (C11 _Alignas)
 *   TL_HIDDEN                    a global of the extension that the files
 *                                share (_module.h's tl_cpus): hidden
 *                                visibility, read without the GOT; else
 *                                nothing (a DLL exports nothing by default)
 *   TL_ALWAYS_INLINE             `inline` that the compiler must honour on
 *                                a hot path; else plain `inline`
 *   TL_COLD                      a static error path (cold, never inlined,
 *                                and no warning where a file does not call
 *                                it); else `inline`, which in C11 also keeps
 *                                an unused static function quiet
 * Operating system
 *   tl_cpu_count()               online CPUs (sysconf; GetActiveProcessorCount)
 *   tl_yield()                   give up the CPU (sched_yield; SwitchToThread)
 *
 * With -DTL_PORTABLE=1 every compiler extension above is replaced by its plain
 * C form even on GCC/Clang, so CI builds and runs the code a compiler without
 * them would get (tests: scripts/test-compilers).  Windows (MSVC) and macOS
 * are planned, not built here: docs/platforms.md.  The shared-memory store's
 * platform specifics (/dev/shm, fcntl locks, mmap of a file) are Python, in
 * tallies/stores/_shm_segment.py.
 *
 * This header includes no Python header: the pthread stresses under tests/c
 * compile it on its own.  In the extension it comes after <Python.h> (which
 * must be first and defines the POSIX feature macros).
 */
#ifndef TALLIES_PLATFORM_H
#define TALLIES_PLATFORM_H

#include <stdint.h>

#ifndef TL_PORTABLE
#define TL_PORTABLE 0
#endif

#if defined(__SANITIZE_THREAD__)
#define TL_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TL_TSAN 1
#endif
#endif
#ifndef TL_TSAN
#define TL_TSAN 0
#endif

#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <sched.h>
#include <unistd.h>
#endif

#if (defined(__GNUC__) || defined(__clang__)) && !TL_PORTABLE
#define TL_LIKELY(x) __builtin_expect(!!(x), 1)
#define TL_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TL_ADD_OVERFLOWS(a, b, r) __builtin_add_overflow((a), (b), (r))
#define TL_SUB_OVERFLOWS(a, b, r) __builtin_sub_overflow((a), (b), (r))
#else
#define TL_LIKELY(x) (x)
#define TL_UNLIKELY(x) (x)

static inline int
tl_add_overflows_i64(int64_t a, int64_t b, int64_t *r)
{
    if (b > 0 ? a > INT64_MAX - b : a < INT64_MIN - b) {
        return 1;
    }
    *r = a + b;
    return 0;
}

static inline int
tl_sub_overflows_i64(int64_t a, int64_t b, int64_t *r)
{
    if (b < 0 ? a > INT64_MAX + b : a < INT64_MIN + b) {
        return 1;
    }
    *r = a - b;
    return 0;
}

#define TL_ADD_OVERFLOWS(a, b, r) tl_add_overflows_i64((a), (b), (r))
#define TL_SUB_OVERFLOWS(a, b, r) tl_sub_overflows_i64((a), (b), (r))
#endif

/* initial-exec needs an ELF dynamic linker; ThreadSanitizer's runtime wants
 * the default model. */
#if defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && !TL_PORTABLE && !TL_TSAN
#define TL_TLS_FAST __attribute__((tls_model("initial-exec")))
#else
#define TL_TLS_FAST
#endif

#define TL_ALIGNED(n) _Alignas(n)

#if (defined(__GNUC__) || defined(__clang__)) && !TL_PORTABLE
#define TL_HIDDEN __attribute__((visibility("hidden")))
#define TL_ALWAYS_INLINE inline __attribute__((always_inline))
#define TL_COLD __attribute__((cold, noinline, unused))
#else
#define TL_HIDDEN
#define TL_ALWAYS_INLINE inline
#define TL_COLD inline
#endif

static inline long
tl_cpu_count(void)
{
#if defined(_WIN32)
    return (long)GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
#else
    return sysconf(_SC_NPROCESSORS_ONLN); /* -1 when unknown: callers clamp */
#endif
}

static inline void
tl_yield(void)
{
#if defined(_WIN32)
    (void)SwitchToThread();
#else
    (void)sched_yield();
#endif
}

#endif /* TALLIES_PLATFORM_H */
