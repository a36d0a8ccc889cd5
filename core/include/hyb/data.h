/* hyb/data.h: a tokenized, packed, shuffled token stream from text files, with a held-out split,
 * cached on disk, and deterministic batches.
 *
 *   const char *files[] = {"/usr/share/common-licenses/GPL-3", "examples/data/garden.txt"};
 *   hyb_data_cfg c = {.files = files, .n_files = 2, .tok = tok, .cache = "run/data.bin",
 *                     .val_fraction = 0.05, .seed = 1};
 *   hyb_dataset *d;  hyb_dataset_open(&c, &d);       // tokenizes, or reads the valid cache
 *   hyb_dataset_batch(d, HYB_SPLIT_TRAIN, step, B, T, seed, ids, targets);   // [B*T] each
 *   hyb_dataset_free(d);
 *
 * Documents: each file is cut at blank lines into paragraphs, and consecutive paragraphs are
 * grouped into documents of at least HYB_DATA_DOC_BYTES bytes (a file's last one may be shorter).
 * A document goes to the held-out split when a hash of its bytes falls below val_fraction (stable
 * under reordering and adding files; at least one document is held out when val_fraction > 0).
 * The training documents are shuffled (seeded) and packed into one stream (tokenized without
 * special tokens; documents keep their separating newlines); the held-out ones keep file order.
 *
 * Cache: "HYBDATA1", u32 header length, a text header (tokenizer identity hash, val_fraction,
 * seed, every source file's path, size and mtime, token counts, a checksum of the tokens), then
 * the tokens as little-endian i32, written atomically. A cache whose header does not match the
 * current files/tokenizer/settings, or whose checksum fails, is rebuilt.
 *
 * Batches: the training stream is cut into W = (n_train - 1) / T windows of T + 1 tokens (ids =
 * the first T, targets = the last T). Sample i = step * B + b reads window perm_e[i mod W] with
 * e = i / W and perm_e a permutation seeded by (seed, e): every window once per epoch, and the
 * same (seed, step) always gives the same batch (resume reproduces the data order). Held-out
 * batch j reads the held-out windows j*B .. j*B+B-1 in order (mod their count): fixed.
 */
#ifndef HYB_DATA_H
#define HYB_DATA_H

#include "hyb/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HYB_DATA_DOC_BYTES 4096

typedef struct hyb_data_cfg {
    const char *const *files; /* [n_files] text files */
    int n_files;
    const hyb_tokenizer *tok; /* NULL: one token per byte (vocab 256) */
    const char *cache;        /* cache file path, NULL: none */
    double val_fraction;      /* [0, 1) */
    uint64_t seed;            /* document shuffle */
    int parse_special;        /* 1: special-token text ("<|im_start|>") becomes its special id
                                 (chat transcripts); 0: plain text (default) */
} hyb_data_cfg;

typedef struct hyb_dataset {
    int32_t *tokens; /* [n_train + n_val]: training stream, then held-out stream */
    int64_t n_train, n_val;
    int64_t n_docs, n_val_docs;
    uint64_t tok_hash;
    int from_cache; /* 1: read from the cache file */
    /* the permutation of the current epoch (cached between calls) */
    int64_t *perm, perm_n, perm_epoch;
    int perm_T;
    uint64_t perm_seed;
} hyb_dataset;

enum { HYB_SPLIT_TRAIN = 0, HYB_SPLIT_VAL = 1 };

int hyb_dataset_open(const hyb_data_cfg *cfg, hyb_dataset **out);
void hyb_dataset_free(hyb_dataset *d);
/* ids, targets: [B*T] (targets may be NULL). split HYB_SPLIT_TRAIN (step, seed as above) or
 * HYB_SPLIT_VAL (step = held-out batch number; seed ignored). HYB_ERR_ARG when the split holds
 * fewer than T + 1 tokens. */
int hyb_dataset_batch(hyb_dataset *d, int split, int64_t step, int B, int T, uint64_t seed,
                      int32_t *ids, int32_t *targets);
/* Rows first .. first+n-1 of that batch of B (ids, targets: [n*T]): a data-parallel rank reads
 * only its own rows of the global batch, the same tokens one process would put there. */
int hyb_dataset_batch_rows(hyb_dataset *d, int split, int64_t step, int B, int first, int n,
                           int T, uint64_t seed, int32_t *ids, int32_t *targets);
/* Number of windows of T + 1 tokens in a split (the length of an epoch in samples). */
int64_t hyb_dataset_windows(const hyb_dataset *d, int split, int T);

/* ---- choosing the files -------------------------------------------------------------------
 *
 *   const char *paths[] = {"/usr/share/doc/python3.11/html/_sources", "gen/teacher.txt"};
 *   const char *inc[] = {"*.rst.txt"}, *exc[] = {"README*"};
 *   hyb_data_select s = {.include = inc, .n_include = 1, .exclude = exc, .n_exclude = 1,
 *                        .max_bytes = 12000000};
 *   hyb_file_list l;  hyb_data_list_files(paths, 2, &s, &l);   // l.paths[0 .. l.n-1]
 *   hyb_file_list_free(&l);
 *
 * A path naming a file is always taken, as given (filters do not apply; it counts towards
 * max_bytes first). A directory is walked recursively (entries starting with '.' skipped,
 * symbolic links followed to files but not to directories) and its regular files are filtered:
 * a pattern without '/' matches the file's name, one with '/' the path relative to the directory
 * given (fnmatch(3), '*' also crosses '/'); a file is taken when it matches some include pattern
 * (none: every file) and no exclude pattern. max_bytes > 0 then takes a deterministic sample of
 * the directory files: in the order of a hash of their relative path (so the choice does not
 * depend on where the directory is, and is stable when files are added), each file that still
 * fits within max_bytes is taken. The result lists each argument's files in order: a file as
 * given, a directory's chosen files sorted by path (strcmp). Zero files in all is an error. */
typedef struct hyb_data_select {
    const char *const *include; /* [n_include] glob patterns; none: every file */
    int n_include;
    const char *const *exclude; /* [n_exclude] */
    int n_exclude;
    int64_t max_bytes; /* 0: no cap */
} hyb_data_select;

typedef struct hyb_file_list {
    char **paths; /* [n], owned */
    int n;
    int64_t bytes;                    /* total size of the chosen files */
    int64_t matched, matched_bytes;   /* directory files passing the filters, before the cap */
} hyb_file_list;

/* sel may be NULL (every file, no cap). On error *out is empty and the message names the path or
 * the pattern. */
int hyb_data_list_files(const char *const *paths, int n_paths, const hyb_data_select *sel,
                        hyb_file_list *out);
void hyb_file_list_free(hyb_file_list *l);

/* A 64-bit identity of a tokenizer: vocab strings and types, special ids, and the encoding of a
 * probe text (catches different merges / pre-tokenizers). NULL (bytes) has its own value. */
uint64_t hyb_tokenizer_identity(const hyb_tokenizer *tok);

#ifdef __cplusplus
}
#endif
#endif
