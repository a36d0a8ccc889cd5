/* hyb/engine.h: a serving engine over a hyb_model: continuous batching, chunked prefill, prefix
 * caching through state snapshots, per-request metrics; and memory planning from a layer map.
 *
 *   hyb_engine_opts o = hyb_engine_defaults();   // 4 slots, max_ctx = map max_seq (<= 4096)
 *   o.slots = 8; o.max_ctx = 2048; o.prefill_chunk = 256;
 *   hyb_engine *e;
 *   if (hyb_engine_new(model, &o, &e) != HYB_OK) { puts(hyb_error()); ... }
 *   hyb_request_params p = hyb_request_defaults();   // greedy, 16 tokens
 *   p.max_tokens = 64;
 *   int64_t id; hyb_engine_submit(e, prompt, n_prompt, &p, &id);
 *   while (hyb_engine_pending(e)) {
 *       hyb_engine_step(e);
 *       hyb_completion c;
 *       while (hyb_engine_pop(e, &c)) { ... c.tokens[0..c.n_tokens) ...; hyb_completion_free(&c); }
 *   }
 *   hyb_engine_free(e);
 *
 * One engine step: (1) admit waiting requests (FIFO) into free slots, restoring the longest cached
 * prefix of each prompt into its slot; (2) chunked prefill of admitted requests, at most
 * prefill_chunk prompt tokens per step over all of them (0: no limit), in admission order; a
 * request whose prompt is complete samples its first token from the prefill logits; (3) one
 * batched decode (hyb_model_decode) over every slot that holds a pending token; (4) finished
 * requests (max_tokens reached, an EOS id sampled, or the context full) leave their slot at once.
 * Prefill of a prompt never depends on other requests, and decode is row-wise, so a request's
 * tokens are those of generating it alone (up to GEMM rounding with different batch sizes).
 *
 * Prefix cache: an entry is the per-layer state of a slot after exactly P prompt tokens (each
 * mixer's state_snapshot, or a copy of state_bytes(max_ctx) when the plugin has none) plus the
 * logits of token P. Entries come from hyb_engine_add_prefix (computed by the first request that
 * uses it) or, with prefix_block > 0, automatically: each prompt's longest block-aligned prefix
 * (floor(n / block) * block tokens) is snapshotted after it is prefilled, and later prompts with
 * the same first tokens restore it. A request counts a hit when it restored an entry, a miss when
 * it could have used one (a registered prefix or a block-aligned prefix) but none was there.
 * A request whose longest matching registered prefix is being computed by a running request
 * stays in the queue (later requests may pass it) until the snapshot exists, so a registered
 * prefix is computed once even when its requests arrive together. Automatic entries have no such
 * wait: identical prompts admitted in the same step each compute their prefix. Nested registered
 * prefixes of one prompt are all snapshotted in the same prefill pass.
 * Entries are evicted least recently used beyond max_prefix_entries.
 * The engine and its model are used by one thread at a time.
 *
 * This is the one generation API: hyb.llm's generate (hyb generate, hyb chat), hyb.engine,
 * hyb.train.greedy and the benchmarks (hyb bench, hyb.bench) all run requests through it, so
 * prefill, batched decode, sampling and the stop rules live here only. Per request:
 *  - sampling: p.sampler + p.seed (a sampler made for the request), or p.sampler_state, a
 *    caller's sampler used in place (its random stream goes on across requests: a chat). With
 *    the model on a device whose backend has be->sample, a decode step's logits stay there and
 *    one be->sample call picks every row's token with the uniform its request's RNG yields (the
 *    stream hyb_sampler_sample would use): only ids come back (HYB_DEVICE_SAMPLE=0: download
 *    the logits and sample on the host, as prefill's first token always is);
 *  - stop rules, checked in this order after each sampled token: an id of p.eos (HYB_FINISH_EOS),
 *    a stop string (HYB_FINISH_STOP; needs p.tok), max_tokens (HYB_FINISH_LENGTH), a full
 *    context (HYB_FINISH_CTX); then on_token sees the token (and the finish), and may stop a
 *    request that goes on (HYB_FINISH_STOP; nothing held back is streamed then). The last
 *    sampled token is kept in the completion but never fed to the model;
 *  - streaming: p.on_token(p.user, &event) after each sampled token. With a tokenizer (p.tok) the
 *    event carries the text that became final with it: the token pieces concatenated (an EOS id
 *    adds nothing), held back while they may be the start of a stop string, cut before a stop
 *    string, flushed when the request ends;
 *  - slots: HYB_REQ_PIN runs the request in slot p.slot; with HYB_REQ_CONTINUE as well, the
 *    slot's state is kept: it holds the first hyb_engine_slot_pos() ids of the prompt (the caller
 *    vouches for that; no prefix cache), and only the rest is prefilled (at least one id);
 *  - timings: the completion's prefill_s / decode_s are the seconds of the model calls the
 *    request took part in (a batched decode counts whole for each of its requests).
 */
#ifndef HYB_ENGINE_H
#define HYB_ENGINE_H

