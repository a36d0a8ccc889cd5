/* tests/test_comm.c: the communicator (hyb/comm.h) in one process, and the pieces of data
 * parallelism that need no second process (tests/mpi/distill_mpi.lua runs mpirun -np 2):
 *   - the world without a launcher is "single", rank 0 of 1, and its collectives leave buffers
 *     as they are (so a one-process run is the run of before);
 *   - bad arguments are errors naming the call;
 *   - hyb_dataset_batch_rows: the rows of a batch read piecewise equal the whole batch's rows
 *     (what each rank reads is exactly its part of the one-process batch);
 *   - NCCL: libnccl.so.2 loads and every symbol the nccl comm uses resolves (no GPU needed), and
 *     hyb_comm_nccl_new refuses with a clear message without an initialised CUDA backend. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/comm.h"
#include "hyb/data.h"

static void test_single(void) {
    hyb_comm *c = hyb_comm_world();
    CHECK(c != NULL && c == hyb_comm_world());
    CHECK(strcmp(hyb_comm_kind(c), "single") == 0);
    CHECK(hyb_comm_rank(c) == 0 && hyb_comm_size(c) == 1);
    float v[3] = {1.5f, -2.0f, 3.25f};
    CHECK(hyb_comm_allreduce_f32(c, v, 3, HYB_DEV_CPU) == HYB_OK);
    CHECK(v[0] == 1.5f && v[1] == -2.0f && v[2] == 3.25f);
    double d[2] = {7.0, 0.125};
    CHECK(hyb_comm_allreduce_f64(c, d, 2) == HYB_OK && d[0] == 7.0 && d[1] == 0.125);
    hyb_comm_req *r = (hyb_comm_req *)1;
    CHECK(hyb_comm_iallreduce_f32(c, v, 3, &r) == HYB_OK && r == NULL);
    CHECK(hyb_comm_wait(c, r) == HYB_OK);
    char msg[6] = "hello";
    CHECK(hyb_comm_broadcast(c, msg, sizeof msg, 0) == HYB_OK && strcmp(msg, "hello") == 0);
    CHECK(hyb_comm_barrier(c, 1.0) == HYB_OK);
    double old = hyb_comm_set_timeout(c, 5.0);
    CHECK(old > 0 && hyb_comm_set_timeout(c, old) == 5.0);
}

static void test_badargs(void) {
    hyb_comm *c = hyb_comm_world();
    CHECK(hyb_comm_broadcast(c, "x", 1, 1) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "root 1 out of range") != NULL);
    CHECK(hyb_comm_allreduce_f32(c, NULL, 4, HYB_DEV_CPU) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "hyb_comm_allreduce_f32") != NULL);
    CHECK(hyb_comm_allreduce_f32(c, NULL, 0, HYB_DEV_CPU) == HYB_OK); /* nothing to do */
}

static void test_batch_rows(void) {
    char dir[256];
    CHECK(harness_mkdtemp(dir, sizeof dir, "comm") == 0);
    char path[300];
    snprintf(path, sizeof path, "%s/a.txt", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    for (int i = 0; i < 400; i++)
        fprintf(f, "line %d of a small corpus for sharded batches\n", i);
    fclose(f);
    const char *files[] = {path};
    hyb_data_cfg cfg = {.files = files, .n_files = 1, .val_fraction = 0.1, .seed = 3};
    hyb_dataset *d = NULL;
    CHECK(hyb_dataset_open(&cfg, &d) == HYB_OK);
    if (!d) return;
    enum { B = 8, T = 16 };
    int32_t all[B * T], tg[B * T], part[B * T], ptg[B * T];
    for (int64_t step = 0; step < 50; step += 7) {
        CHECK(hyb_dataset_batch(d, HYB_SPLIT_TRAIN, step, B, T, 11, all, tg) == HYB_OK);
        /* world 4, accum 2 (micro-batches of 4 rows): rank r reads rows k*4 + r of each k */
        for (int first = 0; first < B; first += 2) {
            CHECK(hyb_dataset_batch_rows(d, HYB_SPLIT_TRAIN, step, B, first, 2, T, 11, part, ptg) ==
                  HYB_OK);
            CHECK(memcmp(part, all + first * T, sizeof(int32_t) * 2 * T) == 0);
            CHECK(memcmp(ptg, tg + first * T, sizeof(int32_t) * 2 * T) == 0);
        }
    }
    CHECK(hyb_dataset_batch_rows(d, HYB_SPLIT_TRAIN, 0, B, 7, 2, T, 11, part, NULL) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "rows 7..8 are not in a batch of 8") != NULL);
    hyb_dataset_free(d);
    harness_rm_rf(dir);
}

