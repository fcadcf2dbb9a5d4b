/*
 * tallies keyed cells: a per-key cell and the protocol that lets a key be
 * removed while other threads are counting it.  KeyedCounter used it until
 * it got a table of its own (_ktable.h); KeyedRateCounter's rings (rate.c)
 * use it.  The text below describes it as it was written, over a dict.
 *
 * Plain C11 over _cells.h (no Python API), so that the protocol can be
 * stressed from pthreads under ThreadSanitizer (tests/c/stress_keyed_cells.c).
 *
 * The problem
 * -----------
 * A KeyedCounter is a dict mapping each key to a small cell.  An increment
 * looks the key up (one dict lookup) and then adds to the cell it found.
 * Without a GIL those are two steps, and a pop/discard/del of the same key
 * can run between them: the remover takes the cell out of the dict and reads
 * its count, then the incrementer adds to a cell that nobody will ever read
 * again.  That increment would be lost.
 *
 * The protocol
 * ------------
 * Each cell has a `state` word next to its value: bit 62 RETIRED, bit 61
 * CLOSED, and in the low bits the number of writers inside the cell.
 *
 * A writer (increment, decrement, assignment):
 *     s = fetch_add(state, 1)            -- announce: "I am inside"
 *     if s has CLOSED: fetch_sub(state, 1); look the key up again
 *     else: update the value; fetch_sub(state, 1)
 *
 * A remover (pop, discard, del, clear):
 *     s = fetch_or(state, RETIRED)       -- claim the removal
 *     if s had RETIRED: another remover owns it; the key counts as absent
 *     delete the key from the dict       -- may run the key's __eq__
 *     fetch_or(state, CLOSED)            -- no writer may enter from now on
 *     wait until the writer count is 0   -- those inside finish (no Python
 *                                           code runs inside: a few loads)
 *     taken = exchange(value, 0)         -- the final count
 *
 * Why nothing is lost or counted twice: the writer's fetch_add and the
 * remover's fetch_or(CLOSED) are read-modify-writes of the same atomic word,
 * so one of them comes first in its modification order (seq_cst).  If the
 * writer came first, the count it added is visible to the remover, which
 * waits for it to reach 0; the writer's update happens before its release
 * fetch_sub, so `taken` includes it.  If the remover came first, the writer
 * sees CLOSED, backs off without touching the value, and looks the key up
 * again: the cell is already out of the dict (CLOSED is set only after the
 * deletion), so it finds a fresh cell or inserts one.  A writer never spins
 * on a removal, and the remover only waits for writers that are inside the
 * few instructions between their fetch_add and fetch_sub, never for Python
 * code; so a key whose __eq__ touches the same counter (run by the dict
 * during the deletion, before CLOSED) cannot deadlock: its nested increment
 * enters and leaves the still-open cell and lands in `taken`.
 *
 * Only the remover that won RETIRED deletes the cell, so the deletion always
 * removes that cell (nobody else can take it out and put another one in
 * before).  If the deletion fails (the key's __eq__ raised), the remover
 * clears RETIRED and the cell stays, unchanged, in the dict.
 *
 * With a GIL the extension uses the same removal code, but writers skip the
 * state word: a C method runs with the GIL held from the lookup to the
 * update, and the remover reads the value only after the deletion, so a
 * writer that found the cell before the deletion has already added to it.
 *
 * A reset of one key is an exchange of its value with 0; it needs no
 * protocol: it and a concurrent remover each take a disjoint part.
 */
#ifndef TALLIES_KEYED_CELLS_H
#define TALLIES_KEYED_CELLS_H


#include "_cells.h"

#define TLK_RETIRED ((int64_t)1 << 62)
#define TLK_CLOSED ((int64_t)1 << 61)
#define TLK_WRITERS (TLK_CLOSED - 1)

/* A writer that found a closed cell must look the key up again. */
enum { TLK_RETRY = 1 };

typedef struct {
    tl_cell value;
    _Atomic int64_t state;
} tlk_cell;

static inline void
tlk_init(tlk_cell *c, int64_t v)
{
    atomic_init(&c->value, v);
    atomic_init(&c->state, 0);
}

/* ---- writers ------------------------------------------------------------ */

static inline int
tlk_enter(tlk_cell *c)
{
    int64_t s = atomic_fetch_add_explicit(&c->state, 1, memory_order_seq_cst);
    if (TL_UNLIKELY(s & TLK_CLOSED)) {
        atomic_fetch_sub_explicit(&c->state, 1, memory_order_relaxed);
        return 0;
    }
    return 1;
}

static inline void
tlk_leave(tlk_cell *c)
{
    atomic_fetch_sub_explicit(&c->state, 1, memory_order_release);
}

/* Checked add: TL_OK / TL_OVERFLOW like tl_add, or TLK_RETRY (closed). */
static inline int
tlk_add(tlk_cell *c, int64_t n, int sub, int64_t *out)
{
    if (!tlk_enter(c)) {
        return TLK_RETRY;
    }
    int r = tl_add(&c->value, n, sub, out);
    tlk_leave(c);
    return r;
}

/* Store v, writing the old value to *old: TL_OK or TLK_RETRY. */
static inline int
tlk_exchange(tlk_cell *c, int64_t v, int64_t *old)
{
    if (!tlk_enter(c)) {
        return TLK_RETRY;
    }
    *old = tl_exchange(&c->value, v);
    tlk_leave(c);
    return TL_OK;
}

/* ---- removers ----------------------------------------------------------- */

/* 1: this caller owns the removal; 0: another remover already does. */
static inline int
tlk_retire(tlk_cell *c)
{
    int64_t s = atomic_fetch_or_explicit(&c->state, TLK_RETIRED,
                                         memory_order_seq_cst);
    return (s & TLK_RETIRED) == 0;
}

/* Undo tlk_retire when the deletion failed (the cell is still in the map). */
static inline void
tlk_unretire(tlk_cell *c)
{
    atomic_fetch_and_explicit(&c->state, ~TLK_RETIRED, memory_order_seq_cst);
}

/* After the cell left the map: shut writers out, wait for those inside,
 * and take the final count. */
static inline int64_t
tlk_close_and_take(tlk_cell *c)
{
    int64_t s = atomic_fetch_or_explicit(&c->state, TLK_CLOSED,
                                         memory_order_seq_cst);
    while ((s & TLK_WRITERS) != 0) {
        tl_yield();
        s = atomic_load_explicit(&c->state, memory_order_acquire);
    }
    return tl_exchange(&c->value, 0);
}

#endif /* TALLIES_KEYED_CELLS_H */
