/* tests/test_engine.c: the serving engine, i.e. the generation API (continuous batching, chunked
 * prefill, prefix cache, on_token, pinned/continued slots, borrowed samplers) against generating
 * each request alone with hyb_model_prefill/decode, and memory planning against hand-computed
 * sizes. Label: unit. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/engine.h"

/* attention (mha, GQA) and recurrent (mamba1) layers */
static const char *MAP_TEXT = "[model]\n"
                              "name = \"engine-test\"\n"
                              "d_model = 32\n"
                              "n_layers = 4\n"
                              "vocab_size = 53\n"
                              "d_ff = 48\n"
                              "norm_eps = 1e-5\n"
                              "tie_embeddings = true\n"
                              "max_seq = 128\n"
                              "\n"
                              "[mixers.attn]\n"
                              "type = \"mha\"\n"
                              "symbol = \"t\"\n"
                              "n_heads = 4\n"
                              "n_kv_heads = 2\n"
                              "head_dim = 8\n"
                              "rope_theta = 10000.0\n"
                              "\n"
                              "[mixers.mamba]\n"
                              "type = \"mamba1\"\n"
                              "symbol = \"m\"\n"
                              "d_inner = 32\n"
                              "d_xb = 16\n"
                              "d_state = 8\n"
                              "dt_rank = 4\n"
                              "d_conv = 4\n"
                              "\n"
                              "[layout]\n"
                              "pattern = \"tmtm\"\n";

static hyb_model *build(void) {
    hyb_layermap *map = NULL;
    if (hyb_layermap_parse(MAP_TEXT, "engine-test.toml", &map) != HYB_OK) {
        printf("%s\n", hyb_error());
        return NULL;
    }
    hyb_model *m = NULL;
    if (hyb_model_build(map, 7, &m) != HYB_OK) {
        printf("%s\n", hyb_error());
        return NULL;
    }
    return m;
}

/* Greedy generation of one request alone: prefill the whole prompt, then decode one by one. */
static int generate_alone(hyb_model *m, const int32_t *prompt, int n, int max_tokens, int eos,
                          int32_t *out) {
    hyb_kvstate *kv = NULL;
    if (hyb_kvstate_new(m, 1, 96, &kv) != HYB_OK) return -1;
    float *logits = malloc(sizeof(float) * (size_t)m->V);
    int k = 0;
    if (hyb_model_prefill(m, kv, 0, prompt, n, logits) == HYB_OK) {
        for (;;) {
            int32_t t = hyb_sample_argmax(logits, m->V);
            out[k++] = t;
            if (t == eos || k == max_tokens) break;
            int32_t seq = 0;
            if (hyb_model_decode(m, kv, 1, &seq, &t, logits) != HYB_OK) break;
        }
    }
    free(logits);
    hyb_kvstate_free(kv);
    return k;
}

#define NREQ 11

static void make_prompt(int r, int32_t *ids, int *n, int *max_tokens) {
    *n = 3 + (r * 7) % 29;          /* 3 .. 31 tokens */
    *max_tokens = 2 + (r * 5) % 13; /* 2 .. 14 tokens */
    for (int i = 0; i < *n; i++) ids[i] = (r * 31 + i * 17 + (i * i) % 5) % 53;
}