static void test_nccl(void) {
    int v = 0;
    int rc = hyb_comm_nccl_probe(&v);
#ifdef HYB_HAVE_CUDA
    if (rc == HYB_OK) {
        printf("  NCCL %d.%d.%d loaded, every symbol resolved\n", v / 10000, (v / 100) % 100, v % 100);
        CHECK(v >= 20000);
    } else {
        /* a CUDA build on a machine without libnccl: the message says what was tried */
        printf("  NCCL not loadable here: %s\n", hyb_error());
        CHECK(strstr(hyb_error(), "libnccl.so.2") != NULL);
    }
#else
    CHECK(rc == HYB_ERR_UNSUPPORTED && strstr(hyb_error(), "without CUDA") != NULL);
#endif
    hyb_comm *n = (hyb_comm *)1;
    CHECK(hyb_comm_nccl_new(hyb_comm_world(), &n) == HYB_ERR_UNSUPPORTED && n == NULL);
    printf("  hyb_comm_nccl_new without a GPU: %s\n", hyb_error());
}

/* hyb_comm_select_grads, with fake worlds and a fake NCCL maker (no GPU, no MPI needed) */
static int g_made;
static hyb_comm g_fake_nccl = {NULL, "nccl", 0, 2, 600.0, NULL, NULL};
static int maker_ok(hyb_comm *boot, hyb_comm **out) {
    g_made++;
    g_fake_nccl.boot = boot;
    *out = &g_fake_nccl;
    return HYB_OK;
}
static int maker_missing(hyb_comm *boot, hyb_comm **out) {
    (void)boot;
    g_made++;
    *out = NULL;
    return hyb_error_set(HYB_ERR_UNSUPPORTED, "fake: libnccl.so.2 not found (NCCL)");
}

static void test_select_grads(void) {
    hyb_comm mpi = {NULL, "mpi", 1, 2, 600.0, NULL, NULL};
    hyb_comm *single = hyb_comm_world();
    char why[256] = "x";
    /* host gradients: the world, NCCL never tried */
    g_made = 0;
    CHECK(hyb_comm_select_grads(&mpi, HYB_DEV_CPU, maker_ok, why, sizeof why) == &mpi);
    CHECK(g_made == 0 && why[0] == 0);
    /* one process (no launcher): the single world even for CUDA gradients, nothing made */
    CHECK(hyb_comm_select_grads(single, HYB_DEV_CUDA, maker_ok, why, sizeof why) == single);
    CHECK(g_made == 0 && why[0] == 0);
    CHECK(hyb_comm_grads(HYB_DEV_CUDA) == single && hyb_comm_grads(HYB_DEV_CPU) == single);
    /* CUDA gradients under MPI, NCCL loads: the NCCL comm over the world */
    hyb_comm *c = hyb_comm_select_grads(&mpi, HYB_DEV_CUDA, maker_ok, why, sizeof why);
    CHECK(c == &g_fake_nccl && g_fake_nccl.boot == &mpi && g_made == 1 && why[0] == 0);
    /* NCCL missing: the MPI world (host staging), the reason kept for the log */
    g_made = 0;
    c = hyb_comm_select_grads(&mpi, HYB_DEV_CUDA, maker_missing, why, sizeof why);
    CHECK(c == &mpi && g_made == 1);
    CHECK_MSG(strstr(why, "libnccl.so.2 not found") != NULL, "why = '%s'", why);
    CHECK(hyb_comm_select_grads(&mpi, HYB_DEV_CUDA, maker_missing, NULL, 0) == &mpi);
    /* the real maker on this machine (no initialised CUDA backend): refused, the world kept */
    c = hyb_comm_select_grads(&mpi, HYB_DEV_CUDA, NULL, why, sizeof why);
    CHECK(c == &mpi && strstr(why, "hyb_comm_nccl_new") != NULL);
    printf("  NCCL refused here, MPI kept: %s\n", why);
}

int main(void) {
    RUN(test_single);
    RUN(test_select_grads);
    RUN(test_badargs);
    RUN(test_batch_rows);
    RUN(test_nccl);
    return harness_done();
}
