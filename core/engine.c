/* core/engine.c: the serving engine (continuous batching, chunked prefill, prefix caching by
 * state snapshots, per-request metrics) and memory planning from a layer map. See hyb/engine.h. */
#include "hyb/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { R_WAIT = 0, R_PREFILL, R_DECODE, R_DONE };

typedef struct req {
    int64_t id;
    int32_t *tokens; /* [n_prompt + max_tokens]: prompt then generated */
    double *t_tok;   /* [max_tokens] */
    int n_prompt, n_gen, max_tokens;
    hyb_request_params p;
    hyb_sampler *smp;
    int own_smp; /* smp made for this request (else the caller's p.sampler_state) */
    char **stop; /* [p.n_stop] owned copies */
    char *text;  /* with p.tok: the text so far, [0, shown) streamed */
    size_t text_len, text_cap, shown;
    int prefill_tokens, decode_tokens;
    double prefill_s, decode_s;
    double t_arrival, t_admit;
    int slot, done; /* done: prompt tokens in the slot's state */
    int state;
    int64_t admit_seq;
    int32_t pending;
    int finish, prefix_tokens;
    int snap_target; /* prompt length to snapshot at (0: none) */
    struct req *next;
} req;

typedef struct pentry {
    int32_t *ids;
    int n;
    int registered, ready;
    int busy;      /* a running request will snapshot it: others wanting it wait for it */
    void **snap;   /* [L] */
    float *logits; /* [V] logits of token n */
    size_t bytes;
    uint64_t last_used;
} pentry;

typedef struct done_node {
    hyb_completion c;
    struct done_node *next;
} done_node;

struct hyb_engine {
    hyb_model *m;
    hyb_engine_opts o;
    hyb_kvstate *kv;
    int V;
    req **slot_req; /* [S] */
    req *wait_head, *wait_tail;
    done_node *done_head, *done_tail;
    float *logits;       /* [S, V] */
    int32_t *seqs, *ids; /* [S] */
    /* on-device sampling (the model on a device whose backend has be->sample): the decode step's
     * logits stay there in dlogits [S, V]; be->sample returns the ids into toks [S] */
    const hyb_backend *sbe;
    float *dlogits;
    hyb_sample_row *srows;
    int32_t *toks;
    pentry *pe;
    int n_pe, cap_pe;
    uint64_t tick;
    int64_t next_id, admit_counter;
    hyb_engine_stats st;
};

hyb_engine_opts hyb_engine_defaults(void) {
    hyb_engine_opts o = {4, 0, 0, 0, 16, HYB_KV_DEFAULT};
    return o;
}

hyb_request_params hyb_request_defaults(void) {
    hyb_request_params p;
    memset(&p, 0, sizeof p);
    p.max_tokens = 16;
    p.sampler = hyb_sampler_defaults();
    p.seed = 0;
    return p;
}

int hyb_engine_new(hyb_model *m, const hyb_engine_opts *o, hyb_engine **out) {
    *out = NULL;
    hyb_engine_opts d = hyb_engine_defaults();
    if (!o) o = &d;
    if (!m) return hyb_error_set(HYB_ERR_ARG, "hyb_engine_new: no model");
    int max_ctx = o->max_ctx ? o->max_ctx : (m->map->max_seq < 4096 ? m->map->max_seq : 4096);
    if (o->slots < 1 || o->slots > 65536)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_new: slots must be in [1, 65536], got %d",
                             o->slots);
    if (max_ctx < 2 || max_ctx > m->map->max_seq)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_new: max_ctx must be in [2, %d] (the model's max_seq), "
                             "got %d",
                             m->map->max_seq, max_ctx);
    if (o->prefill_chunk < 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_new: prefill_chunk must be >= 0, got %d",
                             o->prefill_chunk);
    if (o->prefix_block < 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_new: prefix_block must be >= 0, got %d",
                             o->prefix_block);
    if (o->max_prefix_entries < 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_new: max_prefix_entries must be >= 0, got %d",
                             o->max_prefix_entries);
    hyb_engine *e = calloc(1, sizeof *e);
    if (!e) return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_new: out of memory");
    e->m = m;
    e->o = *o;
    e->o.max_ctx = max_ctx;
    e->V = m->V;
    e->next_id = 1;
    int rc = hyb_kvstate_new_ex(m, o->slots, max_ctx, o->kv_cache, &e->kv);
    if (rc != HYB_OK) {
        free(e);
        return hyb_error_wrap(rc, "hyb_engine_new: %d slots of %d tokens", o->slots, max_ctx);
    }
    e->slot_req = calloc((size_t)o->slots, sizeof *e->slot_req);
    e->logits = malloc(sizeof(float) * (size_t)o->slots * (size_t)m->V);
    e->seqs = malloc(sizeof(int32_t) * (size_t)o->slots);
    e->ids = malloc(sizeof(int32_t) * (size_t)o->slots);
    if (!e->slot_req || !e->logits || !e->seqs || !e->ids) {
        hyb_engine_free(e);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_new: out of memory");
    }
    const hyb_backend *be = m->be;
    const char *ds = getenv("HYB_DEVICE_SAMPLE"); /* "0": download the logits, sample on the host */
    if (be && be->device != HYB_DEV_CPU && be->sample && !(ds && strcmp(ds, "0") == 0)) {
        e->sbe = be;
        e->dlogits = be->alloc(be, sizeof(float) * (size_t)o->slots * (size_t)m->V);
        e->srows = malloc(sizeof *e->srows * (size_t)o->slots);
        e->toks = malloc(sizeof *e->toks * (size_t)o->slots);
        if (!e->dlogits || !e->srows || !e->toks) {
            hyb_engine_free(e);
            return hyb_error_wrap(HYB_ERR_NOMEM, "hyb_engine_new: device logits [%d, %d]", o->slots,
                                  m->V);
        }
    }
    e->st.state_bytes = e->kv->bytes;
    e->st.kv_cache = o->kv_cache;
    for (int l = 0; l < m->L; l++) { /* growth of a slot's state by one token of context */
        const hyb_mixer *mx = m->layers[l].mixer;
        if (mx)
            e->st.kv_bytes_per_token += hyb_mixer_state_bytes_kv(mx, max_ctx, o->kv_cache) -
                                        hyb_mixer_state_bytes_kv(mx, max_ctx - 1, o->kv_cache);
    }
    *out = e;
    return HYB_OK;
}