static void test_batched_equals_alone(void) {
    hyb_model *m = build();
    CHECK(m != NULL);
    if (!m) return;
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 3;
    o.max_ctx = 96;
    o.prefill_chunk = 10; /* prompts are split across steps and shared between requests */
    hyb_engine *e = NULL;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_OK);
    int32_t prompts[NREQ][40];
    int n[NREQ], mt[NREQ];
    int64_t ids[NREQ];
    for (int r = 0; r < NREQ; r++) {
        make_prompt(r, prompts[r], &n[r], &mt[r]);
        hyb_request_params p = hyb_request_defaults();
        p.max_tokens = mt[r];
        CHECK(hyb_engine_submit(e, prompts[r], n[r], &p, &ids[r]) == HYB_OK);
    }
    int got = 0, steps = 0;
    int32_t ref[32];
    while (hyb_engine_pending(e) && steps < 1000) {
        CHECK(hyb_engine_step(e) == HYB_OK);
        steps++;
        hyb_completion c;
        while (hyb_engine_pop(e, &c)) {
            int r = (int)(c.id - ids[0]);
            CHECK(r >= 0 && r < NREQ);
            if (r >= 0 && r < NREQ) {
                int k = generate_alone(m, prompts[r], n[r], mt[r], -1, ref);
                CHECK_MSG(k == c.n_tokens, "request %d: %d tokens alone, %d in the engine", r, k,
                          c.n_tokens);
                CHECK(c.finish == HYB_FINISH_LENGTH);
                for (int i = 0; i < k && i < c.n_tokens; i++)
                    CHECK_MSG(ref[i] == c.tokens[i], "request %d token %d: %d alone, %d engine", r,
                              i, ref[i], c.tokens[i]);
                CHECK(c.t_arrival <= c.t_admit && c.t_admit <= c.t_token[0]);
                for (int i = 1; i < c.n_tokens; i++) CHECK(c.t_token[i - 1] <= c.t_token[i]);
            }
            got++;
            hyb_completion_free(&c);
        }
    }
    CHECK(got == NREQ);
    hyb_engine_stats st;
    hyb_engine_get_stats(e, &st);
    CHECK(st.max_active == 3);
    CHECK(st.finished == NREQ);
    int64_t ptok = 0, gtok = 0;
    for (int r = 0; r < NREQ; r++) ptok += n[r], gtok += mt[r] - 1;
    CHECK(st.prefill_tokens == ptok);
    CHECK(st.decode_tokens == gtok); /* the first token of each comes from its prefill */
    CHECK(st.decode_calls < gtok);   /* decode steps were batched */
    hyb_engine_free(e);
    hyb_model_free(m);
}

static void test_eos_stops(void) {
    hyb_model *m = build();
    if (!m) return;
    int32_t prompt[40];
    int n, mt;
    make_prompt(4, prompt, &n, &mt);
    int32_t ref[32];
    int k = generate_alone(m, prompt, n, 20, -1, ref);
    CHECK(k == 20);
    hyb_engine *e = NULL;
    hyb_engine_opts o = hyb_engine_defaults();
    o.max_ctx = 96;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_OK);
    hyb_request_params p = hyb_request_defaults();
    p.max_tokens = 20;
    p.n_eos = 1;
    p.eos[0] = ref[3];
    int stop = 0;
    while (ref[stop] != ref[3]) stop++; /* first occurrence */
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_OK);
    while (hyb_engine_pending(e)) CHECK(hyb_engine_step(e) == HYB_OK);
    hyb_completion c;
    CHECK(hyb_engine_pop(e, &c) == 1);
    CHECK(c.finish == HYB_FINISH_EOS);
    CHECK(c.n_tokens == stop + 1);
    hyb_completion_free(&c);
    CHECK(hyb_engine_pop(e, &c) == 0);
    hyb_engine_free(e);
    hyb_model_free(m);
}