#include "hyb/model.h"
#include "hyb/sample.h"
#include "hyb/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_engine_opts {
    int slots;              /* S sequences decoded together (kvstate n_seq) */
    int max_ctx;            /* tokens per slot, at most the map's max_seq (0: max_seq) */
    int prefill_chunk;      /* prompt tokens prefilled per step over all requests; 0: no limit */
    int prefix_block;       /* automatic prefix caching block size in tokens; 0: off */
    int max_prefix_entries; /* cached snapshots kept (LRU); default 16 */
    int kv_cache;           /* hyb_kv_dtype of the attention KV caches: HYB_KV_F16 (default),
                               HYB_KV_Q8_0 or HYB_KV_F32; recurrent states stay f32 */
} hyb_engine_opts;

#define HYB_ENGINE_MAX_EOS 8
#define HYB_ENGINE_MAX_STOP 16

enum {
    HYB_FINISH_LENGTH = 0,
    HYB_FINISH_EOS = 1,
    HYB_FINISH_CTX = 2,
    HYB_FINISH_STOP = 3,
    HYB_FINISH_ERROR = 4
};

/* One sampled token, as the request's on_token callback sees it (valid during the call). */
typedef struct hyb_token_event {
    int64_t id; /* the request */
    int32_t token;
    int index;        /* 0-based among the request's generated tokens */
    double t;         /* hyb_time_now() when it was sampled */
    const char *text; /* with p.tok: the text that became final with this token (may be empty) */
    size_t text_len;
    int finish;          /* HYB_FINISH_* when this token ends the request, else -1 */
    const float *logits; /* [V] the logits it was sampled from (NULL: see HYB_REQ_FINAL_LOGITS) */
} hyb_token_event;
/* Returns 0 to go on, > 0 to stop the request here (HYB_FINISH_STOP), < 0 (a hyb_status) to fail
 * it: it finishes with HYB_FINISH_ERROR and hyb_engine_step returns that status. */
typedef int (*hyb_token_fn)(void *user, const hyb_token_event *ev);

#define HYB_REQ_PIN 1u      /* run in slot p.slot */
#define HYB_REQ_CONTINUE 2u /* with HYB_REQ_PIN: keep the slot's state (see above) */
/* on_token's ev.logits is needed on the final token (finish >= 0) only, and may be NULL before:
 * a model on a device then samples there (be->sample) and downloads no logits but the final
 * row's. Without it, a request with on_token gets every row's logits (downloaded per token). */
#define HYB_REQ_FINAL_LOGITS 4u

typedef struct hyb_request_params {
    int max_tokens; /* new tokens at most (1 <= max_tokens < max_ctx) */
    hyb_sampler_params sampler;
    uint64_t seed;             /* the request's sampler seed */
    int n_eos;                 /* stop ids: generation ends after sampling one (it is kept) */
    int32_t eos[HYB_ENGINE_MAX_EOS];
    hyb_sampler *sampler_state; /* borrowed; when set, used instead of sampler + seed */
    const hyb_tokenizer *tok;   /* borrowed; token text for on_token and stop strings */
    int n_stop;                 /* stop strings (copied at submit; need tok) */
    const char *const *stop;
    hyb_token_fn on_token; /* may be NULL */
    void *user;
    unsigned flags; /* HYB_REQ_* */
    int slot;       /* with HYB_REQ_PIN */
} hyb_request_params;

typedef struct hyb_completion {
    int64_t id;
    int n_prompt;
    int n_tokens;
    int32_t *tokens;       /* [n_tokens] generated ids (owned) */
    double *t_token;       /* [n_tokens] hyb_time_now() when each token was sampled (owned) */
    double t_arrival;      /* submit time */
    double t_admit;        /* when it got a slot */
    double t_done;
    int finish;            /* HYB_FINISH_* */
    int prefix_tokens;     /* prompt tokens restored from the prefix cache (0: none) */
    int slot;              /* the slot it ran in (-1: never admitted) */
    int prefill_tokens;    /* prompt tokens it prefilled (not restored, not kept) */
    int decode_tokens;     /* tokens it fed through batched decodes */
    double prefill_s, decode_s; /* seconds of the model calls it took part in */
    char *text;                 /* with p.tok: the final text (stop string cut off; owned) */
    size_t text_len;
} hyb_completion;

typedef struct hyb_engine_stats {
    int64_t steps, submitted, finished;
    int64_t prefill_tokens, decode_tokens; /* tokens run through prefill / batched decode */
    int64_t decode_calls;                  /* batched decode calls */
    int64_t prefix_hits, prefix_misses, prefix_tokens_saved;
    int prefix_entries;
    size_t prefix_bytes;                   /* bytes held by cached snapshots */
    size_t state_bytes;                    /* bytes of the slots' kvstate */
    size_t kv_bytes_per_token;             /* of one slot's state per token of context (the
                                              attention caches, in the kv_cache type) */
    int kv_cache;                          /* hyb_kv_dtype of the caches */
    int waiting, active, max_active;
    double t_prefill, t_decode, t_sample;  /* seconds */
} hyb_engine_stats;

