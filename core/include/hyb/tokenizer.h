/* hyb/tokenizer.h: BPE tokenizers (GPT-2 style byte-level BPE and SentencePiece-style BPE).
 *
 *   hyb_tokenizer *tok = hyb_tokenizer_load_json("tokenizer.json");   // or _load_gguf(path)
 *   if (!tok) { fprintf(stderr, "hyb: %s\n", hyb_error()); return 1; }
 *   int32_t ids[256];
 *   long n = hyb_tokenizer_encode(tok, text, strlen(text), HYB_TOK_ADD_SPECIAL, ids, 256);
 *   // n < 0: error; n > 256: only the first 256 ids were written, call again with n slots
 *   char out[1024];
 *   long nb = hyb_tokenizer_decode(tok, ids, (size_t)n, 0, out, sizeof out);
 *   hyb_tokenizer_free(tok);
 *
 * Encoding follows the HF `tokenizers` pipeline: added tokens (special or not) are matched first
 * in the raw text (leftmost, longest match); each remaining segment is normalized (SentencePiece
 * style: optional "▁" prefix, spaces -> "▁"), pre-split (regexes run by PCRE2 in UTF-8 + UCP
 * mode, digit splitting, byte-level mapping) and every piece is BPE-merged by merge rank
 * (lowest rank first, leftmost first on ties), with a per-tokenizer word cache.
 * A tokenizer is safe to use from several threads at once (the cache has a lock).
 *
 * Token types follow the GGUF numbering (tokenizer.ggml.token_type).
 *
 * Checked against HF `tokenizers` (tests/test_tokenizer.c: identical ids on every sample for
 * SmolLM2, the GPT-2 and llama-3 regexes and three SentencePiece layouts). Known differences:
 *  - added tokens are always matched in the raw text: HF matches `normalized: true` added tokens
 *    in the normalized text instead (the same thing when there is no normalizer);
 *    `single_word` is ignored; lstrip/rstrip strip ASCII whitespace only.
 *  - decode returns raw bytes; HF returns lossy UTF-8 (U+FFFD for a byte sequence cut short).
 *  - unsupported normalizers (NFC, NFKC, Lowercase, ...) and pre-tokenizers (Whitespace,
 *    Punctuation, UnicodeScripts, ...) are load errors that name them, never ignored.
 */
#ifndef HYB_TOKENIZER_H
#define HYB_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "hyb/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_tokenizer hyb_tokenizer;

/* How a word's characters become BPE symbols and how ids become bytes. */
typedef enum hyb_tok_model {
    /* GPT-2 style: every byte is mapped to a printable unicode character (the GPT-2 byte table);
     * vocab and merges are written in that alphabet; decode maps the characters back to bytes. */
    HYB_TOK_BYTE_LEVEL = 0,
    /* SentencePiece style: symbols are UTF-8 characters, spaces are written "▁" (U+2581),
     * characters missing from the vocab become <0xNN> byte tokens (byte_fallback) or unk. */
    HYB_TOK_SPM = 1,
} hyb_tok_model;

/* Pre-tokenizer (how text is cut into words before BPE) for hyb_tokenizer_new_bpe(). */
typedef enum hyb_pretok_kind {
    HYB_PRETOK_NONE = 0,   /* the whole segment is one word (SentencePiece style) */
    HYB_PRETOK_GPT2 = 1,   /* GPT-2 regex ('s|'t|... | ?\p{L}+| ?\p{N}+|...) */
    HYB_PRETOK_LLAMA3 = 2, /* llama-3 regex (\p{N}{1,3}, case-insensitive contractions, ...) */
    HYB_PRETOK_SMOLLM = 3, /* every digit is its own word, then the GPT-2 regex (SmolLM/SmolLM2) */
    HYB_PRETOK_TEKKEN = 4, /* Mistral's tekken regex (case-aware letter runs, single digits) */
} hyb_pretok_kind;

/* Token types, numbered as GGUF's tokenizer.ggml.token_type. */
enum {
    HYB_TOKEN_NORMAL = 1,
    HYB_TOKEN_UNKNOWN = 2,      /* <unk>: matched in text and skipped like a control token */
    HYB_TOKEN_CONTROL = 3,      /* special token (bos, eos, <|im_start|>...): matched in text */
    HYB_TOKEN_USER_DEFINED = 4, /* added, non-special token: matched in text */
    HYB_TOKEN_UNUSED = 5,
    HYB_TOKEN_BYTE = 6, /* <0xNN> byte-fallback token */
};

