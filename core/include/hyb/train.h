/* hyb/train.h: the distillation pieces (SPEC.md section 5): learning-rate schedule, parameter
 * freezing, model clone, the mixed distillation loss, a trainer with gradient accumulation, and
 * one-file training checkpoints. (Model clone: hyb_model_clone in hyb/model.h.)
 *
 *   hyb_model *teacher;  hyb_model_load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", &teacher);
 *   hyb_model *student;  hyb_model_clone(teacher, &student);     // params copied
 *   hyb_model_swap(student, 3, "mamba1", NULL, 1, 7);             // MIL init from attention
 *   hyb_trainer_cfg cfg;  hyb_trainer_cfg_default(&cfg);          // reverse KL, T = 1
 *   cfg.sched = (hyb_lr_sched){.lr_max = 3e-4f, .lr_min = 3e-5f, .warmup = 100, .total = 2000};
 *   cfg.accum = 4;
 *   hyb_trainer *tr;  hyb_trainer_new(student, teacher, &cfg, &tr);
 *   for (...) hyb_trainer_step(tr, ids, targets, NULL, B, T, &stats);  // ids [accum*B*T]
 *   hyb_trainer_save(tr, "run/ckpt.safetensors", 1, keys, vals);      // atomic
 *   ... after a kill: hyb_trainer_load(tr, "run/ckpt.safetensors", &meta) continues bitwise.
 *
 * Ownership: a trainer borrows its student and teacher (they must outlive it) and owns its
 * optimiser and graphs. The student's layer structure must not change while a trainer uses it
 * (a swap makes the trainer's optimiser stale: hyb_trainer_step refuses with an error).
 */
#ifndef HYB_TRAIN_H
#define HYB_TRAIN_H

#include "hyb/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- learning-rate schedule ---------------------------------------------------------------------
 * Linear warmup then cosine decay to a floor. For the optimiser update number `step` (0-based):
 *   step < warmup:  lr_max * (step + 1) / warmup
 *   else:           p = min(1, (step - warmup) / max(1, total - warmup - 1))
 *                   lr_min + (lr_max - lr_min) * (1 + cos(pi p)) / 2
 * so the first update after warmup uses lr_max and update total-1 uses lr_min (and so do later
 * ones). total <= 0: constant lr_max after warmup. */
typedef struct hyb_lr_sched {
    float lr_max, lr_min;
    int64_t warmup, total;
} hyb_lr_sched;
float hyb_lr_at(const hyb_lr_sched *s, int64_t step);

/* ---- parameter groups ---------------------------------------------------------------------------
 * Freeze (frozen = 1) or unfreeze every parameter whose HF name matches the glob `pattern`
 * (fnmatch: `*` matches any run of characters, dots included; e.g. "model.layers.3.*",
 * "*.mlp.*", "model.embed_tokens.weight"). A frozen parameter has requires_grad = 0: the graph
 * computes no gradient for it and AdamW skips it. Returns the number of parameters matched (0 is
 * not an error). A swap re-creates the swapped layer's mixer parameters unfrozen. */
int hyb_model_freeze(hyb_model *m, const char *pattern, int frozen);
int hyb_model_n_frozen(const hyb_model *m);

/* (hyb_model_clone, the student's starting point, is in hyb/model.h.) */

/* ---- the distillation loss ----------------------------------------------------------------------
 * loss = w_rkl * KL(student || teacher) + w_fkl * KL(teacher || student) + w_ce * CE(targets),
 * each the mean over the masked tokens (hyb_kl_reverse / hyb_kl_forward / hyb_cross_entropy);
 * terms with weight 0 are not computed. */
typedef struct hyb_distill_loss {
    float w_rkl, w_fkl, w_ce;
    float temperature; /* teacher logits / T (SPEC.md section 5) */
} hyb_distill_loss;

/* The three terms and their weighted sum as one scalar node of g.
 * student: [B, T, V] (g's), teacher: [B, T, V] constant (any graph; NULL when w_rkl = w_fkl = 0),
 * targets: [B*T] (NULL when w_ce = 0), mask: [B*T] weights or NULL.
 * parts (may be NULL) gets {rkl, fkl, ce}, NAN for terms not computed. Returns [1] or NULL. */
hyb_tensor *hyb_distill_loss_apply(hyb_graph *g, const hyb_distill_loss *cfg, hyb_tensor *student,
                                   hyb_tensor *teacher, const int32_t *targets, const float *mask,
                                   float parts[3]);

