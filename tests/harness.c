#include "harness.h"
#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int harness_checks_failed = 0;
const char *harness_current = "";
static int n_pass = 0, n_fail = 0;

void harness_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "FAIL %s (%s:%d): ", harness_current, file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    harness_checks_failed++;
}

void harness_run(const char *name, void (*fn)(void)) {
    int before = harness_checks_failed;
    harness_current = name;
    fn();
    if (harness_checks_failed == before) {
        n_pass++;
        printf("ok   %s\n", name);
    } else {
        n_fail++;
        printf("FAIL %s\n", name);
    }
    fflush(stdout);
}

int harness_done(void) {
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}

double harness_rel_rms(const float *a, const float *b, long n) {
    double num = 0, den = 0;
    for (long i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (num != num) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

double harness_max_rel(const float *a, const float *b, long n, double floor) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        double s = fabs((double)b[i]);
        if (s < floor) s = floor;
        if (d != d) return INFINITY;
        if (d / s > m) m = d / s;
    }
    return m;
}

void harness_rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            harness_rm_rf(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

char *harness_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (b && len) *len = (size_t)n;
    return b;
}

int harness_mkdtemp(char *dir, size_t cap, const char *tag) {
    snprintf(dir, cap, "%s/hyb_test_%s_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp",
             tag);
    if (mkdtemp(dir)) return 0;
    perror("mkdtemp");
    return -1;
}

const char *harness_sub(const char *dir, const char *name) {
    static char buf[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

const char *harness_data_dir(void) {
    const char *dd = getenv("HYB_TEST_DATA");
    return dd ? dd : "tests/data";
}

const char *harness_data_file(const char *dir, const char *name) {
    static char buf[4][4096];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, sizeof buf[0], "%s/%s/%s", harness_data_dir(), dir, name);
    return b;
}

float harness_frand(unsigned long long *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*state >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

int harness_read_golden(const char *path, int32_t magic, harness_golden *g) {
    memset(g, 0, sizeof *g);
    FILE *f = fopen(path, "rb");
    if (!f) {
        harness_fail(__FILE__, __LINE__, "cannot open %s", path);
        return -1;
    }
    int32_t h[4];
    int ok = fread(h, 4, 4, f) == 4 && h[0] == magic && h[1] > 0 && h[2] > 0 && h[3] > 0 &&
             (int64_t)h[1] * h[2] * h[3] < (1 << 28);
    if (ok) {
        g->b = h[1], g->t = h[2], g->v = h[3];
        size_t n = (size_t)g->b * g->t, nl = n * (size_t)g->v;
        g->ids = malloc(n * sizeof *g->ids);
        g->logits = malloc(nl * sizeof *g->logits);
        ok = g->ids && g->logits && fread(g->ids, 4, n, f) == n &&
             fread(g->logits, 4, nl, f) == nl;
    }
    fclose(f);
    if (ok) return 0;
    harness_fail(__FILE__, __LINE__, "%s: bad header or short file", path);
    harness_golden_free(g);
    return -1;
}

void harness_golden_free(harness_golden *g) {
    free(g->ids);
    free(g->logits);
    g->ids = NULL;
    g->logits = NULL;
}

uint16_t harness_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