/* Everything needed to build a BPE tokenizer in memory. Arrays are copied; the caller keeps
 * ownership. Token ids are array indices. */
typedef struct hyb_tokenizer_spec {
    int model;                /* hyb_tok_model */
    int pretok;               /* hyb_pretok_kind */
    const char *const *vocab; /* [n_vocab] token strings (byte-level alphabet or ▁-text) */
    int32_t n_vocab;
    const char *const *merges; /* [n_merges] "a b", rank = index; may be NULL when scores given */
    int32_t n_merges;
    /* [n_vocab] optional: when merges is NULL for an SPM model, every split t = a + b of a vocab
     * token (a, b in the vocab) is a merge whose priority is t's score (higher merges first). */
    const float *scores;
    const int32_t *token_types;             /* [n_vocab] optional HYB_TOKEN_*; NULL = all normal */
    int32_t bos_id, eos_id, unk_id, pad_id; /* -1 = none */
    int add_bos, add_eos;                   /* what HYB_TOK_ADD_SPECIAL adds */
    int byte_fallback;                      /* SPM: unknown chars -> <0xNN> tokens */
    int add_prefix_space;                   /* SPM: prepend "▁" to each text segment */
    int ignore_merges;                      /* a word found whole in the vocab is one token */
} hyb_tokenizer_spec;

/* Returns NULL and sets hyb_error() on a bad spec (merge naming an unknown token, ...). */
hyb_tokenizer *hyb_tokenizer_new_bpe(const hyb_tokenizer_spec *spec);
/* HF tokenizer.json (model type BPE). Unsupported pre-tokenizers/normalizers are an error that
 * names them. A tokenizer_config.json in the same directory sets bos/eos from its bos_token /
 * eos_token, as HF's tokenizer classes do. Returns NULL and sets hyb_error() on failure. */
hyb_tokenizer *hyb_tokenizer_load_json(const char *path);
/* Same, from the JSON text in memory (`name` is used in error messages). */
hyb_tokenizer *hyb_tokenizer_load_json_mem(const char *json, size_t len, const char *name);
/* GGUF metadata: tokenizer.ggml.model ("gpt2" or "llama"), .tokens, .merges, .scores,
 * .token_type, .pre ("default"/"gpt2", "smollm", "llama3"/"llama-bpe"/"llama-v3", "tekken"; others
 * are an error that names them; llama3 and tekken imply ignore_merges, tekken adds bos),
 * .bos/eos/unknown/padding_token_id, .add_bos_token/.add_eos_token, .add_space_prefix. Tokens of
 * type CONTROL and USER_DEFINED are matched in text. */
hyb_tokenizer *hyb_tokenizer_load_gguf(const char *path);
/* Same, from a GGUF already open (hyb/gguf.h); the tokenizer does not keep the handle. */
struct hyb_gguf;
hyb_tokenizer *hyb_tokenizer_from_gguf(const struct hyb_gguf *g);
void hyb_tokenizer_free(hyb_tokenizer *tok);

/* Write the tokenizer as HF tokenizer.json (atomically), whatever it was loaded from: loading the
 * file back gives the same ids for every text (core/tokenizer/tokenizer_save.c). */
int hyb_tokenizer_save_json(const hyb_tokenizer *tok, const char *path);
/* dir/tokenizer.json and dir/tokenizer_config.json (bos/eos/unk/pad token names, add_bos/eos,
 * model_max_length when > 0, chat_template when not NULL): what AutoTokenizer and hyb read. */
int hyb_tokenizer_save_hf(const hyb_tokenizer *tok, const char *dir, const char *chat_template,
                          int model_max_length);

/* The chat template that comes with a tokenizer (a .gguf's tokenizer.chat_template, or the
 * chat_template of the tokenizer_config.json beside a tokenizer.json / in a directory), malloc'ed,
 * or NULL when there is none. */
char *hyb_tokenizer_chat_template(const char *path);

/* The text of token `id` (e.g. the bos/eos a chat template names as bos_token/eos_token),
 * malloc'ed; "" for id < 0 or an id the tokenizer lacks. NULL only when out of memory. */
char *hyb_tokenizer_special_text(const hyb_tokenizer *tok, int32_t id);

