/* core/backend/cuda/emu/nvrtc_emu.c: the NVRTC calls of core/backend/cuda served by the host C++
 * compiler. A program's source is rewritten (below), compiled with
 *     $HYB_CUDA_EMU_CXX -std=c++17 -O1 -g -fPIC -shared -I<emu include> -include hyb_cuda_emu.h
 *       -DHYB_CUDA_EMU=1 -D__CUDA_ARCH__=<arch>0 [the program's -D/-U/-I] [-fsanitize=...]
 * into ${HYB_CACHE:-~/.cache/hyb}/kernels-emu/<key>.so (key: FNV-1a 64 of the rewritten source,
 * the flags, the emulation headers and the compiler; a cached .so is reused, HYB_KERNEL_CACHE=0
 * rebuilds), and the "CUBIN" it returns is a small image naming that .so (cuModuleLoadData of
 * driver.c loads it). The rewritten source stays next to the .so as <key>.cu, with the original
 * line numbers, so debuggers and sanitizer reports point into it.
 *
 * The rewrite: `__shared__ T name[N];` -> `auto &name = ::hyb_emu_shared<T[N], id>();` (a
 * per-block arena, runtime.c), `extern __shared__ T name[];` -> a pointer to the block's dynamic
 * shared memory (a #define at namespace scope), and `HYB_EMU_KERNEL(k)` appended for every
 * `__global__` function k (its entry point for cuModuleGetFunction). Template kernels are not
 * registered (there is no name-expression support).
 *
 * The sanitizer flag follows the process (a module built with -fsanitize=thread only loads into
 * a ThreadSanitizer process): it is picked from the running process unless
 * HYB_CUDA_EMU_SANITIZE=none|address|thread says otherwise. HYB_CUDA_EMU_CXXFLAGS adds flags.
 * The reported NVRTC version is 0.<ABI><sanitizer>, so the backend's cache keys never collide
 * with a real NVRTC's, nor an ASan build's with a plain one's. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <nvrtc.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "emu_internal.h"

extern char **environ;

#ifndef HYB_CUDA_EMU_INCLUDE
#define HYB_CUDA_EMU_INCLUDE "core/backend/cuda/emu/include"
#endif
#ifndef HYB_CUDA_EMU_DEFAULT_CXX
#define HYB_CUDA_EMU_DEFAULT_CXX "g++"
#endif

struct _nvrtcProgram {
    char *src, *name;
    char *log;
    hyb_emu_image img;
    int compiled;
};

/* ---- small helpers ------------------------------------------------------------------------- */
typedef struct {
    char *p;
    size_t n, cap;
} sbuf;
static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + n + 1) nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q) abort();
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}
static void sb_str(sbuf *b, const char *s) {
    sb_add(b, s, strlen(s));
}
static void sb_fmt(sbuf *b, const char *fmt, ...) {
    char tmp[2048];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k > 0) sb_add(b, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}
static uint64_t fnv(uint64_t h, const void *d, size_t n) {
    const unsigned char *p = d;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
static int is_id(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}
static char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    sbuf b = {0};
    char tmp[8192];
    size_t k;
    while ((k = fread(tmp, 1, sizeof tmp, f)) > 0) sb_add(&b, tmp, k);
    fclose(f);
    if (!b.p) sb_add(&b, "", 0);
    if (n) *n = b.n;
    return b.p;
}
static int write_atomic(const char *path, const char *data, size_t n) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}
static int mkdir_p(const char *dir) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

int hyb_emu_cache_dir(char *buf, size_t n) {
    const char *c = getenv("HYB_CACHE");
    int k;
    if (c && *c) k = snprintf(buf, n, "%s/kernels-emu", c);
    else {
        const char *home = getenv("HOME");
        if (!home || !*home) home = "/tmp";
        k = snprintf(buf, n, "%s/.cache/hyb/kernels-emu", home);
    }
    return k > 0 && (size_t)k < n;
}

/* ---- the source rewrite -------------------------------------------------------------------- */
static void trim(const char **s, const char **e) {
    while (*s < *e && (**s == ' ' || **s == '\t' || **s == '\n' || **s == '\r')) (*s)++;
    while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\n' || (*e)[-1] == '\r'))
        (*e)--;
}
/* drop a trailing keyword (extern, static) from the output; 1 when it was there */
static int drop_tail_word(sbuf *o, const char *w) {
    size_t k = o->n;
    while (k > 0 && (o->p[k - 1] == ' ' || o->p[k - 1] == '\t' || o->p[k - 1] == '\n')) k--;
    size_t wl = strlen(w);
    if (k < wl || memcmp(o->p + k - wl, w, wl) != 0) return 0;
    if (k > wl && is_id((unsigned char)o->p[k - wl - 1])) return 0;
    o->n = k - wl;
    o->p[o->n] = '\0';
    return 1;
}