static void req_free(req *r) {
    if (!r) return;
    free(r->tokens);
    free(r->t_tok);
    if (r->own_smp) hyb_sampler_free(r->smp);
    for (int i = 0; r->stop && i < r->p.n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    free(r->text);
    free(r);
}

static void pentry_clear(hyb_engine *e, pentry *p) {
    if (p->snap)
        for (int l = 0; l < e->kv->L; l++)
            if (p->snap[l]) {
                const hyb_mixer *mx = e->m->layers[l].mixer;
                const hyb_backend *be = mx ? hyb_mixer_backend(mx) : NULL;
                if (be) be->free(be, p->snap[l]);
            }
    free(p->snap);
    free(p->logits);
    p->snap = NULL;
    p->logits = NULL;
    p->ready = 0;
    p->bytes = 0;
}

void hyb_engine_free(hyb_engine *e) {
    if (!e) return;
    for (req *r = e->wait_head; r;) {
        req *n = r->next;
        req_free(r);
        r = n;
    }
    if (e->slot_req)
        for (int i = 0; i < e->o.slots; i++)
            req_free(e->slot_req[i]);
    for (done_node *d = e->done_head; d;) {
        done_node *n = d->next;
        hyb_completion_free(&d->c);
        free(d);
        d = n;
    }
    for (int i = 0; i < e->n_pe; i++) {
        if (e->kv) pentry_clear(e, &e->pe[i]);
        free(e->pe[i].ids);
    }
    free(e->pe);
    hyb_kvstate_free(e->kv);
    free(e->slot_req);
    free(e->logits);
    free(e->seqs);
    free(e->ids);
    if (e->dlogits) e->sbe->free(e->sbe, e->dlogits);
    free(e->srows);
    free(e->toks);
    free(e);
}

int hyb_engine_submit(hyb_engine *e, const int32_t *ids, int n, const hyb_request_params *p,
                      int64_t *id_out) {
    hyb_request_params dp = hyb_request_defaults();
    if (!p) p = &dp;
    if (id_out) *id_out = -1;
    if (!ids || n < 1)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_submit: the prompt has no tokens (n = %d)",
                             n);
    if (n >= e->o.max_ctx)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_submit: prompt of %d tokens leaves no room for a new "
                             "token in max_ctx %d",
                             n, e->o.max_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->V)
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_engine_submit: prompt id %d at position %d outside [0, %d)",
                                 ids[i], i, e->V);
    if (p->max_tokens < 1 || p->max_tokens >= e->o.max_ctx)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_submit: max_tokens must be in [1, max_ctx %d), got %d",
                             e->o.max_ctx, p->max_tokens);
    if (p->n_eos < 0 || p->n_eos > HYB_ENGINE_MAX_EOS)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_submit: n_eos must be in [0, %d], got %d",
                             HYB_ENGINE_MAX_EOS, p->n_eos);
    for (int i = 0; i < p->n_eos; i++)
        if (p->eos[i] < 0 || p->eos[i] >= e->V)
            return hyb_error_set(HYB_ERR_ARG, "hyb_engine_submit: eos[%d] = %d outside [0, %d)", i,
                                 p->eos[i], e->V);
    if (p->n_stop < 0 || p->n_stop > HYB_ENGINE_MAX_STOP)
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_submit: n_stop must be in [0, %d], got %d",
                             HYB_ENGINE_MAX_STOP, p->n_stop);
    if (p->n_stop > 0 && (!p->tok || !p->stop))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_submit: stop strings need a tokenizer (tok) to match");
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0])
            return hyb_error_set(HYB_ERR_ARG, "hyb_engine_submit: stop[%d] is empty", i);
    if ((p->flags & HYB_REQ_PIN) && (p->slot < 0 || p->slot >= e->o.slots))
        return hyb_error_set(HYB_ERR_ARG, "hyb_engine_submit: slot must be in [0, %d), got %d",
                             e->o.slots, p->slot);
    if ((p->flags & HYB_REQ_CONTINUE) && !(p->flags & HYB_REQ_PIN))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_submit: HYB_REQ_CONTINUE needs HYB_REQ_PIN (a slot)");
    if ((p->flags & HYB_REQ_CONTINUE) && !e->slot_req[p->slot] && e->kv->pos[p->slot] >= n)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_submit: the prompt (%d tokens) must go past the %d "
                             "tokens slot %d holds",
                             n, e->kv->pos[p->slot], p->slot);
    if (p->sampler_state && p->sampler_state->V != e->V)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_submit: sampler_state is for a vocabulary of %d, the "
                             "model's is %d",
                             p->sampler_state->V, e->V);
    req *r = calloc(1, sizeof *r);
    if (!r) return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_submit: out of memory");
    if (p->sampler_state) {
        r->smp = p->sampler_state;
    } else {
        int rc = hyb_sampler_new(e->V, &p->sampler, p->seed, &r->smp);
        if (rc != HYB_OK) {
            free(r);
            return hyb_error_wrap(rc, "hyb_engine_submit");
        }
        r->own_smp = 1;
    }
    r->p = *p;
    r->p.stop = NULL;
    if (p->n_stop > 0) {
        r->stop = calloc((size_t)p->n_stop, sizeof *r->stop);
        for (int i = 0; r->stop && i < p->n_stop; i++)
            if (!(r->stop[i] = strdup(p->stop[i]))) {
                req_free(r);
                return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_submit: out of memory");
            }
        if (!r->stop) {
            r->p.n_stop = 0;
            req_free(r);
            return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_submit: out of memory");
        }
    }
    r->tokens = malloc(sizeof(int32_t) * ((size_t)n + (size_t)p->max_tokens));
    r->t_tok = malloc(sizeof(double) * (size_t)p->max_tokens);
    if (!r->tokens || !r->t_tok) {
        req_free(r);
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_submit: out of memory for %d tokens",
                             p->max_tokens);
    }
    memcpy(r->tokens, ids, sizeof(int32_t) * (size_t)n);
    r->n_prompt = n;
    r->max_tokens = p->max_tokens;
    r->id = e->next_id++;
    r->t_arrival = hyb_time_now();
    r->slot = -1;
    r->state = R_WAIT;
    if (e->wait_tail)
        e->wait_tail->next = r;
    else
        e->wait_head = r;
    e->wait_tail = r;
    e->st.submitted++;
    e->st.waiting++;
    if (id_out) *id_out = r->id;
    return HYB_OK;
}