/* Run requests sharing a 24-token prefix; returns the completions' tokens in submit order. */
static void run_shared(hyb_model *m, int registered, int block, int32_t out[6][16], int *nout,
                       hyb_engine_stats *st) {
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 2;
    o.max_ctx = 96;
    o.prefill_chunk = 7;
    o.prefix_block = block;
    hyb_engine *e = NULL;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_OK);
    if (!e) return;
    int32_t prefix[24];
    for (int i = 0; i < 24; i++) prefix[i] = (i * 13 + 5) % 53;
    if (registered) CHECK(hyb_engine_add_prefix(e, prefix, 24) == HYB_OK);
    int64_t first = 0;
    for (int r = 0; r < 6; r++) {
        int32_t ids[40];
        memcpy(ids, prefix, sizeof prefix);
        int extra = r == 5 ? 0 : 1 + r * 2; /* the last prompt is the prefix itself */
        for (int i = 0; i < extra; i++) ids[24 + i] = (r * 11 + i * 3) % 53;
        hyb_request_params p = hyb_request_defaults();
        p.max_tokens = 8;
        int64_t id;
        CHECK(hyb_engine_submit(e, ids, 24 + extra, &p, &id) == HYB_OK);
        if (r == 0) first = id;
    }
    while (hyb_engine_pending(e)) {
        CHECK(hyb_engine_step(e) == HYB_OK);
        hyb_completion c;
        while (hyb_engine_pop(e, &c)) {
            int r = (int)(c.id - first);
            if (r >= 0 && r < 6) {
                nout[r] = c.n_tokens;
                memcpy(out[r], c.tokens, sizeof(int32_t) * (size_t)c.n_tokens);
            }
            hyb_completion_free(&c);
        }
    }
    hyb_engine_get_stats(e, st);
    hyb_engine_free(e);
}

static void test_prefix_cache(void) {
    hyb_model *m = build();
    if (!m) return;
    int32_t base[6][16], reg[6][16], blk[6][16];
    int nb[6] = {0}, nr[6] = {0}, nk[6] = {0};
    hyb_engine_stats sb, sr, sk;
    run_shared(m, 0, 0, base, nb, &sb);
    run_shared(m, 1, 0, reg, nr, &sr);
    run_shared(m, 0, 8, blk, nk, &sk);
    CHECK(sb.prefix_hits == 0 && sb.prefix_misses == 0);
    /* registered: the first request misses and computes the prefix; the second, although a slot
     * is free, waits for the snapshot; all five others restore it */
    CHECK_MSG(sr.prefix_hits == 5 && sr.prefix_misses == 1, "registered: %lld hits %lld misses",
              (long long)sr.prefix_hits, (long long)sr.prefix_misses);
    CHECK(sr.prefix_tokens_saved == 5 * 24);
    CHECK(sr.prefill_tokens == sb.prefill_tokens - 5 * 24);
    CHECK(sr.prefix_entries == 1);
    /* automatic, block 8: every prompt has a block-aligned prefix of 24 or 32 tokens; the 24-token
     * one is shared by all */
    CHECK(sk.prefix_hits >= 3);
    CHECK(sk.prefix_hits + sk.prefix_misses == 6);
    CHECK(sk.prefill_tokens < sb.prefill_tokens);
    for (int r = 0; r < 6; r++) {
        CHECK(nb[r] == 8 && nr[r] == 8 && nk[r] == 8);
        for (int i = 0; i < 8; i++) {
            CHECK_MSG(base[r][i] == reg[r][i], "registered prefix: request %d token %d", r, i);
            CHECK_MSG(base[r][i] == blk[r][i], "block prefix: request %d token %d", r, i);
        }
    }
    /* and the uncached run equals generation alone */
    int32_t ref[16], ids[40];
    for (int i = 0; i < 24; i++) ids[i] = (i * 13 + 5) % 53;
    int k = generate_alone(m, ids, 24, 8, -1, ref);
    CHECK(k == 8);
    for (int i = 0; i < 8; i++) CHECK(ref[i] == base[5][i]);
    hyb_model_free(m);
}

/* Nested registered prefixes are all snapshotted in one prefill pass; exact-prefix prompts are
 * answered from the stored logits without any prefill. */