static char tail_char(const sbuf *o) {
    size_t k = o->n;
    while (k > 0 && (o->p[k - 1] == ' ' || o->p[k - 1] == '\t' || o->p[k - 1] == '\n')) k--;
    return k ? o->p[k - 1] : '\0';
}

/* returns the rewritten source (caller frees) or NULL with a message in err */
static char *rewrite(const char *src, char *err, size_t nerr) {
    sbuf o = {0}, kernels = {0};
    const char *p = src;
    int depth = 0, line = 1, next_id = 0;
    sb_str(&o, "#line 1\n");
    while (*p) {
        if (p[0] == '/' && p[1] == '/') {
            const char *q = strchr(p, '\n');
            if (!q) q = p + strlen(p);
            sb_add(&o, p, (size_t)(q - p));
            p = q;
            continue;
        }
        if (p[0] == '/' && p[1] == '*') {
            const char *q = strstr(p + 2, "*/");
            q = q ? q + 2 : p + strlen(p);
            for (const char *c = p; c < q; c++) line += *c == '\n';
            sb_add(&o, p, (size_t)(q - p));
            p = q;
            continue;
        }
        if (*p == '"' || *p == '\'') {
            const char quote = *p;
            const char *q = p + 1;
            while (*q && *q != quote) q += (*q == '\\' && q[1]) ? 2 : 1;
            if (*q) q++;
            sb_add(&o, p, (size_t)(q - p));
            p = q;
            continue;
        }
        if (*p == '\n') line++;
        if (*p == '{') depth++;
        if (*p == '}') depth--;
        if (!is_id((unsigned char)*p) || (p > src && is_id((unsigned char)p[-1]))) {
            sb_add(&o, p, 1);
            p++;
            continue;
        }
        const char *id = p;
        while (is_id((unsigned char)*p)) p++;
        const size_t idn = (size_t)(p - id);
        if (idn == 10 && memcmp(id, "__global__", 10) == 0) {
            /* the kernel's name: the identifier before the first '(' that is not
             * __launch_bounds__'s */
            const char *q = p, *name = NULL;
            size_t nn = 0;
            int templ = tail_char(&o) == '>'; /* template<...> __global__: not registered */
            while (*q && *q != ';' && *q != '{') {
                if (is_id((unsigned char)*q)) {
                    const char *s = q;
                    while (is_id((unsigned char)*q)) q++;
                    if ((size_t)(q - s) == 17 && memcmp(s, "__launch_bounds__", 17) == 0) {
                        while (*q && *q != '(') q++;
                        int d = 0;
                        for (; *q; q++) {
                            if (*q == '(') d++;
                            if (*q == ')' && --d == 0) {
                                q++;
                                break;
                            }
                        }
                        continue;
                    }
                    name = s;
                    nn = (size_t)(q - s);
                    continue;
                }
                if (*q == '(') break;
                q++;
            }
            if (name && *q == '(' && !templ && nn < 200) {
                char nm[256];
                memcpy(nm, name, nn);
                nm[nn] = '\0';
                char pat[300];
                snprintf(pat, sizeof pat, "HYB_EMU_KERNEL(%s)\n", nm);
                if (!kernels.p || !strstr(kernels.p, pat)) sb_str(&kernels, pat);
            }
            sb_add(&o, id, idn);
            continue;
        }
        if (!(idn == 10 && memcmp(id, "__shared__", 10) == 0)) {
            sb_add(&o, id, idn);
            continue;
        }
        /* a __shared__ declaration up to its ';' */
        const int is_extern = drop_tail_word(&o, "extern");
        drop_tail_word(&o, "static");
        const char *semi = strchr(p, ';');
        if (!semi) {
            snprintf(err, nerr, "line %d: __shared__ declaration without ';'", line);
            free(o.p), free(kernels.p);
            return NULL;
        }
        const char *ds = p, *de = semi;
        int nl = 0;
        for (const char *c = ds; c < de; c++) nl += *c == '\n';
        trim(&ds, &de);
        /* drop __align__(n) (every shared variable is 16-byte aligned here) */
        char decl[1024];
        size_t dn = 0;
        for (const char *c = ds; c < de && dn + 1 < sizeof decl;) {
            if (strncmp(c, "__align__", 9) == 0 && (c == ds || !is_id((unsigned char)c[-1]))) {
                const char *q = strchr(c, ')');
                c = q && q < de ? q + 1 : de;
                continue;
            }
            decl[dn++] = *c == '\n' ? ' ' : *c;
            c++;
        }
        decl[dn] = '\0';
        /* name: the last identifier before the first '[' (or the end) */
        char *br = strchr(decl, '[');
        char *end = br ? br : decl + dn;
        char *ne = end;
        while (ne > decl && (ne[-1] == ' ' || ne[-1] == '\t')) ne--;
        char *ns = ne;
        while (ns > decl && is_id((unsigned char)ns[-1])) ns--;
        int commas = 0, nest = 0; /* a comma outside <...>, (...), [...]: several declarators */
        for (const char *c = decl; *c; c++) {
            nest += (*c == '<' || *c == '(' || *c == '[') - (*c == '>' || *c == ')' || *c == ']');
            commas += *c == ',' && nest == 0;
        }
        if (ns == ne || ns == decl || commas || strchr(decl, '=')) {
            snprintf(err, nerr,
                     "line %d: cannot emulate the __shared__ declaration `%.200s` (one variable "
                     "per declaration, no initialiser)",
                     line, decl);
            free(o.p), free(kernels.p);
            return NULL;
        }
        char name[256], type[512], ext[256];
        snprintf(name, sizeof name, "%.*s", (int)(ne - ns), ns);
        snprintf(type, sizeof type, "%.*s", (int)(ns - decl), decl);
        snprintf(ext, sizeof ext, "%s", br ? br : "");
        line += nl;
        if (is_extern) {
            if (depth > 0)
                sb_fmt(&o, "%s *const %s = (%s *)::hyb_emu_dyn_shared();", type, name, type);
            else
                sb_fmt(&o, "\n#define %s ((%s *)::hyb_emu_dyn_shared())\n#line %d\n", name, type,
                       line);
        } else {
            if (depth > 0)
                sb_fmt(&o, "auto &%s = ::hyb_emu_shared<%s %s, %d>();", name, type, ext, next_id++);
            else
                sb_fmt(&o, "\n#define %s (::hyb_emu_shared<%s %s, %d>())\n#line %d\n", name, type,
                       ext, next_id++, line);
        }
        if (nl && depth > 0) sb_fmt(&o, "\n#line %d\n", line);
        p = semi + 1;
    }
    sb_str(&o, "\n/* added by the emulated compiler: one entry per __global__ function */\n");
    if (kernels.p) sb_str(&o, kernels.p);
    free(kernels.p);
    return o.p;
}

