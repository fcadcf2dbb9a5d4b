/*
 * tallies limiter windows: admission windows and fixed windows, in one
 * process (memory://) or in memory that processes share (shm://).
 *
 * Plain C11 (<stdatomic.h>, no Python API), like _ring.h, so that the
 * extension and a pthread/fork stress test compile it unchanged.
 *
 * The window (tlw_*)
 * ------------------
 * A limiter admits at most `limit` units in the current slot and the B slots
 * before it (slots of res_ns nanoseconds; tallies/stores/_limiter.py has the
 * promise).  A window keeps `latest` (the newest slot seen), `total` (the
 * units in slots latest-B..latest) and counts[slot % (B + 1)].  Moving to a
 * newer slot zeroes the slots that left (all of them after a gap of B + 1 or
 * more: O(min(gap, B + 1))) and subtracts them from `total`; admitting n is
 * then one compare (n <= limit - total: no overflow, limit <= INT64_MAX) and
 * two adds.  A clock reading older than `latest` counts in `latest`.  Whoever
 * calls these holds the window's lock (or the GIL).
 *
 * The shared table (tll_*)
 * ------------------------
 * shm://NAME keeps its limiters in a file of its own beside the segment
 * (NAME's path + ".limits"), created complete under a temporary name and
 * link()ed into place, so no process ever maps a half-made one:
 *
 *   header (32 KiB)      magic, byte order, version, size, entry count, the
 *                        table lock, then TLL_NAMES name records (a limiter's
 *                        spec, or a family of fixed windows)
 *   entries              cap x 1024 bytes: one key of one name each
 *
 * An entry is one key's window (B + 1 <= TLL_SLOTS) or one fixed window
 * (`latest` = its end in Unix ms, `total` = its count), with its own lock.  A
 * hit locks only its entry.  Finding an entry (a process's first use of a
 * key) takes the table lock and probes TLL_PROBE entries from the key's hash:
 * the key itself, else the first entry that is empty or whose window has
 * expired (every unit left it: per-user and per-IP keys come and go, the
 * table does not grow), which is claimed for the key and its generation
 * bumped.  Processes cache (entry, generation) per key and check the
 * generation under the entry's lock: an entry reused for another key sends
 * them back to the table.  Lock order: table, then entry.
 *
 * The locks: one word each, 0 when free, else the owner's (pid, start
 * time) in 64 bits.  Taking one is one atomic exchange... a CAS from 0,
 * releasing one is a release store: the hot path pays one atomic
 * read-modify-write.  A waiter spins, then yields; after TLL_SPINS_CHECK
 * yields it asks whether the owner still lives (kill(pid, 0), and its start
 * time in /proc: a reused pid is not the owner).  A dead owner's lock is
 * taken over by CAS, and the entry repaired: an entry being claimed goes
 * back to empty; a window's `total` is recomputed from its counts (the dead
 * owner may have stopped between the two adds), so a process killed inside a
 * hit leaves nothing that over-admits.
 */
#ifndef TALLIES_LIMTABLE_H
#define TALLIES_LIMTABLE_H

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define TLW_MAX_SLOTS 1001 /* B + 1 in one process (B <= 1000) */
#define TLL_SLOTS 64       /* B + 1 in a shared entry */
#define TLL_KEY_MAX 224
#define TLL_NAME_MAX 200
#define TLL_NAMES 126
#define TLL_PROBE 64
#define TLL_ENTRY 1024
#define TLL_HEADER 32768
#define TLL_MAGIC 0x54494d494c4c4154ull /* "TALLIMIT" little-endian */
#define TLL_ORDER 0x0102030405060708ull
#define TLL_VERSION 1
#define TLL_SPINS_CHECK 2000

enum { TLL_OK = 0, TLL_FULL = -1, TLL_MISMATCH = -2, TLL_STALE = -3, TLL_OVERFLOW = -4,
       TLL_CORRUPT = -5 };
enum { TLL_FREE = 0, TLL_CLAIMING = 1, TLL_LIVE = 2 };
enum { TLL_LIMITER = 1, TLL_FIXED = 2 };

/* ---- the window ----------------------------------------------------------- */

