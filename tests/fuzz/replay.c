/* tests/fuzz/replay.c: a plain driver for the libFuzzer targets in tests/fuzz/, so that ctest
 * exercises them with any compiler (no clang, no libFuzzer). Linked with one fuzz_<name>.c, it
 * feeds LLVMFuzzerTestOneInput each input file and, for each, a fixed set of variants:
 *   - the input itself;
 *   - 8 truncations (the first k/8 of it, k = 0..7: cut headers, lengths, strings);
 *   - 64 copies with one byte changed at a pseudo-random position (a fixed LCG, so every run
 *     tests the same inputs).
 * A target that finds a bug calls abort() (or ASan/UBSan report it in a sanitizer build); a run
 * that returns prints "N inputs" and exits 0.
 *
 *   fuzz_<name>_replay [--prefix=BYTE] PATH...
 *
 * PATH is a file or a directory (its regular files, in name order). --prefix=BYTE prepends that
 * byte (0..255) to every input: fuzz_tokenizer's first byte picks its mode.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int prefix = -1;
static long n_run;

static void run(const uint8_t *data, size_t size) {
    LLVMFuzzerTestOneInput(data, size);
    n_run++;
}

static void run_variants(const uint8_t *data, size_t size) {
    size_t off = prefix >= 0 ? 1 : 0; /* never mutate or cut the mode byte */
    run(data, size);
    if (size <= off) return;
    size_t body = size - off;
    for (int k = 0; k < 8; k++)
        run(data, off + body * (size_t)k / 8);
    uint8_t *m = malloc(size);
    if (!m) return;
    uint64_t s = 0x9e3779b97f4a7c15ull ^ size;
    for (int i = 0; i < 64; i++) {
        memcpy(m, data, size);
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        size_t at = off + (size_t)(s >> 33) % body;
        m[at] ^= (uint8_t)(1u + (s >> 20) % 255u); /* never 0: always a change */
        run(m, size);
    }
    free(m);
}

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    if (buf && prefix >= 0) buf[n++] = (uint8_t)prefix;
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(buf);
        return -1;
    }
    run_variants(buf, n);
    free(buf);
    return 0;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int replay_path(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: no such file or directory: %s\n", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return replay_file(path);
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "replay: cannot open directory %s\n", path);
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char **nn = realloc(names, (n + 1) * sizeof *names);
        if (!nn || !(nn[n] = malloc(strlen(path) + strlen(e->d_name) + 2))) {
            names = nn ? nn : names;
            rc = -1;
            break;
        }
        names = nn;
        sprintf(names[n], "%s/%s", path, e->d_name);
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 0; i < n; i++) {
        struct stat fs;
        if (rc == 0 && stat(names[i], &fs) == 0 && S_ISREG(fs.st_mode)) rc = replay_file(names[i]);
        free(names[i]);
    }
    free(names);
    return rc;
}

int main(int argc, char **argv) {
    int n_paths = 0;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--prefix=", 9) == 0) {
            char *end;
            long v = strtol(argv[i] + 9, &end, 0);
            if (*end || end == argv[i] + 9 || v < 0 || v > 255) {
                fprintf(stderr, "replay: --prefix needs a byte value 0..255, got '%s'\n",
                        argv[i] + 9);
                return 2;
            }
            prefix = (int)v;
            continue;
        }
        if (replay_path(argv[i]) != 0) return 1;
        n_paths++;
    }
    if (n_paths == 0) {
        fprintf(stderr, "usage: %s [--prefix=BYTE] PATH...\n", argv[0]);
        return 2;
    }
    printf("%ld inputs, no failure\n", n_run);
    return 0;
}