static void test_nested_prefixes(void) {
    hyb_model *m = build();
    if (!m) return;
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 1;
    o.max_ctx = 96;
    hyb_engine *e = NULL;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_OK);
    if (!e) return;
    int32_t ids[30];
    for (int i = 0; i < 30; i++) ids[i] = (i * 19 + 2) % 53;
    CHECK(hyb_engine_add_prefix(e, ids, 8) == HYB_OK);
    CHECK(hyb_engine_add_prefix(e, ids, 16) == HYB_OK);
    CHECK(hyb_engine_add_prefix(e, ids, 24) == HYB_OK);
    hyb_request_params p = hyb_request_defaults();
    p.max_tokens = 5;
    CHECK(hyb_engine_submit(e, ids, 30, &p, NULL) == HYB_OK);
    int lens[3] = {8, 16, 24};
    for (int k = 0; k < 3; k++) CHECK(hyb_engine_submit(e, ids, lens[k], &p, NULL) == HYB_OK);
    while (hyb_engine_pending(e)) CHECK(hyb_engine_step(e) == HYB_OK);
    hyb_engine_stats st;
    hyb_engine_get_stats(e, &st);
    CHECK(st.prefix_entries == 3);
    CHECK(st.prefill_tokens == 30);
    CHECK(st.prefix_hits == 3 && st.prefix_misses == 1);
    hyb_completion c;
    int k = -1;
    int32_t ref[8];
    while (hyb_engine_pop(e, &c)) {
        if (k >= 0) {
            int n = generate_alone(m, ids, lens[k], 5, -1, ref);
            CHECK(c.prefix_tokens == lens[k] && c.n_tokens == n);
            for (int i = 0; i < n && i < c.n_tokens; i++)
                CHECK_MSG(c.tokens[i] == ref[i], "prefix %d token %d", lens[k], i);
        }
        k++;
        hyb_completion_free(&c);
    }
    CHECK(k == 3);
    hyb_engine_free(e);
    hyb_model_free(m);
}

static void test_memory_plan(void) {
    hyb_layermap *map = NULL;
    CHECK(hyb_layermap_parse(MAP_TEXT, "engine-test.toml", &map) == HYB_OK);
    if (!map) return;
    hyb_memory_plan p;
    CHECK(hyb_plan_memory(map, (size_t)64 << 20, 100, &p) == HYB_OK);
    /* mha: K and V caches, 2 * KV 2 * hd 8 floats per token per layer, 2 layers */
    CHECK(p.kv_bytes_per_token == 2 * 2 * (2 * 8) * 4);
    /* mamba1: d_inner 32 * (d_state 8 + d_conv 4) floats per layer, 2 layers */
    CHECK(p.fixed_bytes_per_seq == 2 * 32 * (8 + 4) * 4);
    CHECK(p.n_attn_layers == 2 && p.n_fixed_layers == 2 && p.n_identity_layers == 0);
    /* each layer's state rounded up to 64 bytes, as hyb_kvstate_new */
    size_t attn = 2 * 16 * 100 * 4, rec = 32 * 12 * 4;
    size_t seq = 2 * ((attn + 63) / 64 * 64) + 2 * ((rec + 63) / 64 * 64);
    CHECK(p.bytes_per_seq == seq);
    /* weights: what hyb_model_build allocates */
    hyb_model *m = build();
    if (m) {
        CHECK(p.weight_bytes == (size_t)hyb_model_n_elements(m) * sizeof(float));
        hyb_kvstate *kv = NULL;
        CHECK(hyb_kvstate_new_ex(m, 3, 100, HYB_KV_F32, &kv) == HYB_OK);
        if (kv) CHECK(kv->bytes == 3 * seq);
        hyb_kvstate_free(kv);
        /* the default KV cache is f16 (half the attention bytes; the recurrent state stays f32),
         * and the plan for it says the same */
        size_t seq16 = 2 * ((attn / 2 + 63) / 64 * 64) + 2 * ((rec + 63) / 64 * 64);
        kv = NULL;
        CHECK(hyb_kvstate_new(m, 3, 100, &kv) == HYB_OK);
        if (kv) CHECK(kv->bytes == 3 * seq16 && kv->kv == HYB_KV_F16);
        hyb_kvstate_free(kv);
        hyb_memory_plan p16;
        CHECK(hyb_plan_memory_kv(map, (size_t)64 << 20, 100, 4, HYB_KV_F16, &p16) == HYB_OK);
        CHECK(p16.kv_bytes_per_token == 2 * 2 * (2 * 8) * 2 && p16.bytes_per_seq == seq16);
        CHECK(p16.fixed_bytes_per_seq == p.fixed_bytes_per_seq);
        /* an unknown type is refused by name */
        CHECK(hyb_kvstate_new_ex(m, 1, 8, 7, &kv) == HYB_ERR_ARG && !kv);
        CHECK(strstr(hyb_error(), "unknown KV cache type 7") != NULL);
        hyb_model_free(m);
    }
    CHECK(p.max_batch == (int64_t)((((size_t)64 << 20) - p.weight_bytes) / seq));
    /* a budget that holds the weights and exactly 5 sequences */
    CHECK(hyb_plan_memory(map, p.weight_bytes + 5 * seq + 3, 100, &p) == HYB_OK);
    CHECK(p.max_batch == 5);
    /* errors */
    CHECK(hyb_plan_memory(map, p.weight_bytes + seq - 1, 100, &p) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "budget") != NULL);
    CHECK(hyb_plan_memory(map, (size_t)1 << 30, 0, &p) == HYB_ERR_ARG);
    CHECK(hyb_plan_memory(map, (size_t)1 << 30, 129, &p) == HYB_ERR_ARG);
    hyb_layermap_free(map);
}