/* Move a window of `size` = B + 1 slots to slot s. */
static inline void
tlw_advance(int64_t *latest, int64_t *total, int64_t *counts, int64_t size, int64_t s)
{
    int64_t gap = s - *latest;
    if (gap <= 0) {
        return;
    }
    if (gap >= size) {
        memset(counts, 0, (size_t)size * sizeof(int64_t));
        *total = 0;
    } else {
        for (int64_t j = *latest + 1; j <= s; j++) {
            int64_t i = j % size;
            if (i < 0) {
                i += size;
            }
            *total -= counts[i];
            counts[i] = 0;
        }
    }
    *latest = s;
}

/* Admit n (1 <= n) in slot max(s, latest) if the window stays within limit. */
static inline int
tlw_hit(int64_t *latest, int64_t *total, int64_t *counts, int64_t size, int64_t s,
        int64_t limit, int64_t n)
{
    tlw_advance(latest, total, counts, size, s);
    if (n > limit - *total) {
        return 0;
    }
    int64_t i = *latest % size;
    if (i < 0) {
        i += size;
    }
    counts[i] += n;
    *total += n;
    return 1;
}

/* The oldest slot of the window that holds units (call after tlw_advance),
 * or INT64_MIN when none does. */
static inline int64_t
tlw_oldest(int64_t latest, const int64_t *counts, int64_t size)
{
    for (int64_t j = latest - size + 1; j <= latest; j++) {
        int64_t i = j % size;
        if (i < 0) {
            i += size;
        }
        if (counts[i] != 0) {
            return j;
        }
    }
    return INT64_MIN;
}

/* ---- the shared table ------------------------------------------------------- */

typedef struct {
    _Atomic int64_t state; /* TLL_FREE / TLL_LIVE */
    int64_t kind;          /* TLL_LIMITER / TLL_FIXED */
    int64_t limit, per_ns, res_ns, buckets;
    int64_t namelen;
    char name[TLL_NAME_MAX];
    char pad_[256 - 7 * 8 - TLL_NAME_MAX];
} tll_name;

typedef struct {
    uint64_t magic, order, version, size;
    int64_t cap;
    _Atomic uint64_t lock;
    char pad_[512 - 6 * 8];
    tll_name names[TLL_NAMES];
} tll_header;

typedef struct {
    _Atomic uint64_t lock;
    int64_t state; /* TLL_FREE / TLL_CLAIMING / TLL_LIVE (changed under both locks) */
    uint64_t gen;  /* bumped whenever the entry is given to a key */
    int64_t name;  /* index into names */
    uint64_t hash;
    int64_t keylen;
    int64_t latest; /* newest slot; a fixed window: its end, Unix ms */
    int64_t total;  /* units in the window; a fixed window: its count */
    char key[TLL_KEY_MAX];
    int64_t counts[TLL_SLOTS];
    char pad_[TLL_ENTRY - 8 * 8 - TLL_KEY_MAX - TLL_SLOTS * 8];
} tll_entry;

_Static_assert(sizeof(tll_name) == 256, "name record size");
_Static_assert(sizeof(tll_header) <= TLL_HEADER, "header size");
_Static_assert(sizeof(tll_entry) == TLL_ENTRY, "entry size");

typedef struct {
    tll_header *h;
    tll_entry *e;
    uint64_t self; /* this process's lock word */
} tll_table;

static inline size_t
tll_bytes(int64_t cap)
{
    return (size_t)TLL_HEADER + (size_t)cap * TLL_ENTRY;
}

