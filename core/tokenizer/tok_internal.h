/* core/tokenizer/tok_internal.h: the tokenizer's private pieces, shared by the builder
 * (tokenizer.c), the tokenizer.json loader and the GGUF loader. Not a public header. */
#ifndef HYB_TOK_INTERNAL_H
#define HYB_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>

#include "hyb/tokenizer.h"

/* string -> int32 open-addressing hash map (keys are copied) */
typedef struct tok_strmap {
    char **keys;
    uint32_t *klen;
    int32_t *vals;
    size_t cap, n; /* cap is a power of two */
} tok_strmap;

/* (a, b) -> (rank, new id) */
typedef struct tok_pairmap {
    uint64_t *keys; /* a << 32 | b, UINT64_MAX = empty */
    int32_t *rank, *id;
    size_t cap, n;
} tok_pairmap;

/* Normalizer steps, applied in order to every text segment outside added tokens. */
enum { TOK_NORM_PREPEND = 1, TOK_NORM_REPLACE = 2 };
typedef struct tok_norm {
    int kind;
    char *a, *b; /* PREPEND: a; REPLACE: a -> b (plain strings) */
    size_t alen, blen;
} tok_norm;

/* Pre-tokenizer steps, applied in order to every piece. */
enum { TOK_PT_SPLIT = 1, TOK_PT_BYTELEVEL = 2, TOK_PT_METASPACE = 3 };
/* Split behaviours (HF SplitDelimiterBehavior) */
enum {
    TOK_SPLIT_ISOLATED = 0,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
};
enum { TOK_PREPEND_ALWAYS = 0, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
typedef struct tok_pretok {
    int kind;
    pcre2_code *re; /* SPLIT (also the GPT-2 regex of BYTELEVEL when use_regex) */
    char *pattern;  /* SPLIT: the regex's source (tokenizer.json is written from it) */
    int behavior, invert;
    int add_prefix_space;      /* BYTELEVEL */
    int prepend_scheme, split; /* METASPACE (replacement is always "▁") */
} tok_pretok;

typedef struct tok_added {
    char *text;
    size_t len;
    int32_t id;
    int special, lstrip, rstrip;
} tok_added;

/* How ids turn back into bytes. */
enum { TOK_DEC_RAW = 0, TOK_DEC_BYTE_LEVEL = 1, TOK_DEC_SPM = 2 };

struct hyb_tokenizer {
    int32_t n_vocab; /* ids are 0..n_vocab-1 */
    char **text;     /* [n_vocab] vocab form, NUL-terminated ("" for holes) */
    char **piece;    /* [n_vocab] decoded bytes */
    uint32_t *piece_len;
    int32_t *type;    /* [n_vocab] HYB_TOKEN_* */
    tok_strmap vocab; /* model vocab: text -> id (BPE lookups) */
    tok_pairmap merges;
    int byte_level;         /* word bytes are mapped through the GPT-2 byte table */
    int32_t byte_id[256];   /* byte-level: byte -> id of its one-char token (-1 none) */
    int32_t bytefb_id[256]; /* <0xNN> tokens (-1 none) */
    int byte_fallback, ignore_merges, fuse_unk;
    int32_t unk_id, bos_id, eos_id, pad_id;
    /* what encode puts for a character the vocabulary lacks: -1 drops it (HF's BPE without an
     * unk_token). Never a control token: ordinary text must not become <|endoftext|>. */
    int32_t enc_unk_id;
    tok_norm *norms;
    int n_norms;
    tok_pretok *pretoks;
    int n_pretoks;
    tok_added *added;               /* sorted by length, longest first */
    unsigned char added_first[256]; /* 1 when some added token starts with this byte */
    int n_added;
    int32_t *prefix_ids, *suffix_ids; /* what HYB_TOK_ADD_SPECIAL adds */
    int n_prefix, n_suffix;
    int dec_mode, dec_strip_space;
    int dec_byte_fallback;        /* SPM decode: <0xNN> tokens become their byte */
    double bound_mult, bound_add; /* ids <= len * mult + (len + 1) * add + specials */
    /* word cache: raw piece bytes -> ids */
    pthread_mutex_t cache_lock;
    tok_strmap cache;
    int32_t *cache_ids;
    size_t cache_ids_n, cache_ids_cap;
};

/* Allocation of an empty tokenizer and the steps of building one. */
hyb_tokenizer *tok_alloc(int32_t n_vocab);
/* Set token `id`'s vocab text (copied); in_model: enter it into the BPE vocab map. */
int tok_set_token(hyb_tokenizer *t, int32_t id, const char *text, size_t len, int type,
                  int in_model);
/* Add a merge of tokens a and b (by text) with the given rank. `where` names it in errors. */
int tok_add_merge(hyb_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                  int32_t rank, const char *where);
/* SPM models without merges: derive merges from scores. */
int tok_merges_from_scores(hyb_tokenizer *t, const float *scores);
int tok_add_added(hyb_tokenizer *t, const char *text, size_t len, int32_t id, int special,
                  int lstrip, int rstrip);
int tok_add_norm(hyb_tokenizer *t, int kind, const char *a, size_t alen, const char *b,
                 size_t blen);
/* Compile a regex (UTF-8 + UCP) and add a SPLIT step. */
int tok_add_split(hyb_tokenizer *t, const char *pattern, size_t plen, int behavior, int invert,
                  const char *where);
int tok_add_bytelevel(hyb_tokenizer *t, int add_prefix_space, int use_regex);
int tok_add_metaspace(hyb_tokenizer *t, int prepend_scheme, int split);
/* bos/eos from the tokenizer_config.json beside a tokenizer.json, if there is one
 * (tokenizer_save.c). */
int tok_apply_hf_config(hyb_tokenizer *t, const char *tokenizer_json_path);
/* Final step: compute pieces, byte tables, sort added tokens. */
int tok_finish(hyb_tokenizer *t);

extern const char *const tok_regex_gpt2;
extern const char *const tok_regex_llama3;
extern const char *const tok_regex_tekken;

int tok_strmap_get(const tok_strmap *m, const char *k, size_t len, int32_t *val);
int tok_strmap_put(tok_strmap *m, const char *k, size_t len, int32_t val);
void tok_strmap_free(tok_strmap *m);

#endif
