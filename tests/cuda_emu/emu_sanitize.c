/* tests/cuda_emu/emu_sanitize.c: the planted bugs of planted.cu that need a sanitizer, caught by
 * the emulated build. Built twice: emu_asan (-fsanitize=address) and emu_tsan
 * (-fsanitize=thread); the emulator sees the sanitizer in the process and compiles the kernels
 * with it (nvrtc_emu.c), announces its fibers, and models barriers as release/acquire (runtime.c).
 *
 *   emu_asan            run every case below in a child process, check each report (exit 0/1)
 *   emu_asan CASE PLANT ORDER   (the child) run one kernel once
 *
 * AddressSanitizer: bug_off_by_one (reads x[n] of a cuMemAlloc block; the comparison cannot see
 * it, test_emu.c shows) and bug_shared_oob (reads s[64] of a __shared__ float[64]) must be
 * reported with the kernel's name, their correct versions must not. ThreadSanitizer: bug_race and
 * bug_missing_barrier must be reported as data races in every thread order, their correct
 * versions and ok_block_sum (shuffles, shared memory, barriers, atomics) must not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "emu_host.h"

/* the driver keeps module and function handles for the process's life, as a real one does:
 * not leaks worth reporting here */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "detect_leaks=0";
}

static char *slurp(const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", HYB_EMU_TEST_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) exit(2);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) exit(2);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* the child: one launch of one kernel */
static int child(const char *kernel, int plant) {
    emu_open();
    char *src = slurp("planted.cu");
    void *k = emu_build("planted.cu", src, kernel, plant ? "-DPLANT=1" : NULL);
    if (!k) return 2;
    enum { N = 512 };
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i % 7);
    unsigned long long dx = emu_alloc(sizeof x), dy = emu_alloc(sizeof y);
    emu_put(dx, x, sizeof x);
    emu_put(dy, x, sizeof x);
    int n = N;
    void *args[] = {&dx, &dy, &n};
    unsigned g[3] = {4, 1, 1}, b[3] = {128, 1, 1};
    if (strcmp(kernel, "bug_shared_oob") == 0) g[0] = 8, b[0] = 64;
    if (strcmp(kernel, "bug_reuse_barrier") == 0) g[0] = 2, b[0] = 256;
    int rc = emu_launch(k, g, b, 0, args);
    emu_get(y, dy, sizeof y);
    printf("launch %s plant=%d: rc %d\n", kernel, plant, rc);
    return rc == 0 ? 0 : 3;
}

typedef struct {
    const char *kernel;
    int plant;
    const char *order;
    const char *expect; /* text the report must contain; NULL: no report, exit 0 */
} tcase;

static int run_case(const char *self, const tcase *c) {
    char out[] = "/tmp/hyb_emu_sanXXXXXX";
    int fd = mkstemp(out);
    if (fd < 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 1), dup2(fd, 2);
        setenv("HYB_CUDA_EMU_ORDER", c->order, 1);
        char plant[2] = {(char)('0' + c->plant), 0};
        execl(self, self, c->kernel, plant, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    close(fd);
    FILE *f = fopen(out, "rb");
    char *log = calloc(1, 1 << 20);
    size_t n = f ? fread(log, 1, (1 << 20) - 1, f) : 0;
    if (f) fclose(f);
    unlink(out);
    log[n] = '\0';
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    const int reported = strstr(log, "ERROR: AddressSanitizer") || strstr(log, "WARNING: ThreadSanitizer");
    int ok;
    if (c->expect)
        ok = code != 0 && strstr(log, c->expect) && strstr(log, c->kernel);
    else
        ok = code == 0 && !reported;
    printf("%s %-20s %-7s %-7s: %s (exit %d)\n", ok ? "ok  " : "FAIL", c->kernel,
           c->plant ? "planted" : "correct", c->order,
           c->expect ? (ok ? "reported" : "NOT reported") : (reported ? "false report" : "clean"),
           code);
    if (!ok || getenv("HYB_EMU_SAN_VERBOSE")) {
        /* the first lines of the report */
        char *p = log;
        for (int l = 0; l < 30 && p && *p; l++) {
            char *e = strchr(p, '\n');
            printf("    | %.*s\n", e ? (int)(e - p) : (int)strlen(p), p);
            p = e ? e + 1 : NULL;
        }
    }
    free(log);
    return ok;
}

int main(int argc, char **argv) {
    if (argc == 3) return child(argv[1], atoi(argv[2]));
    const char *mode = strstr(argv[0], "tsan") ? "thread" : "address";
    static const char *const orders[] = {"forward", "reverse", "random"};
    tcase cases[32];
    int nc = 0;
    if (strcmp(mode, "address") == 0) {
        for (int o = 0; o < 3; o++) {
            cases[nc++] = (tcase){"bug_off_by_one", 1, orders[o], "heap-buffer-overflow"};
            cases[nc++] = (tcase){"bug_shared_oob", 1, orders[o], "use-after-poison"};
        }
        cases[nc++] = (tcase){"bug_off_by_one", 0, "forward", NULL};
        cases[nc++] = (tcase){"bug_shared_oob", 0, "forward", NULL};
        cases[nc++] = (tcase){"ok_block_sum", 0, "random", NULL};
    } else {
        for (int o = 0; o < 3; o++) {
            cases[nc++] = (tcase){"bug_race", 1, orders[o], "data race"};
            cases[nc++] = (tcase){"bug_missing_barrier", 1, orders[o], "data race"};
            cases[nc++] = (tcase){"ok_block_sum", 0, orders[o], NULL};
        }
        cases[nc++] = (tcase){"bug_reuse_barrier", 1, "forward", "data race"};
        cases[nc++] = (tcase){"bug_reuse_barrier", 0, "random", NULL};
        cases[nc++] = (tcase){"bug_race", 0, "random", NULL};
        cases[nc++] = (tcase){"bug_missing_barrier", 0, "random", NULL};
    }
    int failed = 0;
    for (int i = 0; i < nc; i++) failed += !run_case(argv[0], &cases[i]);
    printf("%s: %d cases, %d failed\n", mode, nc, failed);
    return failed ? 1 : 0;
}
