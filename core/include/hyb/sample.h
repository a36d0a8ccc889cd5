/* hyb/sample.h: choosing the next token from logits.
 *
 *   hyb_sampler_params p = hyb_sampler_defaults();   // greedy
 *   p.temperature = 0.7f; p.top_k = 40; p.top_p = 0.9f; p.repetition_penalty = 1.1f;
 *   hyb_sampler *s;
 *   if (hyb_sampler_new(V, &p, 1234, &s) != HYB_OK) { puts(hyb_error()); ... }
 *   int32_t tok = hyb_sampler_sample(s, logits, history, n_history);   // logits: [V]
 *   hyb_sampler_free(s);
 *
 * Semantics follow HF transformers' generate(), in its order:
 *  1. repetition penalty (penalty != 1): for every distinct token in `history`, a positive logit
 *     is divided by the penalty and a negative one multiplied by it;
 *  2. temperature <= 0 (or top_k == 1): greedy, the arg max (lowest index on ties);
 *     otherwise logits / temperature;
 *  3. top-k (k > 0): keep the tokens whose logit is >= the k-th largest (ties kept);
 *  4. top-p (0 < p < 1): keep the smallest set of most probable tokens whose probability mass is
 *     >= p (the most probable token is always kept);
 *  5. draw from the renormalised distribution with the sampler's own RNG (hyb_rng): the same seed
 *     and the same logits give the same tokens on any machine.
 * The caller's logits are never modified.
 */
#ifndef HYB_SAMPLE_H
#define HYB_SAMPLE_H

#include "hyb/common.h"
#include "hyb/tensor.h" /* hyb_rng */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_sampler_params {
    float temperature;        /* [0, 100]; 0: greedy */
    int top_k;                /* >= 0; 0: off */
    float top_p;              /* [0, 1]; 1 (or 0): off */
    float repetition_penalty; /* (0, 100]; 1: off */
} hyb_sampler_params;

typedef struct hyb_sampler {
    hyb_sampler_params p;
    int V;
    hyb_rng rng;
    float *work;   /* [V] scratch: processed logits, then probabilities */
    int32_t *idx;  /* [V] scratch: candidate indices */
    uint8_t *seen; /* [V] scratch: repetition-penalty marks */
} hyb_sampler;

/* Greedy: temperature 0, top_k 0, top_p 1, repetition_penalty 1. */
hyb_sampler_params hyb_sampler_defaults(void);
/* Validates p against the ranges above (a negative temperature or a top_p of 2 is an error, not
 * "off"): HYB_ERR_ARG naming the field, its range and the value. */
int hyb_sampler_new(int V, const hyb_sampler_params *p, uint64_t seed, hyb_sampler **out);
void hyb_sampler_free(hyb_sampler *s);
void hyb_sampler_reseed(hyb_sampler *s, uint64_t seed);

/* The next token (>= 0), or a negative hyb_status (e.g. a history id outside [0, V), or logits
 * that are all -inf/NaN). history: the tokens seen so far (prompt + generated), may be NULL. */
int32_t hyb_sampler_sample(hyb_sampler *s, const float *logits, const int32_t *history,
                           int n_history);
/* The distribution step 5 draws from, written to probs [V] (zeros outside the kept set; one-hot
 * for greedy). Same return codes as hyb_sampler_sample (HYB_OK on success). */
int hyb_sampler_probs(hyb_sampler *s, const float *logits, const int32_t *history, int n_history,
                      float *probs);

/* Is the choice deterministic (temperature <= 0 or top_k == 1: the arg max, no draw)? */
int hyb_sampler_greedy(const hyb_sampler_params *p);
/* The token hyb_sampler_sample picks for these params and logits when its RNG yields u (one
 * hyb_rng_uniform in [0, 1), drawn only when the choice is not greedy; ignored when it is). The
 * reference of the backends' on-device sampling (be->sample, hyb/backend.h). Same return codes. */
int32_t hyb_sample_with(const hyb_sampler_params *p, const float *logits, int V,
                        const int32_t *history, int n_history, float u);

/* Step 1 alone, in place: logits [V]. Each distinct token of history is penalised once. */
int hyb_sample_repetition_penalty(float *logits, int V, const int32_t *history, int n_history,
                                  float penalty);
/* Arg max of x [n] (lowest index on ties; NaN never wins). -1 when n <= 0 or all NaN. */
int32_t hyb_sample_argmax(const float *x, int n);

#ifdef __cplusplus
}
#endif
#endif
