/* fastnorm_pool.h: a bounded cache of large host blocks behind a NumPy data-memory handler (NumPy >= 1.22).

Why: glibc serves a large output (above its mmap threshold, at most 32 MiB; a 256 MiB LayerNorm y) from a fresh
mmap on every call and unmaps it on free, and the OS zeroes each page on first touch: about as long as the kernel. Blocks of at least FN_POOL_MIN_BYTES that the
arrays give back are kept here, most recently freed first, and handed to the next request of the same size class,
so a loop of same-shaped calls (training, benchmarks) touches memory it already owns.

Layout: every block is [raw malloc'd bytes ... | header (FN_POOL_HEADER bytes) | user data], the user data
FN_POOL_ALIGN-aligned, and page-aligned (FN_POOL_PAGE) in the classes that are cached (at most one more page per
block of at least 1 MiB): a kernel's vectors and streamed stores then never straddle a page boundary.
The header records the block's capacity, so free never trusts the size NumPy passes.
Lookup: the cached blocks of a size class are found through a hash table of capacities (most recently freed
first); all cached blocks are also on one LRU list for eviction.
Size classes: below FN_POOL_MIN_BYTES the exact size (never cached); above, rounded up to 8 classes per power of
two (at least 4 KiB steps): at most 12.5% slack, and untouched slack pages are never faulted in.
Bound: the capacities of the cached blocks sum to at most `limit` bytes; a free past it evicts the least recently
freed blocks (back to the system). limit 0 caches nothing.
Threads: one mutex around the list and the counters; never held while calling malloc/free/memset or Python, and
never assumes the GIL. Fork: held across fork() by the pthread_atfork handlers, so the child's copy is consistent
and unlocked. */
#ifndef FASTNORM_POOL_H
#define FASTNORM_POOL_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "numpy/ndarraytypes.h"

#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define FN_POOL_MIN_BYTES ((size_t)1 << 20)
#define FN_POOL_ALIGN 64
#define FN_POOL_PAGE 4096
#define FN_POOL_HEADER 64
#define FN_POOL_LIVE 0x6576696c6c6f6f70ULL   /* "poollive" */
#define FN_POOL_CACHED 0x6468636c6c6f6f70ULL /* "poollchd" */

typedef struct fn_pool_block {
    uint64_t state;                      /* FN_POOL_LIVE or FN_POOL_CACHED */
    void *raw;                           /* what malloc/calloc returned */
    size_t capacity;                     /* usable bytes after the header */
    size_t size;                         /* bytes last asked for (what realloc copies) */
    struct fn_pool_block *newer, *older; /* while cached: the LRU list of all cached blocks ... */
    struct fn_pool_block *next, *prev;   /* ... and the list of its hash bucket (most recently freed first) */
} fn_pool_block;

typedef char fn_pool_header_fits[sizeof(fn_pool_block) <= FN_POOL_HEADER ? 1 : -1];

typedef struct {
    size_t limit, cached_bytes, cached_blocks, live_bytes, live_blocks;
    unsigned long long hits, misses, evictions;
} fn_pool_stats;

static fn_pool_stats fn_pool;
static fn_pool_block *fn_pool_newest, *fn_pool_oldest;
#define FN_POOL_BUCKETS 64 /* (the hash's top 6 bits) so a lookup reads only the headers of its own bucket */
static fn_pool_block *fn_pool_bucket[FN_POOL_BUCKETS];
static int fn_pool_hugepages = 1; /* madvise(MADV_HUGEPAGE) fresh blocks of >= 4 MiB, as NumPy's default handler */
static void fn_pool_set_hugepages(int on) { fn_pool_hugepages = on; }

#ifdef _WIN32
static SRWLOCK fn_pool_mutex = SRWLOCK_INIT;
static void fn_pool_lock(void) { AcquireSRWLockExclusive(&fn_pool_mutex); }
static void fn_pool_unlock(void) { ReleaseSRWLockExclusive(&fn_pool_mutex); }
static int fn_pool_init(void) { return 0; }
#else
static pthread_mutex_t fn_pool_mutex = PTHREAD_MUTEX_INITIALIZER;
static void fn_pool_lock(void) { pthread_mutex_lock(&fn_pool_mutex); }
static void fn_pool_unlock(void) { pthread_mutex_unlock(&fn_pool_mutex); }
/* Once per process (module init): prepare locks, parent and child unlock. */
static int fn_pool_init(void) { return pthread_atfork(fn_pool_lock, fn_pool_unlock, fn_pool_unlock); }
#endif