static void test_errors(void) {
    hyb_model *m = build();
    if (!m) return;
    hyb_engine *e = NULL;
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 0;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_ERR_ARG && e == NULL);
    o = hyb_engine_defaults();
    o.prefill_chunk = -1;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_ERR_ARG);
    o = hyb_engine_defaults();
    o.max_ctx = 129; /* past the map's max_seq 128 */
    CHECK(hyb_engine_new(m, &o, &e) == HYB_ERR_ARG && e == NULL);
    CHECK_MSG(strstr(hyb_error(), "max_ctx must be in [2, 128]") != NULL, "%s", hyb_error());
    o.max_ctx = 16;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_OK);
    if (!e) return;
    int32_t ids[20] = {0};
    hyb_request_params p = hyb_request_defaults();
    CHECK(hyb_engine_submit(e, ids, 16, &p, NULL) == HYB_ERR_ARG); /* no room in max_ctx 16 */
    CHECK(strstr(hyb_error(), "max_ctx 16") != NULL);
    CHECK(hyb_engine_submit(e, ids, 0, &p, NULL) == HYB_ERR_ARG);
    ids[2] = 53;
    CHECK(hyb_engine_submit(e, ids, 5, &p, NULL) == HYB_ERR_ARG);
    ids[2] = 1;
    p.max_tokens = 0;
    CHECK(hyb_engine_submit(e, ids, 5, &p, NULL) == HYB_ERR_ARG);
    p = hyb_request_defaults();
    p.sampler.repetition_penalty = 0;
    CHECK(hyb_engine_submit(e, ids, 5, &p, NULL) == HYB_ERR_ARG);
    CHECK(hyb_engine_add_prefix(e, ids, 16) == HYB_ERR_ARG);
    /* the context fills: 15 prompt tokens, then one generated token fills 16 */
    p = hyb_request_defaults();
    p.max_tokens = 10;
    CHECK(hyb_engine_submit(e, ids, 15, &p, NULL) == HYB_OK);
    while (hyb_engine_pending(e)) CHECK(hyb_engine_step(e) == HYB_OK);
    hyb_completion c;
    CHECK(hyb_engine_pop(e, &c) == 1);
    CHECK(c.finish == HYB_FINISH_CTX);
    CHECK(c.n_tokens == 2); /* sampled from positions 15 and 16 */
    hyb_completion_free(&c);
    hyb_engine_free(e);
    hyb_model_free(m);
}

