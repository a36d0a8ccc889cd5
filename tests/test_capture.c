/* tests/test_capture.c: hyb_model_capture from C: the API's argument checks, values and
 * gradients through the prefill/decode and training paths, and the lifetimes of a capture and
 * the graph holding its gradient taps in every order (model freed first, graph freed or reset
 * first, capture cleared between forward and backward, a second graph); run under ASan by
 * scripts/test.sh. The numerical checks are tests/lua/test_capture.lua's. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/graph.h"
#include "hyb/model.h"

#define MAP HARNESS_MAP_MODEL("cap", 3, 64) HARNESS_MAP_ATTN "[layout]\npattern = \"ttt\"\n"

static const int32_t ids[8] = {1, 5, 9, 13, 2, 6, 10, 14};
static const int32_t tgt[8] = {5, 9, 13, 2, 6, 10, 14, 3};

static hyb_tensor *loss_of(hyb_model *m, hyb_graph *g) {
    hyb_tensor *lg = hyb_model_forward(m, g, ids, 2, 4);
    return lg ? hyb_cross_entropy(g, lg, tgt, NULL) : NULL;
}

static void test_args(void) {
    hyb_model *m = harness_build_model(MAP, "cap.toml", 1);
    if (!m) return;
    int bad[] = {0, 3}, good[] = {2};
    CHECK(hyb_model_capture(m, bad, 2, HYB_CAP_BIT(HYB_CAP_MIXER_OUT), 0) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "layer 3 out of range [0, 3)"));
    CHECK(hyb_model_capture(m, good, 1, 0, 0) == HYB_ERR_ARG);
    CHECK(hyb_model_capture(m, good, 1, 1u << HYB_CAP_COUNT, 0) == HYB_ERR_ARG);
    CHECK(hyb_model_capture(m, good, 0, 1, 0) == HYB_ERR_ARG);
    CHECK(m->capture == NULL);
    CHECK(hyb_capture_point_from_name("mixer_out") == HYB_CAP_MIXER_OUT);
    CHECK(hyb_capture_point_from_name("mixer") == -1);
    CHECK(strcmp(hyb_capture_point_name(HYB_CAP_BLOCK_OUT), "block_out") == 0);
    CHECK(hyb_capture_point_name(HYB_CAP_COUNT) == NULL);
    CHECK(hyb_model_capture_info(m, NULL, NULL, NULL, NULL) == 0);
    hyb_model_free(m);
}

/* prefill and decode (the scratch graph, no tape) record values, never gradients */
static void test_decode(void) {
    hyb_model *m = harness_build_model(MAP, "cap.toml", 2);
    if (!m) return;
    int layers[] = {1};
    CHECK(hyb_model_capture(m, layers, 1, HYB_CAP_BIT(HYB_CAP_BLOCK_OUT), 1) == HYB_OK);
    hyb_kvstate *kv = NULL;
    CHECK(hyb_kvstate_new(m, 1, 16, &kv) == HYB_OK);
    if (!kv) goto out;
    float lg[64];
    CHECK(hyb_model_prefill(m, kv, 0, ids, 4, lg) == HYB_OK);
    const hyb_tensor *v = hyb_model_captured(m, 1, HYB_CAP_BLOCK_OUT, 0);
    CHECK(v && v->shape[0] == 1 && v->shape[1] == 4 && v->shape[2] == 32);
    int32_t seq = 0, next = 7;
    CHECK(hyb_model_decode(m, kv, 1, &seq, &next, lg) == HYB_OK);
    v = hyb_model_captured(m, 1, HYB_CAP_BLOCK_OUT, 0);
    CHECK(v && v->shape[0] == 1 && v->shape[1] == 1);
    CHECK(hyb_model_captured(m, 1, HYB_CAP_BLOCK_OUT, 1) == NULL);
    CHECK(hyb_model_captured(m, 0, HYB_CAP_BLOCK_OUT, 0) == NULL); /* not requested */
    uint64_t fw = 0;
    int grads = 0, taped = 1, ready = 1;
    CHECK(hyb_model_capture_info(m, &fw, &grads, &taped, &ready) == 1);
    CHECK(fw == 2 && grads == 1 && taped == 0 && ready == 0);
    hyb_kvstate_free(kv);
out:
    hyb_model_free(m);
}

/* a backward fills the gradients; every order of freeing is safe (ASan) */
static void test_lifetimes(void) {
    int layers[] = {0, 2};
    unsigned pts = HYB_CAP_BIT(HYB_CAP_MIXER_IN) | HYB_CAP_BIT(HYB_CAP_BLOCK_OUT);
    for (int order = 0; order < 5; order++) {
        hyb_model *m = harness_build_model(MAP, "cap.toml", 3);
        hyb_graph *g = hyb_graph_new(), *g2 = hyb_graph_new();
        if (!m || !g || !g2) return;
        CHECK(hyb_model_capture(m, layers, 2, pts, 1) == HYB_OK);
        hyb_tensor *loss = loss_of(m, g);
        CHECK(loss != NULL);
        if (!loss) return;
        CHECK(hyb_model_captured(m, 2, HYB_CAP_MIXER_IN, 1) == NULL); /* no backward yet */
        switch (order) {
        case 0: { /* the ordinary case: backward, read, free the model, then the graph */
            CHECK(hyb_graph_backward(g, loss, 1.0f) == HYB_OK);
            const hyb_tensor *gr = hyb_model_captured(m, 2, HYB_CAP_MIXER_IN, 1);
            CHECK(gr && gr->shape[2] == 32);
            double s = 0;
            for (int i = 0; gr && i < 8 * 32; i++)
                s += fabs(hyb_tensor_cf32(gr)[i]);
            CHECK(s > 0);
            hyb_model_free(m);
            hyb_graph_free(g);
            break;
        }
        case 1: /* the graph freed first, then a capture change and the model */
            hyb_graph_free(g);
            CHECK(hyb_model_capture(m, layers, 1, pts, 1) == HYB_OK);
            hyb_model_free(m);
            break;
        case 2: /* capture cleared between forward and backward: the backward still runs */
            hyb_model_capture_clear(m);
            CHECK(hyb_graph_backward(g, loss, 1.0f) == HYB_OK);
            hyb_graph_free(g);
            hyb_model_free(m);
            break;
        case 3: /* reset, then a forward on a second graph, then a backward there */
            hyb_graph_reset(g);
            hyb_graph_free(g);
            loss = loss_of(m, g2);
            CHECK(loss && hyb_graph_backward(g2, loss, 1.0f) == HYB_OK);
            CHECK(hyb_model_captured(m, 0, HYB_CAP_BLOCK_OUT, 1) != NULL);
            hyb_model_free(m);
            break;
        case 4: { /* a forward on g2 takes the taps from g (whose backward then fills nothing) */
            hyb_tensor *loss2 = loss_of(m, g2);
            CHECK(loss2 && hyb_graph_backward(g, loss, 1.0f) == HYB_OK);
            CHECK(hyb_model_captured(m, 0, HYB_CAP_BLOCK_OUT, 1) == NULL);
            CHECK(loss2 && hyb_graph_backward(g2, loss2, 1.0f) == HYB_OK);
            CHECK(hyb_model_captured(m, 0, HYB_CAP_BLOCK_OUT, 1) != NULL);
            hyb_model_free(m);
            hyb_graph_free(g);
            break;
        }
        }
        hyb_graph_free(g2);
    }
}

int main(void) {
    RUN(test_args);
    RUN(test_decode);
    RUN(test_lifetimes);
    return harness_done();
}