static char *fn_pool_data(fn_pool_block *b) { return (char *)b + FN_POOL_HEADER; }
static fn_pool_block *fn_pool_header(void *p) { return (fn_pool_block *)((char *)p - FN_POOL_HEADER); }

/* The capacity of a request of `size` bytes (its size class); 0 when it would overflow. */
static size_t fn_pool_class(size_t size) {
    size_t step = 4096;
    if (size < FN_POOL_MIN_BYTES) return size;
    while ((size >> 3) >= 2 * step) step <<= 1; /* step = max(4 KiB, the largest power of two <= size, / 8) */
    if (size > SIZE_MAX - step) return 0;
    return (size + step - 1) & ~(step - 1);
}

static fn_pool_block **fn_pool_bucket_of(size_t capacity) {
    return &fn_pool_bucket[(uint64_t)(capacity >> 12) * 0x9E3779B97F4A7C15ULL >> 58];
}

static void fn_pool_link(fn_pool_block *b) { /* caller holds the lock */
    fn_pool_block **head = fn_pool_bucket_of(b->capacity);
    b->state = FN_POOL_CACHED;
    b->newer = NULL;
    b->older = fn_pool_newest;
    if (fn_pool_newest) fn_pool_newest->newer = b; else fn_pool_oldest = b;
    fn_pool_newest = b;
    b->prev = NULL;
    b->next = *head;
    if (*head) (*head)->prev = b;
    *head = b;
    fn_pool.cached_bytes += b->capacity;
    fn_pool.cached_blocks++;
}

static void fn_pool_unlink(fn_pool_block *b) { /* caller holds the lock */
    if (b->newer) b->newer->older = b->older; else fn_pool_newest = b->older;
    if (b->older) b->older->newer = b->newer; else fn_pool_oldest = b->newer;
    if (b->prev) b->prev->next = b->next; else *fn_pool_bucket_of(b->capacity) = b->next;
    if (b->next) b->next->prev = b->prev;
    fn_pool.cached_bytes -= b->capacity;
    fn_pool.cached_blocks--;
}

/* Unlink the least recently freed blocks until at most `target` bytes stay cached; returns them as a list
   (linked through `older`) for the caller to free after unlocking. Caller holds the lock. */
static fn_pool_block *fn_pool_evict_to(size_t target) {
    fn_pool_block *out = NULL, *b;
    while (fn_pool.cached_bytes > target && (b = fn_pool_oldest) != NULL) {
        fn_pool_unlink(b);
        b->older = out;
        out = b;
        fn_pool.evictions++;
    }
    return out;
}

static size_t fn_pool_free_list(fn_pool_block *b) { /* without the lock */
    size_t n = 0;
    while (b) {
        fn_pool_block *next = b->older;
        n += b->capacity;
        free(b->raw);
        b = next;
    }
    return n;
}

static void fn_pool_advise(char *p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (fn_pool_hugepages && n >= ((size_t)1 << 22)) {
        uintptr_t lo = ((uintptr_t)p + 4095) & ~(uintptr_t)4095, hi = ((uintptr_t)p + n) & ~(uintptr_t)4095;
        if (hi > lo) madvise((void *)lo, hi - lo, MADV_HUGEPAGE); /* a hint: its failure changes nothing */
    }
#else
    (void)p;
    (void)n;
#endif
}

static fn_pool_block *fn_pool_fresh(size_t capacity, int zero) {
    size_t total, align = capacity >= FN_POOL_MIN_BYTES ? FN_POOL_PAGE : FN_POOL_ALIGN;
    void *raw;
    uintptr_t data;
    fn_pool_block *b;
    if (capacity > SIZE_MAX - FN_POOL_HEADER - align) return NULL;
    total = capacity + FN_POOL_HEADER + align - 1;
    raw = zero ? calloc(1, total) : malloc(total);
    if (!raw) return NULL;
    data = ((uintptr_t)raw + FN_POOL_HEADER + align - 1) & ~(uintptr_t)(align - 1);
    b = fn_pool_header((void *)data);
    b->raw = raw;
    b->capacity = capacity;
    fn_pool_advise((char *)data, capacity);
    return b;
}

