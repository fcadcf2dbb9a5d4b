/*
 * tallies gate: updates pass while it is open; closing it waits for the
 * updates that got through.
 *
 * Plain C11 (no Python API), so that the very same code runs in the
 * extension (_c/buffered.c: a write-behind store's close() must not strand an
 * update that raced with it) and, under ThreadSanitizer, in a pthread stress
 * (tests/c/stress_gate.c, with a mutant it must catch).
 *
 * The problem
 * -----------
 * A closer flips a state word to CLOSED and then takes what the updates left
 * (a flush).  An update that read "open" and is preempted before its add
 * would add after the take: counted nowhere, and never reported.  With a GIL
 * the read and the add are one step; without one they are not.
 *
 * The protocol (Dekker, as _ktable.h's regions)
 * --------------------------------------------------
 *     update:  fetch_add(my stripe, 1)      [seq_cst]
 *              if load(state) == closed    [seq_cst]: fetch_sub; refuse
 *              ... the add ...
 *              fetch_sub(my stripe, 1)      [release]
 *     close:   store(state, closed)         [seq_cst]
 *              wait until every stripe reads 0 [seq_cst]; then take.
 * The two seq_cst store-then-load pairs cannot both miss each other: either
 * the update sees CLOSED and adds nothing, or the closer sees the update's
 * announcement and waits until it left, so the add is done (release, read by
 * the closer's acquire) before the take.
 *
 * The in-flight count is striped: TL_GATE_STRIPES padded slots, handed to
 * threads round-robin at their first update, so that threads updating at once
 * write different cache lines.  One tl_gate_flight serves any number of state
 * words (the extension has one per process): a closer also waits for updates
 * of other objects, which only ever last a few instructions (nothing in the
 * gated section may block, allocate through Python, or run Python code).
 */
#ifndef TALLIES_GATE_H
#define TALLIES_GATE_H


#include "_cells.h"

#define TL_GATE_STRIPES 16

typedef struct {
    _Atomic long n;
    char pad[TL_LINE - sizeof(long)];
} tl_gate_stripe;

typedef struct {
    tl_gate_stripe stripes[TL_GATE_STRIPES];
} tl_gate_flight;

static _Thread_local TL_TLS_FAST int tl_gate_slot = -1;
static _Atomic unsigned tl_gate_next_slot;

/* Announce an update unless *state is `closed`: the stripe to pass to
 * tl_gate_leave() after the update, or NULL (closed: do nothing). */
static inline _Atomic long *
tl_gate_enter(tl_gate_flight *f, _Atomic int *state, int closed)
{
    int i = tl_gate_slot;
    if (TL_UNLIKELY(i < 0)) {
        i = (int)(atomic_fetch_add_explicit(&tl_gate_next_slot, 1, memory_order_relaxed) %
                  TL_GATE_STRIPES);
        tl_gate_slot = i;
    }
    _Atomic long *s = &f->stripes[i].n;
    atomic_fetch_add_explicit(s, 1, memory_order_seq_cst);
    if (TL_UNLIKELY(atomic_load_explicit(state, memory_order_seq_cst) == closed)) {
        atomic_fetch_sub_explicit(s, 1, memory_order_release);
        return NULL;
    }
    return s;
}

static inline void
tl_gate_leave(_Atomic long *s)
{
    atomic_fetch_sub_explicit(s, 1, memory_order_release);
}

/* Store `closed` into *state, then wait for every update that got through. */
static inline void
tl_gate_close(tl_gate_flight *f, _Atomic int *state, int closed)
{
    atomic_store_explicit(state, closed, memory_order_seq_cst);
    for (int i = 0; i < TL_GATE_STRIPES; i++) {
        while (atomic_load_explicit(&f->stripes[i].n, memory_order_seq_cst) != 0) {
            tl_yield();
        }
    }
}

#endif /* TALLIES_GATE_H */