/* ---- compiling ----------------------------------------------------------------------------- */
static const char *const g_headers[] = {"hyb_cuda_emu.h", "hyb_emu_abi.h", "hyb_emu_half.h",
                                        "cuda_fp16.h",    "cuda_bf16.h",   "mma.h"};

static const char *include_dir(void) {
    const char *e = getenv("HYB_CUDA_EMU_INCLUDE");
    return e && *e ? e : HYB_CUDA_EMU_INCLUDE;
}
const char *hyb_emu_sanitize_mode(void) {
    const char *e = getenv("HYB_CUDA_EMU_SANITIZE");
    if (e && *e) return strcmp(e, "none") == 0 ? "" : e;
    return hyb_emu_sanitizer();
}

/* run argv[0] with argv, stdout+stderr into log; returns the exit status (-1: not run) */
static int run(char *const *argv, const char *logpath) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return -1;
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void set_log(nvrtcProgram prog, const char *fmt, ...) {
    char tmp[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    free(prog->log);
    prog->log = strdup(tmp);
}

nvrtcResult nvrtcCompileProgram(nvrtcProgram prog, int nopts, const char *const *opts) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    if (nopts < 0 || (nopts > 0 && !opts)) return NVRTC_ERROR_INVALID_INPUT;
    char err[512] = "";
    char *src = rewrite(prog->src, err, sizeof err);
    if (!src) {
        set_log(prog, "%s: emulation: %s\n", prog->name, err);
        return NVRTC_ERROR_COMPILATION;
    }
    const char *cxx = getenv("HYB_CUDA_EMU_CXX");
    if (!cxx || !*cxx) cxx = HYB_CUDA_EMU_DEFAULT_CXX;
    const char *inc = include_dir();
    const char *san = hyb_emu_sanitize_mode();
    /* argv */
    const char *argv[128];
    int na = 0;
    char incopt[4200], archdef[64] = "-D__CUDA_ARCH__=800", stdopt[32] = "-std=c++17";
    snprintf(incopt, sizeof incopt, "-I%s", inc);
    for (int i = 0; i < nopts; i++) {
        const char *o = opts[i];
        if (strncmp(o, "--gpu-architecture=", 19) == 0 || strncmp(o, "-arch=", 6) == 0) {
            const char *a = strchr(o, '_');
            if (a) snprintf(archdef, sizeof archdef, "-D__CUDA_ARCH__=%d0", atoi(a + 1));
        } else if (strncmp(o, "--std=", 6) == 0 || strncmp(o, "-std=", 5) == 0) {
            snprintf(stdopt, sizeof stdopt, "-std=%s", strchr(o, '=') + 1);
        }
    }
    argv[na++] = cxx;
    argv[na++] = stdopt;
    argv[na++] = "-O1";
    argv[na++] = "-g";
    argv[na++] = "-fPIC";
    argv[na++] = "-shared";
    /* bind the module's own symbols inside it: a kernel named like a function the host process
     * exports (the hyb binary exports hyb_rope, the graph op, for its plugins) would otherwise
     * be interposed, and the kernel's entry would call the host's function */
    argv[na++] = "-Wl,-Bsymbolic";
    argv[na++] = "-ffp-contract=off";
    argv[na++] = "-fno-strict-aliasing";
    argv[na++] = incopt;
    argv[na++] = "-include";
    argv[na++] = "hyb_cuda_emu.h";
    argv[na++] = "-DHYB_CUDA_EMU=1";
    argv[na++] = archdef;
    for (int i = 0; i < nopts && na < 100; i++) {
        const char *o = opts[i];
        if (o[0] == '-' && (o[1] == 'D' || o[1] == 'U' || o[1] == 'I')) argv[na++] = o;
    }
    if (strcmp(san, "address") == 0) {
        argv[na++] = "-fsanitize=address";
        argv[na++] = "-fno-omit-frame-pointer";
    } else if (strcmp(san, "thread") == 0) {
        argv[na++] = "-fsanitize=thread";
        argv[na++] = "-fno-omit-frame-pointer";
    }
    /* extra flags, split on spaces */
    char extra[1024] = "";
    const char *ex = getenv("HYB_CUDA_EMU_CXXFLAGS");
    if (ex) snprintf(extra, sizeof extra, "%s", ex);
    for (char *tok = strtok(extra, " "); tok && na < 120; tok = strtok(NULL, " ")) argv[na++] = tok;
    /* the key */
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, src, strlen(src) + 1);
    for (int i = 0; i < na; i++) h = fnv(h, argv[i], strlen(argv[i]) + 1);
    for (size_t i = 0; i < sizeof g_headers / sizeof *g_headers; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", inc, g_headers[i]);
        size_t n = 0;
        char *t = read_all(path, &n);
        if (!t) {
            set_log(prog, "%s: emulation header %s not found (set HYB_CUDA_EMU_INCLUDE)\n",
                    prog->name, path);
            free(src);
            return NVRTC_ERROR_COMPILATION;
        }
        h = fnv(h, t, n);
        free(t);
    }
    char dir[4000], key[24], cu[4100], so[4100], log[4100], tmpso[4200];
    if (!hyb_emu_cache_dir(dir, sizeof dir) || mkdir_p(dir) != 0) {
        set_log(prog, "%s: cannot create the emulation cache %s\n", prog->name, dir);
        free(src);
        return NVRTC_ERROR_COMPILATION;
    }
    snprintf(key, sizeof key, "%016llx", (unsigned long long)h);
    snprintf(cu, sizeof cu, "%s/%s.cu", dir, key);
    snprintf(so, sizeof so, "%s/%s.so", dir, key);
    snprintf(log, sizeof log, "%s/%s.log.%d", dir, key, (int)getpid());
    snprintf(tmpso, sizeof tmpso, "%s/%s.so.tmp.%d", dir, key, (int)getpid());
    const char *kc = getenv("HYB_KERNEL_CACHE");
    struct stat st;
    int cached = !(kc && strcmp(kc, "0") == 0) && stat(so, &st) == 0 && st.st_size > 0;
    nvrtcResult res = NVRTC_SUCCESS;
    if (!cached) {
        if (write_atomic(cu, src, strlen(src)) != 0) {
            set_log(prog, "%s: cannot write %s\n", prog->name, cu);
            free(src);
            return NVRTC_ERROR_COMPILATION;
        }
        argv[na++] = "-x";
        argv[na++] = "c++";
        argv[na++] = cu;
        argv[na++] = "-o";
        argv[na++] = tmpso;
        argv[na] = NULL;
        int rc = run((char *const *)argv, log);
        char *text = read_all(log, NULL);
        unlink(log);
        if (rc != 0 || rename(tmpso, so) != 0) {
            unlink(tmpso);
            sbuf b = {0};
            sb_fmt(&b, "%s: the emulated build (%s) failed (exit %d):\n", prog->name, cxx, rc);
            sb_str(&b, text ? text : "(no output)");
            free(text);
            free(prog->log);
            prog->log = b.p;
            res = NVRTC_ERROR_COMPILATION;
        } else {
            free(prog->log);
            prog->log = text ? text : strdup("");
        }
    } else {
        set_log(prog, "%s: emulated build %s (cached)\n", prog->name, so);
    }
    free(src);
    if (res != NVRTC_SUCCESS) return res;
    memset(&prog->img, 0, sizeof prog->img);
    memcpy(prog->img.magic, HYB_EMU_IMAGE_MAGIC, 8);
    snprintf(prog->img.key, sizeof prog->img.key, "%s", key);
    snprintf(prog->img.sanitizer, sizeof prog->img.sanitizer, "%s", san);
    snprintf(prog->img.path, sizeof prog->img.path, "%.3990s", so);
    prog->img.size = offsetof(hyb_emu_image, path) + strlen(so) + 1;
    prog->compiled = 1;
    return NVRTC_SUCCESS;
}