static pentry *pe_add(hyb_engine *e, const int32_t *ids, int n, int registered) {
    if (e->n_pe == e->cap_pe) {
        int cap = e->cap_pe ? 2 * e->cap_pe : 8;
        pentry *np = realloc(e->pe, sizeof *np * (size_t)cap);
        if (!np) return NULL;
        e->pe = np;
        e->cap_pe = cap;
    }
    pentry *p = &e->pe[e->n_pe];
    memset(p, 0, sizeof *p);
    p->ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!p->ids) return NULL;
    memcpy(p->ids, ids, sizeof(int32_t) * (size_t)n);
    p->n = n;
    p->registered = registered;
    e->n_pe++;
    return p;
}

int hyb_engine_add_prefix(hyb_engine *e, const int32_t *ids, int n) {
    if (!ids || n < 1 || n >= e->o.max_ctx)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_engine_add_prefix: prefix length %d outside [1, max_ctx %d)", n,
                             e->o.max_ctx);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->V)
            return hyb_error_set(HYB_ERR_ARG,
                                 "hyb_engine_add_prefix: id %d at position %d outside [0, %d)",
                                 ids[i], i, e->V);
    for (int i = 0; i < e->n_pe; i++)
        if (e->pe[i].n == n && memcmp(e->pe[i].ids, ids, sizeof(int32_t) * (size_t)n) == 0) {
            e->pe[i].registered = 1;
            return HYB_OK;
        }
    if (!pe_add(e, ids, n, 1))
        return hyb_error_set(HYB_ERR_NOMEM, "hyb_engine_add_prefix: out of memory");
    return HYB_OK;
}

static int prompt_starts_with(const req *r, const pentry *p) {
    return p->n <= r->n_prompt && memcmp(r->tokens, p->ids, sizeof(int32_t) * (size_t)p->n) == 0;
}

/* Snapshot slot `slot` (holding p->n tokens) into p, with the logits of its last token. */
static int pe_snapshot(hyb_engine *e, pentry *p, int slot, const float *logits) {
    hyb_kvstate *kv = e->kv;
    p->snap = calloc((size_t)kv->L, sizeof(void *));
    p->logits = malloc(sizeof(float) * (size_t)e->V);
    if (!p->snap || !p->logits) goto oom;
    memcpy(p->logits, logits, sizeof(float) * (size_t)e->V);
    p->bytes = sizeof(float) * (size_t)e->V;
    for (int l = 0; l < kv->L; l++) {
        const void *s = kv->state[l][slot];
        const hyb_mixer *mx = e->m->layers[l].mixer;
        if (!s || !mx) continue;
        const hyb_backend *be = hyb_mixer_backend(mx);
        if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "prefix snapshot: layer %d", l);
        int64_t sz = hyb_mixer_state_snapshot_kv(mx, s, p->n, kv->max_ctx, kv->kv, NULL);
        if (sz < 0) return hyb_error_wrap((int)sz, "prefix snapshot: layer %d", l);
        p->snap[l] = be->alloc(be, sz > 0 ? (size_t)sz : 1);
        if (!p->snap[l]) goto oom;
        int64_t w = hyb_mixer_state_snapshot_kv(mx, s, p->n, kv->max_ctx, kv->kv, p->snap[l]);
        if (w < 0) return hyb_error_wrap((int)w, "prefix snapshot: layer %d", l);
        p->bytes += (size_t)sz;
    }
    p->ready = 1;
    p->busy = 0;
    p->last_used = ++e->tick;
    return HYB_OK;