/* Trim the cache to `target` bytes; returns the bytes given back to the system. */
static size_t fn_pool_trim(size_t target) {
    fn_pool_block *evicted;
    fn_pool_lock();
    evicted = fn_pool_evict_to(target);
    fn_pool_unlock();
    return fn_pool_free_list(evicted);
}

static void fn_pool_set_limit(size_t limit) {
    fn_pool_block *evicted;
    fn_pool_lock();
    fn_pool.limit = limit;
    evicted = fn_pool_evict_to(limit);
    fn_pool_unlock();
    fn_pool_free_list(evicted);
}

static void fn_pool_get_stats(fn_pool_stats *out) {
    fn_pool_lock();
    *out = fn_pool;
    fn_pool_unlock();
}

static void *fn_pool_get(size_t size, int zero) {
    size_t cap = fn_pool_class(size);
    fn_pool_block *b = NULL;
    if (cap < size) return NULL;
    if (cap >= FN_POOL_MIN_BYTES) {
        fn_pool_lock();
        for (b = *fn_pool_bucket_of(cap); b && b->capacity != cap; b = b->next) {
        }
        if (b) {
            fn_pool_unlink(b);
            fn_pool.hits++;
            b->state = FN_POOL_LIVE;
            fn_pool.live_bytes += cap;
            fn_pool.live_blocks++;
        } else {
            fn_pool.misses++;
        }
        fn_pool_unlock();
    }
    if (b) {
        if (zero) memset(fn_pool_data(b), 0, size);
    } else {
        b = fn_pool_fresh(cap, zero);
        if (!b && fn_pool_trim(0)) b = fn_pool_fresh(cap, zero); /* out of memory: give the cache back, retry */
        if (!b) return NULL;
        fn_pool_lock();
        b->state = FN_POOL_LIVE;
        fn_pool.live_bytes += cap;
        fn_pool.live_blocks++;
        fn_pool_unlock();
    }
    b->size = size;
    return fn_pool_data(b);
}

static void fn_pool_put(void *p) {
    fn_pool_block *b, *evicted = NULL;
    int keep;
    if (!p) return;
    b = fn_pool_header(p);
    if (b->state != FN_POOL_LIVE) {
        fprintf(stderr, "fastnorm: CPU pool: a block freed twice or not from this pool (%p)\n", p);
        abort();
    }
    fn_pool_lock();
    fn_pool.live_bytes -= b->capacity;
    fn_pool.live_blocks--;
    keep = b->capacity >= FN_POOL_MIN_BYTES && b->capacity <= fn_pool.limit;
    if (keep) {
        fn_pool_link(b);
        evicted = fn_pool_evict_to(fn_pool.limit);
    } else {
        b->state = 0;
    }
    fn_pool_unlock();
    if (!keep) free(b->raw);
    fn_pool_free_list(evicted);
}

/* The NumPy handler's functions. */
static void *fn_pool_malloc(void *ctx, size_t size) {
    (void)ctx;
    return fn_pool_get(size, 0);
}

static void *fn_pool_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    return fn_pool_get(nelem * elsize, 1);
}

static void *fn_pool_realloc(void *ctx, void *p, size_t new_size) {
    fn_pool_block *b;
    void *q;
    (void)ctx;
    if (!p) return fn_pool_get(new_size, 0);
    b = fn_pool_header(p);
    if (fn_pool_class(new_size) == b->capacity && new_size <= b->capacity) {
        b->size = new_size;
        return p;
    }
    q = fn_pool_get(new_size, 0);
    if (!q) return NULL; /* p stays valid, as realloc's */
    memcpy(q, p, b->size < new_size ? b->size : new_size);
    fn_pool_put(p);
    return q;
}

static void fn_pool_free(void *ctx, void *p, size_t size) {
    (void)ctx;
    (void)size; /* the header has the capacity */
    fn_pool_put(p);
}

static PyDataMem_Handler fn_pool_handler = {
    "fastnorm_cpu_pool", 1, {NULL, fn_pool_malloc, fn_pool_calloc, fn_pool_realloc, fn_pool_free}};

#endif
