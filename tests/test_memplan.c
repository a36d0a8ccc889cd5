/* tests/test_memplan.c: up-front memory planning (core/memplan.c, hyb/memplan.h): the planned
 * weight bytes equal the parameters a build allocates (attention, mamba1, deltanet and identity
 * layers, tied and untied), the planned state bytes equal what hyb_kvstate_new allocates, and a
 * model or a state that cannot fit is refused before allocating, with what, how much and how
 * much is available (issue 19). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/memplan.h"
#include "hyb/model.h"

static const char *MAP_FMT = "[model]\n"
                             "d_model = %d\n"
                             "n_layers = 4\n"
                             "vocab_size = %d\n"
                             "d_ff = 48\n"
                             "tie_embeddings = %s\n"
                             "max_seq = 64\n"
                             "[mixers.attn]\n"
                             "type = \"mha\"\n"
                             "symbol = \"t\"\n"
                             "n_heads = 4\n"
                             "n_kv_heads = 2\n"
                             "head_dim = 8\n"
                             "[mixers.m]\n"
                             "type = \"mamba1\"\n"
                             "symbol = \"m\"\n"
                             "d_inner = 64\n"
                             "d_xb = 16\n"
                             "d_state = 8\n"
                             "dt_rank = 4\n"
                             "[mixers.d]\n"
                             "type = \"deltanet\"\n"
                             "symbol = \"d\"\n"
                             "n_heads = 2\n"
                             "[mixers.i]\n"
                             "type = \"identity\"\n"
                             "symbol = \"i\"\n"
                             "[layout]\n"
                             "pattern = \"%s\"\n";

static hyb_layermap *map_of(int d_model, int vocab, int tied, const char *pattern) {
    char text[2048];
    snprintf(text, sizeof text, MAP_FMT, d_model, vocab, tied ? "true" : "false", pattern);
    hyb_layermap *map = NULL;
    if (hyb_layermap_parse(text, "plan.toml", &map) != HYB_OK)
        fprintf(stderr, "layermap: %s\n", hyb_error());
    return map;
}

static void test_weights_and_state_exact(void) {
    const char *patterns[] = {"tmdi", "tttt", "mmii"};
    for (int k = 0; k < 3; k++)
        for (int tied = 0; tied < 2; tied++) {
            hyb_layermap *map = map_of(32, 100, tied, patterns[k]);
            CHECK(map != NULL);
            if (!map) continue;
            uint64_t plan = 0;
            CHECK_MSG(hyb_mem_plan_weights(map, &plan) == HYB_OK, "%s", hyb_error());
            hyb_model *m = NULL;
            CHECK_MSG(hyb_model_build(map, 1, &m) == HYB_OK, "%s", hyb_error());
            if (!m) continue;
            int n;
            hyb_tensor **p = hyb_model_params(m, &n);
            uint64_t real = 0;
            for (int i = 0; i < n; i++)
                real += (uint64_t)hyb_tensor_numel(p[i]) * sizeof(float);
            CHECK_MSG(plan == real, "%s tied %d: planned %llu weight bytes, built %llu",
                      patterns[k], tied, (unsigned long long)plan, (unsigned long long)real);
            for (int n_seq = 1; n_seq <= 3; n_seq += 2) {
                uint64_t st = 0;
                CHECK(hyb_mem_plan_state(m, n_seq, 40, &st) == HYB_OK);
                hyb_kvstate *s = NULL;
                CHECK_MSG(hyb_kvstate_new(m, n_seq, 40, &s) == HYB_OK, "%s", hyb_error());
                CHECK_MSG(s && st == s->bytes, "%s: planned %llu state bytes, allocated %zu",
                          patterns[k], (unsigned long long)st, s ? s->bytes : 0);
                hyb_kvstate_free(s);
            }
            hyb_model_free(m);
        }
}

static void test_refused_up_front(void) {
    /* 65536 x 2^24 embeddings: 4 TiB of f32, more than any test machine has */
    hyb_layermap *map = map_of(65536, 1 << 24, 1, "tttt");
    CHECK(map != NULL);
    hyb_model *m = NULL;
    CHECK(hyb_model_build(map, 1, &m) == HYB_ERR_NOMEM && m == NULL);
    CHECK_MSG(strstr(hyb_error(), "plan.toml needs") && strstr(hyb_error(), "GiB (f32 weights)") &&
                  strstr(hyb_error(), "of memory is available"),
              "%s", hyb_error());

    /* HYB_MEM_LIMIT: the limit is named as the source */
    setenv("HYB_MEM_LIMIT", "100000", 1);
    map = map_of(32, 100, 1, "tmdi");
    CHECK(hyb_model_build(map, 1, &m) == HYB_ERR_NOMEM && m == NULL);
    CHECK_MSG(strstr(hyb_error(), "but only 100000 bytes of memory is available") != NULL,
              "%s", hyb_error());
    CHECK_MSG(strstr(hyb_error(), "(HYB_MEM_LIMIT)") != NULL, "%s", hyb_error());
    unsetenv("HYB_MEM_LIMIT");

    /* a state that cannot fit: refused before allocating, naming sequences and context */
    map = map_of(32, 100, 1, "tttt");
    CHECK(hyb_model_build(map, 1, &m) == HYB_OK);
    if (m) {
        uint64_t st;
        CHECK(hyb_mem_plan_state(m, 1000, 64, &st) == HYB_OK);
        char lim[32];
        snprintf(lim, sizeof lim, "%llu", (unsigned long long)(st - 1));
        setenv("HYB_MEM_LIMIT", lim, 1);
        hyb_kvstate *s = NULL;
        CHECK(hyb_kvstate_new(m, 1000, 64, &s) == HYB_ERR_NOMEM && s == NULL);
        CHECK_MSG(strstr(hyb_error(), "decode state") &&
                      strstr(hyb_error(), "1000 sequences of 64 tokens"),
                  "%s", hyb_error());
        CHECK(hyb_kvstate_new(m, 999, 64, &s) == HYB_OK); /* just under the limit */
        hyb_kvstate_free(s);
        unsetenv("HYB_MEM_LIMIT");
        hyb_model_free(m);
    }
    const char *src = NULL;
    uint64_t avail = hyb_mem_available(&src);
    printf("  available now: %.2f GiB (%s)\n", (double)avail / (1 << 30), src);
    CHECK(avail > 0 && src != NULL);
}

int main(void) {
    hyb_log_set_level(HYB_LOG_WARN);
    RUN(test_weights_and_state_exact);
    RUN(test_refused_up_front);
    return harness_done();
}