oom:
    pentry_clear(e, p);
    return hyb_error_set(HYB_ERR_NOMEM, "prefix snapshot: out of memory");
}

static int pe_restore(hyb_engine *e, const pentry *p, int slot) {
    hyb_kvstate *kv = e->kv;
    for (int l = 0; l < kv->L; l++) {
        void *s = kv->state[l][slot];
        const hyb_mixer *mx = e->m->layers[l].mixer;
        if (!s || !mx || !p->snap[l]) continue;
        int rc = hyb_mixer_state_restore_kv(mx, s, p->snap[l], p->n, kv->max_ctx, kv->kv);
        if (rc < 0) return hyb_error_wrap(rc, "prefix restore: layer %d", l);
    }
    kv->pos[slot] = p->n;
    return HYB_OK;
}

/* Drop least recently used automatic entries beyond the limit. */
static void pe_evict(hyb_engine *e) {
    for (;;) {
        int n_auto = 0, victim = -1;
        for (int i = 0; i < e->n_pe; i++) {
            if (e->pe[i].registered) continue;
            n_auto++;
            if (victim < 0 || e->pe[i].last_used < e->pe[victim].last_used) victim = i;
        }
        if (n_auto <= e->o.max_prefix_entries || victim < 0) return;
        pentry_clear(e, &e->pe[victim]);
        free(e->pe[victim].ids);
        e->pe[victim] = e->pe[--e->n_pe];
    }
}

static void finish_req(hyb_engine *e, req *r, int why) {
    for (int i = 0; r->snap_target > 0 && i < e->n_pe; i++) {
        pentry *p = &e->pe[i];
        if (!p->ready && p->n == r->snap_target && prompt_starts_with(r, p)) p->busy = 0;
    }
    r->finish = why;
    r->state = R_DONE;
    if (r->slot >= 0) {
        e->slot_req[r->slot] = NULL;
        e->st.active--;
    }
    done_node *d = calloc(1, sizeof *d);
    if (d) {
        hyb_completion *c = &d->c;
        c->id = r->id;
        c->n_prompt = r->n_prompt;
        c->n_tokens = r->n_gen;
        c->tokens = malloc(sizeof(int32_t) * (size_t)(r->n_gen > 0 ? r->n_gen : 1));
        c->t_token = malloc(sizeof(double) * (size_t)(r->n_gen > 0 ? r->n_gen : 1));
        if (c->tokens && c->t_token) {
            memcpy(c->tokens, r->tokens + r->n_prompt, sizeof(int32_t) * (size_t)r->n_gen);
            memcpy(c->t_token, r->t_tok, sizeof(double) * (size_t)r->n_gen);
        } else {
            c->n_tokens = 0;
        }
        c->t_arrival = r->t_arrival;
        c->t_admit = r->t_admit;
        c->t_done = hyb_time_now();
        c->finish = why;
        c->prefix_tokens = r->prefix_tokens;
        c->slot = r->slot;
        c->prefill_tokens = r->prefill_tokens;
        c->decode_tokens = r->decode_tokens;
        c->prefill_s = r->prefill_s;
        c->decode_s = r->decode_s;
        c->text = r->text;
        c->text_len = r->text_len;
        r->text = NULL;
        if (e->done_tail)
            e->done_tail->next = d;
        else
            e->done_head = d;
        e->done_tail = d;
    }
    e->st.finished++;
    req_free(r);
}

/* Bytes at the end of s[0, n) that are a proper prefix of some stop string: text held back
 * because a stop string may be starting. */