/* ---- the generation API's request features: on_token, pinned slots and continuation, a
 * borrowed sampler, per-request timings, argument errors ---------------------------------------*/
typedef struct events {
    int n, stop_at, fail_at;
    int32_t tok[32];
    int index[32], finish[32];
} events;

static int on_token(void *user, const hyb_token_event *ev) {
    events *e = (events *)user;
    if (e->n < 32) {
        e->tok[e->n] = ev->token;
        e->index[e->n] = ev->index;
        e->finish[e->n] = ev->finish;
    }
    e->n++;
    if (ev->index == e->fail_at) return hyb_error_set(HYB_ERR_ARG, "on_token says no");
    return ev->index == e->stop_at;
}

static int run_one(hyb_engine *e, const int32_t *ids, int n, const hyb_request_params *p,
                   hyb_completion *c) {
    int rc = hyb_engine_submit(e, ids, n, p, NULL);
    if (rc == HYB_OK) rc = hyb_engine_run(e);
    int got = hyb_engine_pop(e, c);
    return got ? rc : (rc != HYB_OK ? rc : -100);
}

static void test_request_features(void) {
    hyb_model *m = build();
    if (!m) return;
    int32_t prompt[64], ref[32];
    int n, mt;
    make_prompt(5, prompt, &n, &mt);
    hyb_engine *e = NULL;
    hyb_engine_opts o = hyb_engine_defaults();
    o.slots = 2;
    o.max_ctx = 96;
    CHECK(hyb_engine_new(m, &o, &e) == HYB_OK);
    if (!e) return;
    hyb_completion c;

    /* on_token sees every token in order, the last one with its finish */
    events ev = {0, -1, -1, {0}, {0}, {0}};
    hyb_request_params p = hyb_request_defaults();
    p.max_tokens = 6;
    p.on_token = on_token;
    p.user = &ev;
    CHECK(run_one(e, prompt, n, &p, &c) == HYB_OK);
    int k = generate_alone(m, prompt, n, 6, -1, ref);
    CHECK(c.n_tokens == k && ev.n == k && c.finish == HYB_FINISH_LENGTH);
    for (int i = 0; i < k && i < c.n_tokens; i++) {
        CHECK(ev.tok[i] == c.tokens[i] && c.tokens[i] == ref[i] && ev.index[i] == i);
        CHECK(ev.finish[i] == (i == k - 1 ? HYB_FINISH_LENGTH : -1));
    }
    CHECK(c.prefill_tokens == n && c.decode_tokens == k - 1);
    CHECK(c.prefill_s > 0 && c.decode_s > 0 && c.text == NULL);
    hyb_completion_free(&c);
    /* ... and may stop a request (kept token) or fail it (the step reports the error) */
    ev = (events){0, 2, -1, {0}, {0}, {0}};
    CHECK(run_one(e, prompt, n, &p, &c) == HYB_OK);
    CHECK(c.finish == HYB_FINISH_STOP && c.n_tokens == 3);
    hyb_completion_free(&c);
    ev = (events){0, -1, 1, {0}, {0}, {0}};
    CHECK(run_one(e, prompt, n, &p, &c) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "on_token says no") != NULL);
    CHECK(c.finish == HYB_FINISH_ERROR && c.n_tokens == 2);
    hyb_completion_free(&c);
    CHECK(hyb_engine_pending(e) == 0);

    /* a pinned request, then one continuing its slot: only the new tokens are prefilled, and
     * the tokens are those of the whole prompt generated at once */
    p = hyb_request_defaults();
    p.max_tokens = 5;
    p.flags = HYB_REQ_PIN;
    p.slot = 1;
    CHECK(run_one(e, prompt, n, &p, &c) == HYB_OK);
    CHECK(c.slot == 1 && c.n_tokens == 5);
    CHECK(hyb_engine_slot_pos(e, 1) == n + 4); /* the last token is not fed */
    int32_t full[64];
    memcpy(full, prompt, sizeof(int32_t) * (size_t)n);
    memcpy(full + n, c.tokens, sizeof(int32_t) * 5);
    full[n + 5] = 7;
    full[n + 6] = 11;
    int nf = n + 7;
    hyb_completion_free(&c);
    p.flags = HYB_REQ_PIN | HYB_REQ_CONTINUE;
    p.max_tokens = 8;
    CHECK(run_one(e, full, nf, &p, &c) == HYB_OK);
    k = generate_alone(m, full, nf, 8, -1, ref);
    CHECK(c.prefill_tokens == 3 && c.n_tokens == k);
    for (int i = 0; i < k && i < c.n_tokens; i++)
        CHECK_MSG(ref[i] == c.tokens[i], "continued token %d: %d alone, %d continued", i, ref[i],
                  c.tokens[i]);
    hyb_completion_free(&c);
    /* a continuation must go past what the slot holds */
    CHECK(hyb_engine_slot_pos(e, 1) == nf + 7);
    CHECK(hyb_engine_submit(e, full, nf, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "slot 1 holds") != NULL);

    /* a borrowed sampler: same tokens as one made from the same params and seed, still the
     * caller's afterwards */
    hyb_sampler_params sp = hyb_sampler_defaults();
    sp.temperature = 1.5f;
    hyb_sampler *smp = NULL;
    CHECK(hyb_sampler_new(m->V, &sp, 99, &smp) == HYB_OK);
    p = hyb_request_defaults();
    p.max_tokens = 10;
    p.sampler = sp;
    p.seed = 99;
    CHECK(run_one(e, prompt, n, &p, &c) == HYB_OK);
    int32_t made[10];
    memcpy(made, c.tokens, sizeof made);
    hyb_completion_free(&c);
    p.sampler = hyb_sampler_defaults();
    p.sampler_state = smp;
    CHECK(run_one(e, prompt, n, &p, &c) == HYB_OK);
    CHECK(c.n_tokens == 10 && memcmp(made, c.tokens, sizeof made) == 0);
    hyb_completion_free(&c);

    /* argument errors name the parameter */
    p = hyb_request_defaults();
    p.max_tokens = 96;
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "max_tokens") != NULL);
    p = hyb_request_defaults();
    p.flags = HYB_REQ_PIN;
    p.slot = 2;
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "slot") != NULL);
    p.flags = HYB_REQ_CONTINUE;
    p.slot = 0;
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "HYB_REQ_PIN") != NULL);
    p = hyb_request_defaults();
    const char *stop[1] = {"x"};
    p.stop = stop;
    p.n_stop = 1;
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "tokenizer") != NULL);
    p = hyb_request_defaults();
    p.n_eos = 1;
    p.eos[0] = 53;
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "eos[0]") != NULL);
    hyb_sampler *other = NULL;
    CHECK(hyb_sampler_new(10, &sp, 1, &other) == HYB_OK);
    p = hyb_request_defaults();
    p.sampler_state = other;
    CHECK(hyb_engine_submit(e, prompt, n, &p, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "sampler_state") != NULL);
    CHECK(hyb_engine_pending(e) == 0);
    hyb_engine_free(e);
    /* the borrowed sampler outlives the engine */
    float lg[53] = {0};
    lg[5] = 1;
    CHECK(hyb_sampler_sample(smp, lg, NULL, 0) >= 0);
    hyb_sampler_free(smp);
    hyb_sampler_free(other);
    hyb_model_free(m);
}

int main(void) {
    RUN(test_batched_equals_alone);
    RUN(test_eos_stops);
    RUN(test_prefix_cache);
    RUN(test_nested_prefixes);
    RUN(test_memory_plan);
    RUN(test_errors);
    RUN(test_request_features);
    return harness_done();
}
