/* core/graph/arena.h: a block-chained bump allocator for activations (internal to libhyb).
 *
 *   hyb_arena *a = hyb_arena_new(1 << 24, NULL);   // 16 MiB blocks of host memory
 *   float *x = hyb_arena_alloc(a, 1000 * sizeof(float));   // 64-byte aligned, NOT zeroed
 *   hyb_arena_reset(a);                             // everything released, blocks kept
 *   hyb_arena_free(a);
 *
 * Blocks come from the backend's allocator (device memory for a device backend; be == NULL means
 * host memory from hyb_malloc). A request larger than the block size gets a block of its own.
 * Reset rewinds to the first block and reuses the chain, so a training step that repeats the
 * same allocations allocates nothing after the first step. */
#ifndef HYB_ARENA_H
#define HYB_ARENA_H
#include <stddef.h>

#include "hyb/backend.h"

typedef struct hyb_arena hyb_arena;

hyb_arena *hyb_arena_new(size_t block_bytes, const hyb_backend *be); /* NULL + error on OOM */
void hyb_arena_free(hyb_arena *a);
void *hyb_arena_alloc(hyb_arena *a, size_t nbytes); /* NULL + error on OOM */
void hyb_arena_reset(hyb_arena *a);
size_t hyb_arena_used(const hyb_arena *a);     /* bytes handed out since the last reset */
size_t hyb_arena_peak(const hyb_arena *a);     /* max of used since creation */
size_t hyb_arena_capacity(const hyb_arena *a); /* bytes held in blocks */
int hyb_arena_n_blocks(const hyb_arena *a);
#endif