/* ---- trainer
 * ------------------------------------------------------------------------------------*/
typedef struct hyb_trainer_cfg {
    hyb_lr_sched sched;
    float weight_decay, beta1, beta2, eps;
    float clip; /* global-norm clip, <= 0: none */
    int accum;  /* micro-batches per optimiser step (>= 1) */
    hyb_distill_loss loss;
} hyb_trainer_cfg;

/* lr 3e-4 -> 3e-5, no warmup, constant; wd 0.1, betas (0.9, 0.95), eps 1e-8, clip 1.0, accum 1,
 * pure reverse KL at T = 1 (the Apriel-H1 recipe). */
void hyb_trainer_cfg_default(hyb_trainer_cfg *c);

struct hyb_comm;

typedef struct hyb_trainer {
    hyb_trainer_cfg cfg;
    struct hyb_comm *comm;        /* data parallel (hyb_trainer_set_comm); NULL: one process */
    size_t bucket_bytes;          /* gradient all-reduce bucket (default 25 MB) */
    int comm_profile;             /* 1: a barrier before the gradient all-reduce, timed apart
                                     (wait_s: the ranks' imbalance; comm_s: the reduction) */
    int overlap;                  /* 1 (default; HYB_COMM_OVERLAP=0: 0): host buckets start from
                                     the last backward's gradient-ready hook, not after it */
    hyb_model *student, *teacher; /* borrowed */
    hyb_adamw *opt;               /* owned */
    hyb_graph *g, *tg;            /* student (tape) and teacher (no grad) graphs */
    uint64_t generation;          /* student->generation when made */
    int64_t step;                 /* optimiser updates done */
    int64_t tokens;               /* tokens seen (masked weight not applied) */
} hyb_trainer;

typedef struct hyb_train_stats {
    double loss;      /* weighted loss, averaged over the micro-batches by token weight */
    double parts[3];  /* rkl, fkl, ce (NAN when not computed) */
    double grad_norm; /* before clipping */
    double lr;        /* the lr used for this update */
    int64_t step;     /* update number just done (1-based) */
    int skipped;      /* 1: non-finite gradient, no update (step still counts) */
    double comm_s;    /* seconds in the gradient/loss all-reduce (0 for one process) */
    double wait_s;    /* comm_profile: seconds waiting for the slowest rank before it */
} hyb_train_stats;

/* teacher may be NULL when the loss is pure CE (w_rkl = w_fkl = 0). The student and teacher must
 * have the same vocabulary. */
int hyb_trainer_new(hyb_model *student, hyb_model *teacher, const hyb_trainer_cfg *cfg,
                    hyb_trainer **out);
void hyb_trainer_free(hyb_trainer *t);

/* Learning-rate groups: every student parameter whose HF name matches the glob `pattern` (as
 * hyb_model_freeze) is updated with lr * scale from now on (hyb_adamw_set_lr_scale); calls apply
 * in order, so a later pattern overrides an earlier one. Returns the number of parameters matched
 * (0 is not an error), or a negative status for a bad scale (finite, >= 0). E.g. the swapped-in
 * mixers at the schedule's lr and everything else 100x slower:
 *   hyb_trainer_lr_scale(t, "*", 0.01f); hyb_trainer_lr_scale(t, "model.layers.*.mixer.*", 1); */
int hyb_trainer_lr_scale(hyb_trainer *t, const char *pattern, float scale);

/* Data parallel (docs/DISTRIBUTED.md): every rank runs its own trainer on its own rows of the
 * global batch, and hyb_trainer_step sums the gradients over the ranks of `comm` (bucketed, last
 * layers first, each bucket's MPI_Iallreduce in flight while the next is packed) before the clip
 * and AdamW, which then run identically everywhere. The micro-batch shares are taken over the
 * global mask weight (one small all-reduce), so W ranks with B/W rows each equal one process with
 * B rows up to the order of the float sums; the loss and parts in the stats are the global ones,
 * tokens counts the global batch. comm NULL or of size 1: exactly the one-process step.
 * bucket_mb <= 0 keeps the default (25, or HYB_COMM_BUCKET_MB). */
void hyb_trainer_set_comm(hyb_trainer *t, struct hyb_comm *comm, double bucket_mb);