static size_t held_back(const req *r, const char *s, size_t n) {
    size_t keep = 0;
    for (int i = 0; i < r->p.n_stop; i++) {
        size_t ls = strlen(r->stop[i]);
        for (size_t k = ls - 1 < n ? ls - 1 : n; k > keep; k--)
            if (memcmp(s + n - k, r->stop[i], k) == 0) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* Append tok's piece (nothing for an EOS) to the request's text; cut the text before the
 * earliest stop string found in what is not streamed yet (*stopped = 1). */
static int text_add(req *r, int32_t tok, int is_eos, int *stopped) {
    *stopped = 0;
    if (is_eos) return HYB_OK;
    size_t len = 0;
    const char *piece = hyb_tokenizer_token_to_piece(r->p.tok, tok, &len);
    if (!piece) len = 0;
    if (r->text_len + len + 1 > r->text_cap) {
        size_t cap = r->text_cap ? r->text_cap : 256;
        while (cap < r->text_len + len + 1)
            cap *= 2;
        char *t = realloc(r->text, cap);
        if (!t)
            return hyb_error_set(HYB_ERR_NOMEM,
                                 "engine: request %lld: out of memory for "
                                 "%zu bytes of text",
                                 (long long)r->id, cap);
        r->text = t;
        r->text_cap = cap;
    }
    if (len) memcpy(r->text + r->text_len, piece, len);
    r->text_len += len;
    r->text[r->text_len] = 0;
    size_t hit = (size_t)-1;
    for (int i = 0; i < r->p.n_stop; i++) {
        size_t ls = strlen(r->stop[i]);
        for (size_t at = r->shown > ls ? r->shown - ls : 0; at + ls <= r->text_len && at < hit;
             at++)
            if (memcmp(r->text + at, r->stop[i], ls) == 0) {
                hit = at;
                break;
            }
    }
    if (hit != (size_t)-1) {
        r->text_len = hit;
        r->text[hit] = 0;
        if (r->shown > hit) r->shown = hit;
        *stopped = 1;
    }
    return HYB_OK;
}

/* Sample the next token from logits [V], apply the stop rules (hyb/engine.h), stream it; finishes
 * the request or leaves it pending for decode. */
static int accept_token(hyb_engine *e, req *r, int32_t tok, double t1, const float *logits,
                        const float *dev_logits);
static int take_token(hyb_engine *e, req *r, const float *logits) {
    double t0 = hyb_time_now();
    int32_t tok = hyb_sampler_sample(r->smp, logits, r->tokens, r->n_prompt + r->n_gen);
    double t1 = hyb_time_now();
    e->st.t_sample += t1 - t0;
    return accept_token(e, r, tok, t1, logits, NULL);
}

/* The sampled token tok (or a negative status) of request r: the stop rules, streaming. The
 * event's logits: the host row `logits`, or (sampled on the device) dev_logits [V] downloaded
 * only for a callback that wants them (HYB_REQ_FINAL_LOGITS: on the final token only). */
static int accept_token(hyb_engine *e, req *r, int32_t tok, double t1, const float *logits,
                        const float *dev_logits) {
    if (tok < 0) {
        int rc = hyb_error_wrap(tok, "engine: request %lld: sampling", (long long)r->id);
        finish_req(e, r, HYB_FINISH_ERROR);
        return rc;
    }
    r->tokens[r->n_prompt + r->n_gen] = tok;
    r->t_tok[r->n_gen] = t1;
    r->n_gen++;
    int why = -1;
    for (int i = 0; i < r->p.n_eos && why < 0; i++)
        if (tok == r->p.eos[i]) why = HYB_FINISH_EOS;
    size_t final = 0;
    if (r->p.tok) {
        int stopped = 0, rc = text_add(r, tok, why == HYB_FINISH_EOS, &stopped);
        if (rc != HYB_OK) {
            finish_req(e, r, HYB_FINISH_ERROR);
            return rc;
        }
        if (stopped) why = HYB_FINISH_STOP;
    }
    if (why < 0 && r->n_gen >= r->max_tokens) why = HYB_FINISH_LENGTH;
    if (why < 0 && e->kv->pos[r->slot] >= e->kv->max_ctx) why = HYB_FINISH_CTX;
    if (r->p.tok) final = why >= 0 ? r->text_len : r->text_len - held_back(r, r->text, r->text_len);
    if (r->p.on_token && !logits && dev_logits &&
        (!(r->p.flags & HYB_REQ_FINAL_LOGITS) || why >= 0)) {
        float *row = e->logits + (size_t)r->slot * (size_t)e->V;
        int rc = e->sbe->download(e->sbe, row, dev_logits, sizeof(float) * (size_t)e->V);
        if (rc != HYB_OK) {
            rc = hyb_error_wrap(rc, "engine: request %lld: logits", (long long)r->id);
            finish_req(e, r, HYB_FINISH_ERROR);
            return rc;
        }
        logits = row;
    }
    if (r->p.on_token) {
        hyb_token_event ev = {.id = r->id,
                              .token = tok,
                              .index = r->n_gen - 1,
                              .t = t1,
                              .text = r->text ? r->text + r->shown : "",
                              .finish = why,
                              .logits = logits};
        if (final > r->shown) ev.text_len = final - r->shown;
        int cb = r->p.on_token(r->p.user, &ev);
        if (cb < 0) {
            int rc = hyb_error_wrap(cb, "engine: request %lld: on_token", (long long)r->id);
            finish_req(e, r, HYB_FINISH_ERROR);
            return rc;
        }
        if (cb > 0 && why < 0) why = HYB_FINISH_STOP;
    }
    if (final > r->shown) r->shown = final;
    if (why >= 0) {
        finish_req(e, r, why);
        return HYB_OK;
    }
    r->pending = tok;
    r->state = R_DECODE;
    return HYB_OK;
}

/* The next prompt length to snapshot at: the shortest registered, not yet computed prefix of the
 * prompt beyond what the slot holds (nested prefixes are all taken in one pass), else the
 * prompt's longest block-aligned prefix (automatic caching); 0: none. */
static void next_target(hyb_engine *e, req *r) {
    int t = 0;
    for (int i = 0; i < e->n_pe; i++) {
        const pentry *p = &e->pe[i];
        if (p->registered && !p->ready && p->n > r->done && prompt_starts_with(r, p) &&
            (!t || p->n < t))
            t = p->n;
    }
    for (int i = 0; t && i < e->n_pe; i++) {
        pentry *p = &e->pe[i];
        if (p->registered && !p->ready && p->n == t && prompt_starts_with(r, p)) p->busy = 1;
    }
    if (!t && e->o.prefix_block > 0 && e->o.max_prefix_entries > 0) {
        int blk = r->n_prompt / e->o.prefix_block * e->o.prefix_block;
        if (blk > r->done) t = blk;
    }
    r->snap_target = t;
}

static int admit(hyb_engine *e, req *r, int slot) {
    r->slot = slot;
    r->t_admit = hyb_time_now();
    r->admit_seq = e->admit_counter++;
    r->state = R_PREFILL;
    e->slot_req[slot] = r;
    e->st.active++;
    if (e->st.active > e->st.max_active) e->st.max_active = e->st.active;
    if (r->p.flags & HYB_REQ_CONTINUE) { /* the slot holds the prompt's first pos tokens */
        r->done = e->kv->pos[slot];
        if (r->done >= r->n_prompt)
            return hyb_error_set(HYB_ERR_ARG,
                                 "engine: request %lld: the prompt (%d tokens) must go past the "
                                 "%d tokens slot %d holds",
                                 (long long)r->id, r->n_prompt, r->done, slot);
        return HYB_OK;
    }
    hyb_kvstate_reset_seq(e->kv, slot);
    r->done = 0;
    /* the longest ready entry that the prompt starts with */
    pentry *best = NULL, *want = NULL;
    for (int i = 0; i < e->n_pe; i++) {
        pentry *p = &e->pe[i];
        if (!prompt_starts_with(r, p)) continue;
        if (p->ready) {
            if (!best || p->n > best->n) best = p;
        } else if (p->registered) {
            if (!want || p->n > want->n) want = p;
        }
    }
    int could = want != NULL;
    if (e->o.prefix_block > 0 && r->n_prompt / e->o.prefix_block > 0) could = 1;
    if (best) {
        HYB_TRY(pe_restore(e, best, slot));
        best->last_used = ++e->tick;
        r->done = best->n;
        r->prefix_tokens = best->n;
        e->st.prefix_hits++;
        e->st.prefix_tokens_saved += best->n;
    } else if (could) {
        e->st.prefix_misses++;
    }
    next_target(e, r);
    if (r->done == r->n_prompt) return take_token(e, r, best->logits);
    return HYB_OK;
}

static int snapshot_at(hyb_engine *e, req *r, const float *logits) {
    for (int i = 0; i < e->n_pe; i++) {
        pentry *p = &e->pe[i];
        if (p->n == r->done && prompt_starts_with(r, p)) {
            if (p->ready) return HYB_OK; /* another request got there first */
            return pe_snapshot(e, p, r->slot, logits);
        }
    }
    pentry *p = pe_add(e, r->tokens, r->done, 0);
    if (!p) return hyb_error_set(HYB_ERR_NOMEM, "prefix cache: out of memory");
    int rc = pe_snapshot(e, p, r->slot, logits);
    if (rc != HYB_OK) {
        free(p->ids);
        e->n_pe--;
        return rc;
    }
    pe_evict(e);
    return HYB_OK;
}

/* A waiting request whose longest matching registered prefix is being computed by a running
 * request waits for that snapshot instead of computing the prefix again. */
static int waits_for_prefix(const hyb_engine *e, const req *r) {
    const pentry *best = NULL;
    for (int i = 0; i < e->n_pe; i++) {
        const pentry *p = &e->pe[i];
        if ((p->registered || p->ready) && prompt_starts_with(r, p) && (!best || p->n > best->n))
            best = p;
    }
    return best && !best->ready && best->busy;
}

/* The decode step's tokens from the logits on the device (dlogits [n, V]): one be->sample call
 * for all n rows, each with its request's settings and, when it draws, the next uniform of the
 * request's RNG, the one hyb_sampler_sample would have used (the contract of be->sample). */
static int sample_on_device(hyb_engine *e, int n, double dt, int rc) {
    for (int i = 0; i < n; i++) {
        req *r = e->slot_req[e->seqs[i]];
        const hyb_sampler_params *sp = &r->smp->p;
        e->srows[i] =
            (hyb_sample_row){.temperature = sp->temperature,
                             .top_k = sp->top_k,
                             .top_p = sp->top_p,
                             .repetition_penalty = sp->repetition_penalty,
                             .u = hyb_sampler_greedy(sp) ? 0.0f : hyb_rng_uniform(&r->smp->rng),
                             .history = r->tokens,
                             .n_history = r->n_prompt + r->n_gen};
    }
    double t0 = hyb_time_now();
    int src = e->sbe->sample(e->sbe, e->dlogits, n, e->V, e->srows, e->toks);
    double t1 = hyb_time_now();
    e->st.t_sample += t1 - t0;
    if (src != HYB_OK) {
        src = hyb_error_wrap(src, "engine: sampling %d sequences on %s", n, e->sbe->name);
        for (int i = 0; i < n; i++)
            finish_req(e, e->slot_req[e->seqs[i]], HYB_FINISH_ERROR);
        return rc == HYB_OK ? src : rc;
    }
    for (int i = 0; i < n; i++) {
        req *r = e->slot_req[e->seqs[i]];
        r->decode_s += dt;
        r->decode_tokens++;
        int trc = accept_token(e, r, e->toks[i], t1, NULL, e->dlogits + (size_t)i * (size_t)e->V);
        if (trc != HYB_OK && rc == HYB_OK) rc = trc;
    }
    return rc;
}

int hyb_engine_step(hyb_engine *e) {
    int S = e->o.slots, rc = HYB_OK;
    e->st.steps++;
    /* 1. admit */
    req *prev = NULL, *cand = e->wait_head;
    int free_from = 0; /* slots below are taken */
    while (cand && e->st.active < S) {
        int s = -1;
        if (cand->p.flags & HYB_REQ_PIN) {
            if (!e->slot_req[cand->p.slot]) s = cand->p.slot;
        } else if (!waits_for_prefix(e, cand)) {
            while (free_from < S && e->slot_req[free_from])
                free_from++;
            s = free_from < S ? free_from : -1;
        }
        if (s < 0) { /* it stays in the queue; later requests may pass it */
            prev = cand, cand = cand->next;
            continue;
        }
        req *r = cand;
        cand = r->next;
        if (prev)
            prev->next = r->next;
        else
            e->wait_head = r->next;
        if (e->wait_tail == r) e->wait_tail = prev;
        r->next = NULL;
        e->st.waiting--;
        int arc = admit(e, r, s);
        if (arc != HYB_OK) {
            if (e->slot_req[s] == r) finish_req(e, r, HYB_FINISH_ERROR);
            if (rc == HYB_OK) rc = arc;
        }
    }
    /* 2. chunked prefill, in admission order */
    int budget = e->o.prefill_chunk > 0 ? e->o.prefill_chunk : -1;
    for (;;) {
        if (budget == 0) break;
        req *r = NULL;
        for (int s = 0; s < S; s++) {
            req *q = e->slot_req[s];
            if (q && q->state == R_PREFILL && (!r || q->admit_seq < r->admit_seq)) r = q;
        }
        if (!r) break;
        int chunk = r->n_prompt - r->done;
        if (budget > 0 && chunk > budget) chunk = budget;
        if (r->snap_target > r->done && chunk > r->snap_target - r->done)
            chunk = r->snap_target - r->done;
        double t0 = hyb_time_now();
        int prc = hyb_model_prefill(e->m, e->kv, r->slot, r->tokens + r->done, chunk, e->logits);
        double dt = hyb_time_now() - t0;
        e->st.t_prefill += dt;
        r->prefill_s += dt;
        if (prc != HYB_OK) {
            prc = hyb_error_wrap(prc, "engine: request %lld: prefill", (long long)r->id);
            finish_req(e, r, HYB_FINISH_ERROR);
            if (rc == HYB_OK) rc = prc;
            continue;
        }
        e->st.prefill_tokens += chunk;
        r->prefill_tokens += chunk;
        r->done += chunk;
        if (budget > 0) budget -= chunk;
        if (r->done == r->snap_target) {
            int src = snapshot_at(e, r, e->logits);
            if (src != HYB_OK && rc == HYB_OK) rc = src; /* the request itself goes on */
            next_target(e, r);
        }
        if (r->done == r->n_prompt) {
            int trc = take_token(e, r, e->logits);
            if (trc != HYB_OK && rc == HYB_OK) rc = trc;
        }
    }
    /* 3. one batched decode over every slot with a pending token */
    int n = 0;
    for (int s = 0; s < S; s++) {
        req *r = e->slot_req[s];
        if (r && r->state == R_DECODE) {
            e->seqs[n] = s;
            e->ids[n] = r->pending;
            n++;
        }
    }
    if (n > 0) {
        double t0 = hyb_time_now();
        int drc = e->dlogits ? hyb_model_decode_dev(e->m, e->kv, n, e->seqs, e->ids, e->dlogits)
                             : hyb_model_decode(e->m, e->kv, n, e->seqs, e->ids, e->logits);
        double dt = hyb_time_now() - t0;
        e->st.t_decode += dt;
        e->st.decode_calls++;
        if (drc != HYB_OK) {
            drc = hyb_error_wrap(drc, "engine: batched decode of %d sequences", n);
            for (int i = 0; i < n; i++)
                finish_req(e, e->slot_req[e->seqs[i]], HYB_FINISH_ERROR);
            return rc == HYB_OK ? drc : rc;
        }
        e->st.decode_tokens += n;
        if (e->dlogits) return sample_on_device(e, n, dt, rc);
        for (int i = 0; i < n; i++) {
            req *r = e->slot_req[e->seqs[i]];
            r->decode_s += dt;
            r->decode_tokens++;
            int trc = take_token(e, r, e->logits + (size_t)i * (size_t)e->V);
            if (trc != HYB_OK && rc == HYB_OK) rc = trc;
        }
    }
    return rc;
}

int hyb_engine_pending(const hyb_engine *e) {
    return e->st.waiting + e->st.active;
}

int hyb_engine_pop(hyb_engine *e, hyb_completion *out) {
    done_node *d = e->done_head;
    if (!d) return 0;
    e->done_head = d->next;
    if (!e->done_head) e->done_tail = NULL;
    *out = d->c;
    free(d);
    return 1;
}

void hyb_completion_free(hyb_completion *c) {
    if (!c) return;
    free(c->tokens);
    free(c->t_token);
    free(c->text);
    c->tokens = NULL;
    c->t_token = NULL;
    c->text = NULL;
    c->n_tokens = 0;
    c->text_len = 0;
}

int hyb_engine_run(hyb_engine *e) {
    while (hyb_engine_pending(e))
        HYB_TRY(hyb_engine_step(e));
    return HYB_OK;
}

int hyb_engine_slot_pos(const hyb_engine *e, int slot) {
    return slot >= 0 && slot < e->o.slots ? e->kv->pos[slot] : -1;
}

hyb_kvstate *hyb_engine_kvstate(hyb_engine *e) {
    return e->kv;
}

void hyb_engine_get_stats(const hyb_engine *e, hyb_engine_stats *out) {
    *out = e->st;
    out->prefix_entries = 0;
    out->prefix_bytes = 0;
    for (int i = 0; i < e->n_pe; i++)
        if (e->pe[i].ready) {
            out->prefix_entries++;
            out->prefix_bytes += e->pe[i].bytes;
        }
}

/* ---- memory planning -------------------------------------------------------------------------*/

int hyb_plan_memory(const hyb_layermap *map, size_t budget_bytes, int context,
                    hyb_memory_plan *out) {
    return hyb_plan_memory_ex(map, budget_bytes, context, (int)sizeof(float), out);
}

int hyb_plan_memory_ex(const hyb_layermap *map, size_t budget_bytes, int context,
                       int weight_elem_bytes, hyb_memory_plan *out) {
    return hyb_plan_memory_kv(map, budget_bytes, context, weight_elem_bytes, HYB_KV_F32, out);
}

int hyb_plan_memory_kv(const hyb_layermap *map, size_t budget_bytes, int context,
                       int weight_elem_bytes, int kv, hyb_memory_plan *out) {
    memset(out, 0, sizeof *out);
    if (!hyb_kv_dtype_name(kv))
        return hyb_error_set(HYB_ERR_ARG, "hyb_plan_memory: unknown KV cache type %d", kv);
    if (weight_elem_bytes < 1 || weight_elem_bytes > 8)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_plan_memory: weight_elem_bytes must be in [1, 8], got %d",
                             weight_elem_bytes);
    if (!map) return hyb_error_set(HYB_ERR_ARG, "hyb_plan_memory: no layer map");
    if (context < 1 || context > map->max_seq)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_plan_memory: context %d outside [1, max_seq %d] of %s", context,
                             map->max_seq, map->path);
    const size_t D = (size_t)map->d_model, V = (size_t)map->vocab_size, F = (size_t)map->d_ff;
    size_t elems = V * D * (map->tie_embeddings ? 1 : 2) + D; /* embed, lm_head, final norm */
    size_t per_tok = 0, fixed = 0, per_seq = 0;
    /* two contexts to separate growth from the fixed part */
    int c1 = context, c2 = context < map->max_seq ? map->max_seq : context / 2;
    if (c2 < 1 || c2 == c1) c2 = c1 + 1;
    for (int l = 0; l < map->n_layers; l++) {
        elems += 2 * D + 3 * D * F; /* norms + MLP (identity layers keep them) */
        const hyb_mixer_spec *sp = &map->mixers[map->layer_mixer[l]];
        if (strcmp(sp->type, HYB_MIXER_IDENTITY) == 0) {
            out->n_identity_layers++;
            continue;
        }
        const hyb_mixer_desc *d;
        HYB_TRY(hyb_plugin_find(sp->type, &d));
        hyb_model_dims dims = {map->d_model, map->n_layers, l, map->max_seq, (float)map->norm_eps};
        void *self = NULL;
        int rc = d->create(&dims, sp->table, &self);
        if (rc < 0) return hyb_error_wrap(rc, "hyb_plan_memory: layer %d (%s)", l, sp->where);
        int np = d->n_params(self);
        for (int i = 0; i < np; i++) {
            hyb_param_decl pd;
            memset(&pd, 0, sizeof pd);
            rc = d->param_decl(self, i, &pd);
            if (rc < 0) {
                d->destroy(self);
                return hyb_error_wrap(rc, "hyb_plan_memory: layer %d param %d", l, i);
            }
            size_t ne = 1;
            for (int k = 0; k < pd.ndim; k++)
                ne *= (size_t)pd.shape[k];
            elems += ne;
        }
        size_t s1 = d->state_bytes_kv ? d->state_bytes_kv(self, c1, kv) : d->state_bytes(self, c1),
               s2 = d->state_bytes_kv ? d->state_bytes_kv(self, c2, kv) : d->state_bytes(self, c2);
        d->destroy(self);
        size_t lo = c1 < c2 ? s1 : s2, hi = c1 < c2 ? s2 : s1;
        int dc = c1 < c2 ? c2 - c1 : c1 - c2;
        size_t grow = (hi - lo) / (size_t)dc;
        size_t fix = s1 - grow * (size_t)c1;
        per_tok += grow;
        fixed += fix;
        if (grow)
            out->n_attn_layers++;
        else if (s1)
            out->n_fixed_layers++;
        per_seq += (s1 + 63) & ~(size_t)63; /* as hyb_kvstate_new lays them out */
    }
    out->weight_bytes = elems * (size_t)weight_elem_bytes;
    out->kv_bytes_per_token = per_tok;
    out->fixed_bytes_per_seq = fixed;
    out->context = context;
    out->bytes_per_seq = per_seq;
    out->budget_bytes = budget_bytes;
    if (budget_bytes < out->weight_bytes + per_seq)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_plan_memory: budget %zu bytes does not hold the weights (%zu "
                             "bytes) and one sequence of %d tokens (%zu bytes) of %s",
                             budget_bytes, out->weight_bytes, context, per_seq, map->path);
    out->max_batch = (int64_t)((budget_bytes - out->weight_bytes) / (per_seq ? per_seq : 1));
    return HYB_OK;
}

static double mib(size_t b) {
    return (double)b / (1024.0 * 1024.0);
}

void hyb_memory_plan_format(const hyb_memory_plan *p, const char *name, char *buf, size_t n) {
    snprintf(buf, n,
             "memory plan %s: weights %.1f MiB; per sequence: KV %zu B/token (%d attention "
             "layers), fixed %zu B (%d recurrent layers, %d identity); at context %d: %.2f "
             "MiB/sequence; budget %.1f MiB -> max batch %lld",
             name ? name : "", mib(p->weight_bytes), p->kv_bytes_per_token, p->n_attn_layers,
             p->fixed_bytes_per_seq, p->n_fixed_layers, p->n_identity_layers, p->context,
             mib(p->bytes_per_seq), mib(p->budget_bytes), (long long)p->max_batch);
}