typedef struct hyb_engine hyb_engine;

hyb_engine_opts hyb_engine_defaults(void);
hyb_request_params hyb_request_defaults(void);

/* Checks the options (slots >= 1, 1 <= max_ctx, prefill_chunk >= 0, ...), allocates the slots'
 * state (HYB_ERR_NOMEM naming the bytes when it does not fit). The model is borrowed. */
int hyb_engine_new(hyb_model *m, const hyb_engine_opts *o, hyb_engine **out);
void hyb_engine_free(hyb_engine *e);

/* Queue a request (ids copied). Errors (HYB_ERR_ARG, naming the parameter): no tokens, an id
 * outside [0, V), a prompt that does not leave room for one new token in max_ctx, max_tokens
 * outside [1, max_ctx), bad sampler params, eos/stop counts, stop strings without a tokenizer or
 * empty, a slot outside [0, slots), HYB_REQ_CONTINUE without HYB_REQ_PIN or with a prompt that
 * does not go past what the slot holds. */
int hyb_engine_submit(hyb_engine *e, const int32_t *ids, int n, const hyb_request_params *p,
                      int64_t *id_out);
/* Register a prefix (ids copied; 1 <= n < max_ctx): its state is computed by the first request
 * whose prompt starts with it, and restored for later ones. */
int hyb_engine_add_prefix(hyb_engine *e, const int32_t *ids, int n);
/* One engine step (see above). Returns HYB_OK also when there was nothing to do. On a model error
 * the requests involved finish with what they have (finish HYB_FINISH_CTX) and the error is
 * returned. */
int hyb_engine_step(hyb_engine *e);
/* Requests waiting or running. */
int hyb_engine_pending(const hyb_engine *e);
/* Take the oldest finished request: 1 and *out filled (free it with hyb_completion_free), 0 when
 * there is none. */
int hyb_engine_pop(hyb_engine *e, hyb_completion *out);
void hyb_completion_free(hyb_completion *c);
void hyb_engine_get_stats(const hyb_engine *e, hyb_engine_stats *out);
/* Run every pending request to the end (hyb_engine_step until nothing is pending). */
int hyb_engine_run(hyb_engine *e);
/* Tokens the slot's state holds (its last request's prompt and fed tokens until it is reused). */
int hyb_engine_slot_pos(const hyb_engine *e, int slot);
/* The slot's decode state, for callers that extend a slot's context by hand (hyb.llm's
 * prefill/feed); a pinned HYB_REQ_CONTINUE request goes on from it. */
hyb_kvstate *hyb_engine_kvstate(hyb_engine *e);

/* ---- memory planning -------------------------------------------------------------------------*/
typedef struct hyb_memory_plan {
    size_t weight_bytes;       /* parameters (f32 unless _ex says otherwise): embedding, (untied) lm_head, norms, MLPs, mixers */
    size_t kv_bytes_per_token; /* per sequence, growth per token of context (attention caches) */
    size_t fixed_bytes_per_seq;/* per sequence, independent of context (recurrent states) */
    int context;               /* the context the plan is for */
    size_t bytes_per_seq;      /* fixed + context * per_token (+ any rounding the mixers add) */
    size_t budget_bytes;
    int64_t max_batch;         /* sequences that fit: (budget - weights) / bytes_per_seq */
    int n_attn_layers, n_fixed_layers, n_identity_layers;
} hyb_memory_plan;

/* Plan from a layer map without building the model: each layer's mixer is created through its
 * plugin (create/state_bytes/n_params/param_decl/destroy; no parameters allocated). Per layer,
 * state_bytes is measured at two contexts: growth per token is the KV part, the rest is fixed.
 * Not counted: activations of the scratch graph (prefill of a chunk needs O(chunk * (D + F + V))
 * floats plus the attention scores of the chunk), snapshots in the prefix cache, allocator slack.
 * Errors: context < 1 or above the map's max_seq, a budget that does not hold the weights and one
 * sequence (HYB_ERR_ARG, naming both sizes), unknown mixer types. */
int hyb_plan_memory(const hyb_layermap *map, size_t budget_bytes, int context,
                    hyb_memory_plan *out);
/* Same with weights stored in weight_elem_bytes bytes per parameter (4: f32, 2: bf16/f16); the
 * decode states stay f32 (what the mixers' state_bytes report). */
int hyb_plan_memory_ex(const hyb_layermap *map, size_t budget_bytes, int context,
                       int weight_elem_bytes, hyb_memory_plan *out);
/* The same with the attention KV caches stored as kv (hyb_kv_dtype; hyb_engine_opts.kv_cache):
 * their state_bytes_kv (recurrent states stay f32). */
int hyb_plan_memory_kv(const hyb_layermap *map, size_t budget_bytes, int context,
                       int weight_elem_bytes, int kv, hyb_memory_plan *out);
/* Human-readable multi-line description of a plan into buf. */
void hyb_memory_plan_format(const hyb_memory_plan *p, const char *name, char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