/* One optimiser update over cfg.accum micro-batches of B sequences of T tokens:
 * ids, targets: [accum * B * T] (targets may be NULL when w_ce = 0), mask [accum * B * T] or NULL.
 * Each micro-batch's backward is scaled by its share of the total mask weight, so accum k x
 * batch B equals one batch of k*B. Then clip, lr = hyb_lr_at(step), AdamW. */
int hyb_trainer_step(hyb_trainer *t, const int32_t *ids, const int32_t *targets, const float *mask,
                     int B, int T, hyb_train_stats *st);
/* The loss terms without a tape (held-out evaluation): all three are computed whenever their
 * inputs are there (KLs need a teacher, CE needs targets). parts as in hyb_distill_loss_apply;
 * *loss = the configured weighted sum. */
int hyb_trainer_eval(hyb_trainer *t, const int32_t *ids, const int32_t *targets, const float *mask,
                     int B, int T, double *loss, double parts[3]);

/* ---- checkpoints --------------------------------------------------------------------------------
 * One safetensors file, written atomically (tmp + fsync + rename): every student parameter under
 * its HF name (f32), the AdamW moments as "<name>.exp_avg" / "<name>.exp_avg_sq" under an
 * "optimizer." prefix, and in __metadata__: "hyb_checkpoint" = "train-1", "step", "tokens",
 * "hyb_layermap" (the student's layer map TOML), "frozen" (names, one per line), the optimiser's
 * hyper-parameters, plus the caller's n_meta key/value pairs (data position, RNG, stage ...;
 * keys must not start with "hyb_" or clash with the above). */
int hyb_trainer_save(hyb_trainer *t, const char *path, int n_meta, const char *const *keys,
                     const char *const *vals);

/* Lean and final checkpoints (hyb_trainer_save_ex):
 *   base != NULL: a lean checkpoint: only the trainable parameters (requires_grad) and their
 *     moments; the frozen ones are those of `base` (a .gguf, a model directory or another
 *     checkpoint), recorded with its content hash (hyb_file_hash) as "hyb_base" and
 *     "hyb_base_hash". hyb_trainer_load leaves the frozen parameters as the student has them (the
 *     caller built it from the base); hyb_model_from_checkpoint_base takes them from the base.
 *   no_optimizer: no moments ("hyb_optimizer" = "0"): a model snapshot (a stage's final), which
 *     hyb_trainer_load refuses. */
typedef struct hyb_ckpt_opts {
    const char *base;      /* the base's path as recorded (NULL: a full checkpoint) */
    const char *base_hash; /* its hyb_file_hash (required with base) */
    int no_optimizer;
} hyb_ckpt_opts;
int hyb_trainer_save_ex(hyb_trainer *t, const char *path, const hyb_ckpt_opts *o, int n_meta,
                        const char *const *keys, const char *const *vals);

/* Content hash of a file, or of a directory's regular files (names and bytes, sorted by name,
 * not recursive): 16 hex digits (FNV-1a 64) into out[17]. */
int hyb_file_hash(const char *path, char out[17]);

/* Key/value metadata read back from a checkpoint (all of its __metadata__). */
typedef struct hyb_ckpt_meta {
    int n;
    char **keys, **vals;
} hyb_ckpt_meta;
const char *hyb_ckpt_meta_get(const hyb_ckpt_meta *m, const char *key); /* NULL if absent */
void hyb_ckpt_meta_free(hyb_ckpt_meta *m);

/* Restore the student's parameters, the optimiser's moments and step, the frozen flags and the
 * token count from a checkpoint of a student with the same parameters (names and shapes; errors
 * name the tensor and both shapes, and nothing is changed unless every check passes). meta (may
 * be NULL) receives the metadata; free with hyb_ckpt_meta_free. */
int hyb_trainer_load(hyb_trainer *t, const char *path, hyb_ckpt_meta *meta);

/* Build the model stored in a training checkpoint (its layer map + parameters). A lean one needs
 * its base: hyb_model_from_checkpoint_base, with the base model already loaded (the parameters
 * the file lacks are copied from it by name; the caller checks the base's hash). */
int hyb_model_from_checkpoint(const char *path, hyb_model **out);
int hyb_model_from_checkpoint_base(const char *path, const hyb_model *base, hyb_model **out);
/* Read only the metadata of a checkpoint. */
int hyb_ckpt_read_meta(const char *path, hyb_ckpt_meta *meta);

#ifdef __cplusplus
}
#endif
#endif
