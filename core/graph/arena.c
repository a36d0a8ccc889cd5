/* core/graph/arena.c: block-chained bump allocator (see arena.h). */
#include "graph/arena.h"

#include <stdlib.h>

#define ARENA_ALIGN 64

/* Host blocks are not zeroed: untouched pages of a large block then cost nothing. */
static void *host_block_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, ARENA_ALIGN, n) != 0 || !p) {
        hyb_error_set(HYB_ERR_NOMEM, "out of memory: cannot allocate %zu bytes", n);
        return NULL;
    }
    return p;
}

typedef struct arena_block {
    char *base;
    size_t cap, used;
    struct arena_block *next;
} arena_block;

struct hyb_arena {
    const hyb_backend *be; /* NULL: host */
    size_t block_bytes;
    arena_block *head, *cur, *tail;
    size_t used, peak, capacity;
    int n_blocks;
};

hyb_arena *hyb_arena_new(size_t block_bytes, const hyb_backend *be) {
    hyb_arena *a = hyb_malloc(sizeof *a);
    if (!a) return NULL;
    a->be = be;
    a->block_bytes = block_bytes ? (block_bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1)
                                 : ((size_t)16 << 20);
    return a;
}

void hyb_arena_free(hyb_arena *a) {
    if (!a) return;
    arena_block *b = a->head;
    while (b) {
        arena_block *nx = b->next;
        if (a->be)
            a->be->free(a->be, b->base);
        else
            free(b->base);
        hyb_free(b);
        b = nx;
    }
    hyb_free(a);
}

void *hyb_arena_alloc(hyb_arena *a, size_t nbytes) {
    size_t n = nbytes ? nbytes : 1;
    if (n > SIZE_MAX - ARENA_ALIGN) {
        hyb_error_set(HYB_ERR_NOMEM, "arena: cannot allocate %zu bytes", nbytes);
        return NULL;
    }
    n = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    /* the current block, or a later one already in the chain (after a reset) */
    for (arena_block *b = a->cur; b; b = b->next) {
        if (b->cap - b->used >= n) {
            a->cur = b;
            void *p = b->base + b->used;
            b->used += n;
            a->used += n;
            if (a->used > a->peak) a->peak = a->used;
            return p;
        }
    }
    size_t cap = n > a->block_bytes ? n : a->block_bytes;
    arena_block *b = hyb_malloc(sizeof *b);
    if (!b) return NULL;
    b->base = a->be ? a->be->alloc(a->be, cap) : host_block_alloc(cap);
    if (!b->base) {
        hyb_free(b);
        hyb_error_wrap(HYB_ERR_NOMEM, "arena: new block of %zu bytes (%zu bytes in use)", cap,
                       a->used);
        return NULL;
    }
    b->cap = cap;
    b->used = n;
    if (a->tail)
        a->tail->next = b;
    else
        a->head = b;
    a->tail = b;
    a->cur = b;
    a->capacity += cap;
    a->n_blocks++;
    a->used += n;
    if (a->used > a->peak) a->peak = a->used;
    return b->base;
}

void hyb_arena_reset(hyb_arena *a) {
    for (arena_block *b = a->head; b; b = b->next)
        b->used = 0;
    a->cur = a->head;
    a->used = 0;
}

size_t hyb_arena_used(const hyb_arena *a) {
    return a->used;
}
size_t hyb_arena_peak(const hyb_arena *a) {
    return a->peak;
}
size_t hyb_arena_capacity(const hyb_arena *a) {
    return a->capacity;
}
int hyb_arena_n_blocks(const hyb_arena *a) {
    return a->n_blocks;
}
