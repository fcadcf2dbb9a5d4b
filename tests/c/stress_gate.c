/*
 * Stress the gate (src/tallies/_c/_gate.h) from pthreads; build with
 * -fsanitize=thread (tests/c/test_gate_tsan.py does) and without.
 *
 * ROUNDS times: WRITERS threads add 1 to a shared cell through the gate as
 * fast as they can, counting every add that got through; a closer lets them
 * run for a moment, closes the gate, then takes the cell (exchange with 0),
 * as a write-behind store's close() flushes.  Writers stop at the first
 * refusal.  Every add that got through must be in what the closer took, and
 * nothing may be added after it: per round,
 *
 *     taken == sum of the writers' successes, and the cell is 0 afterwards.
 *
 * A writer now and then yields between passing the gate and adding (the
 * window in which a closer that does not wait would take too early).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "_gate.h"

#define WRITERS 4
#define ROUNDS 200
#define OPEN 0
#define CLOSED 2

static tl_gate_flight flight;
static _Atomic int state;
static _Atomic int64_t cell;
static _Atomic long go;
static long successes[WRITERS];

static void *
writer(void *arg)
{
    long me = (long)(intptr_t)arg;
    unsigned hook = (unsigned)me * 2654435761u;
    long mine = 0;
    while (atomic_load(&go) == 0) {
        sched_yield();
    }
    for (;;) {
        _Atomic long *passed = tl_gate_enter(&flight, &state, CLOSED);
        if (passed == NULL) {
            break;
        }
        hook = hook * 1103515245u + 12345u;
        if ((hook >> 16) % 16 == 0) {
            sched_yield(); /* inside the gate: the closer must wait for this add */
        }
        atomic_fetch_add_explicit(&cell, 1, memory_order_relaxed);
        tl_gate_leave(passed);
        mine++;
    }
    successes[me] = mine;
    return NULL;
}

int
main(void)
{
    int ok = 1;
    long total_taken = 0;
    for (int round = 0; round < ROUNDS && ok; round++) {
        atomic_store(&state, OPEN);
        atomic_store(&cell, 0);
        atomic_store(&go, 0);
        pthread_t w[WRITERS];
        for (long i = 0; i < WRITERS; i++) {
            pthread_create(&w[i], NULL, writer, (void *)(intptr_t)i);
        }
        atomic_store(&go, 1);
        for (int i = 0; i < 200 + round * 10; i++) {
            sched_yield();
        }
        tl_gate_close(&flight, &state, CLOSED);
        int64_t taken = atomic_exchange(&cell, 0);
        for (int i = 0; i < WRITERS; i++) {
            pthread_join(w[i], NULL);
        }
        long sum = 0;
        for (int i = 0; i < WRITERS; i++) {
            sum += successes[i];
        }
        int64_t after = atomic_load(&cell);
        if (taken != sum || after != 0) {
            printf("LOST OR ADDED AFTER CLOSE: round %d, writers passed %ld, closer took %lld, "
                   "left after %lld\n",
                   round, sum, (long long)taken, (long long)after);
            ok = 0;
        }
        total_taken += (long)taken;
    }
    printf("rounds %d, adds %ld\n", ROUNDS, total_taken);
    if (!ok) {
        return 1;
    }
    printf("balanced\n");
    return 0;
}