/* Render a chat template, the Jinja2 source models ship (core/tokenizer/chat_template.c,
 * docs/CHAT_TEMPLATES.md), as HF's apply_chat_template does: trim_blocks, lstrip_blocks, break/
 * continue, raise_exception(), strftime_now(), namespace(), a tojson that keeps key order.
 * ctx_json: a JSON object whose members are the template's variables, e.g.
 *   {"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": true,
 *    "bos_token": "<s>", "eos_token": "</s>"}
 * *out: the text, malloc'ed. Errors (HYB_ERR_ARG) name the template's line and column: a syntax
 * error, an undefined value used, the template's own raise_exception('...'), or a limit reached
 * (64 MiB of output, 256 MiB of values, 1e7 evaluation steps, nesting 200, range() of 1e6). */
int hyb_chat_template_render(const char *tmpl, const char *ctx_json, char **out);
/* Parse only: HYB_OK, or the syntax error with its line and column. */
int hyb_chat_template_check(const char *tmpl);
/* hyb's template for models that ship none: ChatML with SmolLM2's default system turn (the
 * default model's own template, character for character). */
const char *hyb_chat_template_chatml(void);

/* Flags for encode / decode. */
enum {
    HYB_TOK_ADD_SPECIAL = 1,      /* encode: add bos/eos as the tokenizer says */
    HYB_TOK_NO_PARSE_SPECIAL = 2, /* encode: added/special token text is plain text */
    HYB_TOK_SKIP_SPECIAL = 4,     /* decode: drop special (control and unknown) tokens */
};

/* text: [len] bytes (UTF-8; invalid bytes are kept and byte-encoded). Writes up to `cap` ids and
 * returns how many the text needs (> cap: call again with a larger buffer), or a negative
 * hyb_status. At most hyb_tokenizer_max_tokens(tok, len) ids are ever needed (a worst-case
 * bound from the pipeline: len + 1 + specials for byte-level BPE without a prefix space,
 * 6 * len + 4 + specials for SentencePiece-style "▁" models). */
long hyb_tokenizer_encode(const hyb_tokenizer *tok, const char *text, size_t len, int flags,
                          int32_t *ids, size_t cap);
/* Encode into a malloc'ed array (*ids, free with free()); *n_ids its length. */
int hyb_tokenizer_encode_alloc(const hyb_tokenizer *tok, const char *text, size_t len, int flags,
                               int32_t **ids, size_t *n_ids);
size_t hyb_tokenizer_max_tokens(const hyb_tokenizer *tok, size_t len);

/* ids: [n]. Writes up to `cap` bytes (no NUL terminator) and returns how many bytes the
 * decoded text has, or a negative hyb_status (an id out of range). Byte-level tokens map back to
 * their bytes; SPM: "▁" -> " ", <0xNN> -> the byte, one leading space dropped when the tokenizer
 * adds a prefix space. Output is raw bytes (a token may end inside a UTF-8 character). */
long hyb_tokenizer_decode(const hyb_tokenizer *tok, const int32_t *ids, size_t n, int flags,
                          char *out, size_t cap);
/* The bytes of one token (no prefix-space stripping), valid while tok lives; NULL if id is out
 * of range. *len gets the length. */
const char *hyb_tokenizer_token_to_piece(const hyb_tokenizer *tok, int32_t id, size_t *len);
/* The token's string as written in the vocab (byte-level alphabet / ▁), NUL-terminated. */
const char *hyb_tokenizer_token_text(const hyb_tokenizer *tok, int32_t id);
/* Id of a vocab/added token string (as written in the vocab), or -1. */
int32_t hyb_tokenizer_token_id(const hyb_tokenizer *tok, const char *text);
int32_t hyb_tokenizer_vocab_size(const hyb_tokenizer *tok);
int hyb_tokenizer_token_type(const hyb_tokenizer *tok, int32_t id);
int32_t hyb_tokenizer_bos_id(const hyb_tokenizer *tok); /* -1 when none */
int32_t hyb_tokenizer_eos_id(const hyb_tokenizer *tok);
int32_t hyb_tokenizer_unk_id(const hyb_tokenizer *tok);
int32_t hyb_tokenizer_pad_id(const hyb_tokenizer *tok);
/* Override bos/eos (e.g. from the model's config.json: a tokenizer.json only names them through
 * its post-processor template, else hyb guesses from common names like "<s>", "</s>",
 * "<|endoftext|>"). -1 = none. Does not change what HYB_TOK_ADD_SPECIAL adds. HYB_ERR_ARG when
 * an id is out of range. */
int hyb_tokenizer_set_special_ids(hyb_tokenizer *tok, int32_t bos_id, int32_t eos_id);

#ifdef __cplusplus
}
#endif
#endif