/* ---- the rest of the NVRTC API ------------------------------------------------------------- */
/* 0.<ABI><sanitizer>: the backend keys its kernel cache by this version, so images built for
 * another sanitizer (or emulator ABI) are never picked up from it */
nvrtcResult nvrtcVersion(int *major, int *minor) {
    const char *san = hyb_emu_sanitize_mode();
    *major = 0;
    *minor = HYB_EMU_ABI * 10 + (strcmp(san, "address") == 0 ? 1 : strcmp(san, "thread") == 0 ? 2 : 0);
    return NVRTC_SUCCESS;
}
const char *nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
    case NVRTC_SUCCESS: return "NVRTC_SUCCESS";
    case NVRTC_ERROR_OUT_OF_MEMORY: return "NVRTC_ERROR_OUT_OF_MEMORY";
    case NVRTC_ERROR_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_ERROR_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_ERROR_COMPILATION: return "NVRTC_ERROR_COMPILATION (emulated build)";
    default: return "NVRTC_ERROR (emulated)";
    }
}
static const int g_archs[] = {70, 75, 80, 86, 89, 90};
nvrtcResult nvrtcGetNumSupportedArchs(int *n) {
    *n = (int)(sizeof g_archs / sizeof *g_archs);
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetSupportedArchs(int *a) {
    memcpy(a, g_archs, sizeof g_archs);
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcCreateProgram(nvrtcProgram *prog, const char *src, const char *name, int nh,
                               const char *const *headers, const char *const *names) {
    (void)headers, (void)names;
    if (!prog || !src) return NVRTC_ERROR_INVALID_INPUT;
    if (nh > 0) return NVRTC_ERROR_INVALID_INPUT; /* named headers are not emulated */
    struct _nvrtcProgram *p = calloc(1, sizeof *p);
    if (!p) return NVRTC_ERROR_OUT_OF_MEMORY;
    p->src = strdup(src);
    p->name = strdup(name ? name : "default_program");
    if (!p->src || !p->name) {
        free(p->src), free(p->name), free(p);
        return NVRTC_ERROR_OUT_OF_MEMORY;
    }
    *prog = p;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcDestroyProgram(nvrtcProgram *prog) {
    if (!prog || !*prog) return NVRTC_ERROR_INVALID_PROGRAM;
    free((*prog)->src), free((*prog)->name), free((*prog)->log), free(*prog);
    *prog = NULL;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram prog, size_t *n) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    *n = (prog->log ? strlen(prog->log) : 0) + 1;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetProgramLog(nvrtcProgram prog, char *log) {
    if (!prog) return NVRTC_ERROR_INVALID_PROGRAM;
    strcpy(log, prog->log ? prog->log : "");
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetCUBINSize(nvrtcProgram prog, size_t *n) {
    if (!prog || !prog->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
    *n = prog->img.size;
    return NVRTC_SUCCESS;
}
nvrtcResult nvrtcGetCUBIN(nvrtcProgram prog, char *out) {
    if (!prog || !prog->compiled) return NVRTC_ERROR_INVALID_PROGRAM;
    memcpy(out, &prog->img, prog->img.size);
    return NVRTC_SUCCESS;
}
/* PTX: the same image (cuModuleLoadData takes either) */
nvrtcResult nvrtcGetPTXSize(nvrtcProgram prog, size_t *n) {
    return nvrtcGetCUBINSize(prog, n);
}
nvrtcResult nvrtcGetPTX(nvrtcProgram prog, char *out) {
    return nvrtcGetCUBIN(prog, out);
}