static inline uint64_t
tll_hash(int64_t name, const char *key, int64_t len)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)name;
    for (int64_t i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* This process's start time in clock ticks (field 22 of /proc/PID/stat), or
 * 0 when it cannot be read. */
static inline uint64_t
tll_start_time(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[got] = '\0';
    char *p = strrchr(buf, ')'); /* the command may hold spaces and parens */
    if (p == NULL) {
        return 0;
    }
    int field = 2;
    unsigned long long v = 0;
    for (char *q = p + 1; *q; q++) {
        if (*q == ' ') {
            field++;
            if (field == 22) {
                v = strtoull(q + 1, NULL, 10);
                break;
            }
        }
    }
    return (uint64_t)v;
}

/* The lock word of a process: pid in the low 32 bits, the low 32 bits of its
 * start time above (never 0). */
static inline uint64_t
tll_owner_word(pid_t pid)
{
    return ((tll_start_time(pid) & 0xffffffffull) << 32) | (uint32_t)pid | 0x1ull << 63;
}

static inline int
tll_owner_alive(uint64_t word)
{
    pid_t pid = (pid_t)(uint32_t)(word & 0xffffffffull);
    if (kill(pid, 0) != 0 && errno == ESRCH) {
        return 0;
    }
    uint64_t now = tll_owner_word(pid);
    return now == word; /* a reused pid has another start time */
}

/* Take a lock word; returns 1 when it was taken over from a dead owner (the
 * caller repairs what the lock guards). */
static inline int
tll_lock(_Atomic uint64_t *lock, uint64_t self)
{
    uint64_t expected = 0;
    if (TL_LIKELY(atomic_compare_exchange_strong_explicit(lock, &expected, self,
                                                          memory_order_acquire,
                                                          memory_order_relaxed))) {
        return 0;
    }
    for (unsigned spins = 0;; spins++) {
        expected = 0;
        if (atomic_compare_exchange_weak_explicit(lock, &expected, self, memory_order_acquire,
                                                  memory_order_relaxed)) {
            return 0;
        }
        if (spins >= 64) {
            sched_yield();
        }
        if (spins >= TLL_SPINS_CHECK && spins % TLL_SPINS_CHECK == 0 && expected != 0 &&
            expected != self && !tll_owner_alive(expected)) {
            if (atomic_compare_exchange_strong_explicit(lock, &expected, self,
                                                        memory_order_acquire,
                                                        memory_order_relaxed)) {
                return 1;
            }
        }
    }
}

static inline void
tll_unlock(_Atomic uint64_t *lock)
{
    atomic_store_explicit(lock, 0, memory_order_release);
}

/* Repair an entry after its owner died inside it (entry lock held). */
static inline void
tll_repair(tll_table *t, tll_entry *e)
{
    if (e->state == TLL_CLAIMING) {
        e->state = TLL_FREE;
        return;
    }
    if (e->state == TLL_LIVE && e->name >= 0 && e->name < TLL_NAMES &&
        t->h->names[e->name].kind == TLL_LIMITER) {
        int64_t sum = 0;
        for (int i = 0; i < TLL_SLOTS; i++) {
            sum += e->counts[i];
        }
        e->total = sum;
    }
}

static inline void
tll_lock_entry(tll_table *t, tll_entry *e)
{
    if (tll_lock(&e->lock, t->self)) {
        tll_repair(t, e);
    }
}

/* Lay out a new table in `mem` (zeroed, tll_bytes(cap) long). */
static inline void
tll_format(void *mem, int64_t cap)
{
    tll_header *h = (tll_header *)mem;
    h->order = TLL_ORDER;
    h->version = TLL_VERSION;
    h->size = tll_bytes(cap);
    h->cap = cap;
    atomic_store(&h->lock, 0);
    h->magic = TLL_MAGIC; /* last: a reader checks it first */
}

/* Attach to a mapped table; TLL_CORRUPT when it is not one. */
static inline int
tll_attach(tll_table *t, void *mem, size_t size)
{
    tll_header *h = (tll_header *)mem;
    if (size < TLL_HEADER || h->magic != TLL_MAGIC || h->order != TLL_ORDER ||
        h->version != TLL_VERSION || h->cap < 1 || h->size != tll_bytes(h->cap) ||
        h->size > size) {
        return TLL_CORRUPT;
    }
    t->h = h;
    t->e = (tll_entry *)((char *)mem + TLL_HEADER);
    t->self = tll_owner_word(getpid());
    return TLL_OK;
}

/* Register (or find) a name with its spec; *idx its index.  TLL_MISMATCH:
 * the name is registered with another spec (*idx says where); TLL_FULL. */
static inline int
tll_register(tll_table *t, const char *name, int64_t len, int64_t kind, int64_t limit,
             int64_t per_ns, int64_t res_ns, int64_t buckets, int64_t *idx)
{
    tll_header *h = t->h;
    int rc = TLL_FULL;
    tll_lock(&h->lock, t->self); /* name records are written whole, state last */
    for (int64_t i = 0; i < TLL_NAMES; i++) {
        tll_name *n = &h->names[i];
        if (atomic_load(&n->state) == TLL_LIVE) {
            if (n->namelen == len && memcmp(n->name, name, (size_t)len) == 0) {
                *idx = i;
                rc = (n->kind == kind && n->limit == limit && n->per_ns == per_ns &&
                      n->res_ns == res_ns && n->buckets == buckets)
                         ? TLL_OK
                         : TLL_MISMATCH;
                goto done;
            }
            continue;
        }
        if (rc == TLL_FULL) {
            *idx = i;
            rc = TLL_OK + 1; /* a free record: used unless the name turns up later */
        }
    }
    if (rc == TLL_OK + 1) {
        tll_name *n = &h->names[*idx];
        n->kind = kind;
        n->limit = limit;
        n->per_ns = per_ns;
        n->res_ns = res_ns;
        n->buckets = buckets;
        n->namelen = len;
        memcpy(n->name, name, (size_t)len);
        atomic_store(&n->state, TLL_LIVE);
        rc = TLL_OK;
    }
done:
    tll_unlock(&h->lock);
    return rc;
}

/* Whether entry e (lock held) holds nothing that still counts: a limiter's
 * window at monotonic time now_ns, a fixed window at Unix time now_ms. */
static inline int
tll_expired(tll_table *t, tll_entry *e, int64_t now_ns, int64_t now_ms)
{
    if (e->state != TLL_LIVE || e->name < 0 || e->name >= TLL_NAMES) {
        return 1;
    }
    tll_name *n = &t->h->names[e->name];
    if (n->kind == TLL_FIXED) {
        return e->latest <= now_ms;
    }
    return n->res_ns <= 0 || e->total == 0 || e->latest < now_ns / n->res_ns - n->buckets;
}

/* Lock entry i if it still holds generation gen (*out: the entry, locked);
 * TLL_STALE otherwise (nothing locked). */
static inline int
tll_enter(tll_table *t, int64_t i, uint64_t gen, tll_entry **out)
{
    if (i < 0 || i >= t->h->cap) {
        return TLL_STALE;
    }
    tll_entry *e = &t->e[i];
    tll_lock_entry(t, e);
    if (e->gen != gen || e->state != TLL_LIVE) {
        tll_unlock(&e->lock);
        return TLL_STALE;
    }
    *out = e;
    return TLL_OK;
}

/* Find the entry of (name, key), claiming one when absent (create); *entry
 * and *gen say where.  now_ns is the monotonic clock (the limiter windows')
 * and now_ms the wall clock in ms (fixed windows'), to tell expired entries.
 * TLL_FULL when the TLL_PROBE entries from the hash all count; TLL_STALE when
 * absent and !create. */
static inline int
tll_find(tll_table *t, int64_t name, const char *key, int64_t len, int create, int64_t now_ns,
         int64_t now_ms, int64_t *entry, uint64_t *gen)
{
    tll_header *h = t->h;
    uint64_t hash = tll_hash(name, key, len);
    int64_t cap = h->cap;
    int64_t start = (int64_t)(hash % (uint64_t)cap);
    int64_t free_at = -1;
    int rc = TLL_STALE;
    tll_lock(&h->lock, t->self);
    for (int64_t k = 0; k < TLL_PROBE && k < cap; k++) {
        int64_t i = (start + k) % cap;
        tll_entry *e = &t->e[i];
        tll_lock_entry(t, e);
        if (e->state == TLL_LIVE && e->name == name && e->hash == hash && e->keylen == len &&
            memcmp(e->key, key, (size_t)len) == 0) {
            *entry = i;
            *gen = e->gen;
            tll_unlock(&e->lock);
            rc = TLL_OK;
            goto done;
        }
        if (free_at < 0 && tll_expired(t, e, now_ns, now_ms)) {
            free_at = i;
        }
        tll_unlock(&e->lock);
    }
    if (!create) {
        goto done;
    }
    if (free_at < 0) {
        rc = TLL_FULL;
        goto done;
    }
    {
        tll_entry *e = &t->e[free_at];
        tll_lock_entry(t, e);
        e->state = TLL_CLAIMING;
        e->name = name;
        e->hash = hash;
        e->keylen = len;
        memcpy(e->key, key, (size_t)len);
        memset(e->counts, 0, sizeof e->counts);
        e->total = 0;
        e->latest = (h->names[name].kind == TLL_FIXED) ? INT64_MIN : 0;
        e->gen++;
        e->state = TLL_LIVE;
        *entry = free_at;
        *gen = e->gen;
        tll_unlock(&e->lock);
        rc = TLL_OK;
    }
done:
    tll_unlock(&h->lock);
    return rc;
}

#endif /* TALLIES_LIMTABLE_H */
