/* core/data.c: tokenized, packed, shuffled token streams with a held-out split and an on-disk
 * cache (see hyb/data.h). */
#include "hyb/data.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hyb/atomic.h"
#include "hyb/tensor.h"

#define MAGIC "HYBDATA1"

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FNV0 0xcbf29ce484222325ull

static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t hyb_tokenizer_identity(const hyb_tokenizer *tok) {
    if (!tok) return fnv(FNV0, "bytes-256", 9);
    uint64_t h = FNV0;
    int32_t nv = hyb_tokenizer_vocab_size(tok);
    h = fnv(h, &nv, sizeof nv);
    for (int32_t i = 0; i < nv; i++) {
        const char *s = hyb_tokenizer_token_text(tok, i);
        int ty = hyb_tokenizer_token_type(tok, i);
        if (s) h = fnv(h, s, strlen(s) + 1);
        h = fnv(h, &ty, sizeof ty);
    }
    int32_t sp[4] = {hyb_tokenizer_bos_id(tok), hyb_tokenizer_eos_id(tok),
                     hyb_tokenizer_unk_id(tok), hyb_tokenizer_pad_id(tok)};
    h = fnv(h, sp, sizeof sp);
    static const char probe[] =
        "Hello, world! 12345 don't  <|im_start|>caf\xc3\xa9\n\n\tx = f(y);  ";
    int32_t ids[256];
    long n = hyb_tokenizer_encode(tok, probe, sizeof probe - 1, 0, ids, 256);
    if (n > 256) n = 256;
    if (n > 0) h = fnv(h, ids, sizeof(int32_t) * (size_t)n);
    return h;
}

// ---- choosing the files ---------------------------------------------------------------------

typedef struct fentry {
    char *path;
    size_t rel; /* offset of the path relative to its directory argument */
    int arg;
    int64_t size;
    uint64_t h;
    int chosen;
} fentry;

typedef struct flist {
    fentry *e;
    int64_t n, cap;
} flist;

/* Room for one more element in the growing array arr of *cap elements of `size` bytes holding n:
 * the capacity doubles (from `first`) when full. Returns the array (moved when it grew), NULL when
 * out of memory (arr is then unchanged). */
static void *grow(void *arr, int64_t n, int64_t *cap, int64_t first, size_t size) {
    if (n < *cap) return arr;
    int64_t c = *cap ? 2 * *cap : first;
    void *p = realloc(arr, size * (size_t)c);
    if (p) *cap = c;
    return p;
}

static int flist_push(flist *l, fentry x) {
    fentry *e = grow(l->e, l->n, &l->cap, 64, sizeof *e);
    if (!e) {
        free(x.path);
        return hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory listing files");
    }
    l->e = e;
    l->e[l->n++] = x;
    return HYB_OK;
}

static int matches(const char *rel, const char *const *pats, int n) {
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    for (int i = 0; i < n; i++) {
        const char *p = pats[i];
        if (fnmatch(p, strchr(p, '/') ? rel : base, 0) == 0) return 1;
    }
    return 0;
}

/* Walk dir (whose path relative to the argument starts at offset rel) into l. */
static int walk_dir(flist *l, const char *dir, size_t rel, int arg, const hyb_data_select *sel,
                    int depth) {
    if (depth > 64)
        return hyb_error_set(HYB_ERR_IO, "%s: directories nested too deeply (> 64)", dir);
    DIR *d = opendir(dir);
    if (!d) return hyb_error_set(HYB_ERR_IO, "%s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *de;
    int rc = HYB_OK;
    size_t dl = strlen(dir);
    int slash = dl > 0 && dir[dl - 1] == '/';
    while (rc == HYB_OK && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        size_t nl = strlen(de->d_name);
        char *p = malloc(dl + nl + 2);
        if (!p) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory listing files");
            break;
        }
        memcpy(p, dir, dl);
        if (!slash) p[dl] = '/';
        memcpy(p + dl + !slash, de->d_name, nl + 1);
        size_t r = rel ? rel : dl + !slash;
        struct stat st, lst;
        if (lstat(p, &lst) != 0 || stat(p, &st) != 0) {
            /* a dangling link: not a file to read */
            free(p);
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            if (!S_ISLNK(lst.st_mode)) rc = walk_dir(l, p, r, arg, sel, depth + 1);
            free(p);
            continue;
        }
        if (!S_ISREG(st.st_mode)) {
            free(p);
            continue;
        }
        const char *rp = p + r;
        if ((sel->n_include > 0 && !matches(rp, sel->include, sel->n_include)) ||
            (sel->n_exclude > 0 && matches(rp, sel->exclude, sel->n_exclude))) {
            free(p);
            continue;
        }
        fentry x = {p, r, arg, (int64_t)st.st_size, mix64(fnv(FNV0, rp, strlen(rp))), 0};
        rc = flist_push(l, x);
    }
    closedir(d);
    return rc;
}

static int cmp_fentry_hash(const void *a, const void *b) {
    const fentry *x = *(const fentry *const *)a, *y = *(const fentry *const *)b;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    return strcmp(x->path + x->rel, y->path + y->rel);
}

static int cmp_fentry_path(const void *a, const void *b) {
    const fentry *x = (const fentry *)a, *y = (const fentry *)b;
    if (x->arg != y->arg) return x->arg < y->arg ? -1 : 1;
    return strcmp(x->path, y->path);
}

void hyb_file_list_free(hyb_file_list *l) {
    if (!l) return;
    for (int i = 0; i < l->n; i++)
        free(l->paths[i]);
    free(l->paths);
    memset(l, 0, sizeof *l);
}

int hyb_data_list_files(const char *const *paths, int n_paths, const hyb_data_select *sel,
                        hyb_file_list *out) {
    static const hyb_data_select none = {0};
    memset(out, 0, sizeof *out);
    if (!sel) sel = &none;
    if (n_paths < 1 || !paths) return hyb_error_set(HYB_ERR_ARG, "dataset: no input files");
    if (sel->max_bytes < 0)
        return hyb_error_set(HYB_ERR_ARG, "dataset: max_bytes must be >= 0, got %lld",
                             (long long)sel->max_bytes);
    for (int i = 0; i < sel->n_include + sel->n_exclude; i++) {
        const char *p = i < sel->n_include ? sel->include[i] : sel->exclude[i - sel->n_include];
        if (!p || !*p)
            return hyb_error_set(HYB_ERR_ARG, "dataset: %s pattern %d is empty",
                                 i < sel->n_include ? "include" : "exclude",
                                 (i < sel->n_include ? i : i - sel->n_include) + 1);
    }
    flist l = {0};
    int rc = HYB_OK;
    int64_t fixed_bytes = 0;
    for (int a = 0; a < n_paths && rc == HYB_OK; a++) {
        struct stat st;
        if (!paths[a] || stat(paths[a], &st) != 0) {
            rc = hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", paths[a] ? paths[a] : "(null)",
                               strerror(errno));
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            int64_t before = l.n;
            rc = walk_dir(&l, paths[a], 0, a, sel, 0);
            if (rc == HYB_OK && l.n == before) {
                char pats[512];
                size_t k = 0;
                pats[0] = 0;
                for (int i = 0; i < sel->n_include + sel->n_exclude && k < sizeof pats - 64; i++) {
                    int inc = i < sel->n_include;
                    const char *p = inc ? sel->include[i] : sel->exclude[i - sel->n_include];
                    k += (size_t)snprintf(pats + k, sizeof pats - k, "%s%s '%.200s'",
                                          k ? "," : "", inc ? " include" : " exclude", p);
                }
                rc = hyb_error_set(HYB_ERR_ARG, "%s: the directory holds no file to read%s%s",
                                   paths[a], k ? " with" : "", pats);
            }
            continue;
        }
        char *p = strdup(paths[a]);
        if (!p) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory listing files");
            break;
        }
        fentry x = {p, 0, a, (int64_t)st.st_size, 0, 1};
        fixed_bytes += x.size;
        rc = flist_push(&l, x);
    }
    fentry **byh = NULL;
    if (rc == HYB_OK) {
        int64_t nd = 0;
        for (int64_t i = 0; i < l.n; i++)
            if (!l.e[i].chosen) {
                out->matched++;
                out->matched_bytes += l.e[i].size;
                nd++;
            }
        byh = malloc(sizeof(fentry *) * (size_t)(nd ? nd : 1));
        if (rc == HYB_OK && !byh) rc = hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory");
        if (rc == HYB_OK) {
            int64_t k = 0;
            for (int64_t i = 0; i < l.n; i++)
                if (!l.e[i].chosen) byh[k++] = &l.e[i];
            if (sel->max_bytes > 0) qsort(byh, (size_t)nd, sizeof(fentry *), cmp_fentry_hash);
            int64_t total = fixed_bytes;
            for (int64_t i = 0; i < nd; i++)
                if (sel->max_bytes == 0 || total + byh[i]->size <= sel->max_bytes) {
                    byh[i]->chosen = 1;
                    total += byh[i]->size;
                }
            /* stable per argument: files as given, directory files sorted by path */
            qsort(l.e, (size_t)l.n, sizeof(fentry), cmp_fentry_path);
            int64_t n = 0;
            for (int64_t i = 0; i < l.n; i++)
                n += l.e[i].chosen;
            if (n == 0)
                rc = hyb_error_set(HYB_ERR_ARG,
                                   "dataset: max_bytes %lld is smaller than every matching file "
                                   "(the smallest of %lld holds more)",
                                   (long long)sel->max_bytes, (long long)nd);
            else if (n > INT32_MAX)
                rc = hyb_error_set(HYB_ERR_ARG, "dataset: too many files (%lld)", (long long)n);
            if (rc == HYB_OK) {
                out->paths = malloc(sizeof(char *) * (size_t)n);
                if (!out->paths) rc = hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory");
            }
            for (int64_t i = 0; rc == HYB_OK && i < l.n; i++)
                if (l.e[i].chosen) {
                    out->paths[out->n++] = l.e[i].path;
                    out->bytes += l.e[i].size;
                    l.e[i].path = NULL;
                }
        }
    }
    free(byh);
    for (int64_t i = 0; i < l.n; i++)
        free(l.e[i].path);
    free(l.e);
    if (rc != HYB_OK) hyb_file_list_free(out);
    return rc;
}

// ---- reading and splitting ------------------------------------------------------------------

static int read_file(const char *path, char **buf, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    if (!b) {
        fclose(f);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got;
    while ((got = fread(b + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                fclose(f);
                return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
            }
            b = nb;
            cap *= 2;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(b);
        return hyb_error_set(HYB_ERR_IO, "%s: read error", path);
    }
    *buf = b;
    *len = n;
    return HYB_OK;
}

typedef struct doc {
    int file;
    size_t off, len;
    int val;
    int32_t *ids;
    size_t n_ids;
} doc;

typedef struct doclist {
    doc *d;
    int64_t n, cap;
} doclist;

static int push_doc(doclist *l, doc x) {
    doc *d = grow(l->d, l->n, &l->cap, 256, sizeof *d);
    if (!d) return hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory");
    l->d = d;
    l->d[l->n++] = x;
    return HYB_OK;
}

/* Cut text into documents: paragraphs (ending after a blank line) grouped to >= DOC_BYTES. */
static int split_docs(doclist *l, int file, const char *t, size_t n) {
    size_t start = 0, i = 0;
    while (i < n) {
        /* the end of this paragraph: after a run of >= 2 newlines (and the blank lines) */
        if (t[i] == '\n' && i + 1 < n && t[i + 1] == '\n') {
            while (i < n && t[i] == '\n')
                i++;
            if (i - start >= HYB_DATA_DOC_BYTES) {
                doc d = {file, start, i - start, 0, NULL, 0};
                HYB_TRY(push_doc(l, d));
                start = i;
            }
            continue;
        }
        i++;
    }
    if (start < n) {
        doc d = {file, start, n - start, 0, NULL, 0};
        HYB_TRY(push_doc(l, d));
    }
    return HYB_OK;
}

// ---- cache ----------------------------------------------------------------------------------

/* The identity part of the header: everything that decides the content. */
static char *identity_header(const hyb_data_cfg *cfg, uint64_t tok_hash) {
    size_t cap = 256;
    for (int i = 0; i < cfg->n_files; i++)
        cap += strlen(cfg->files[i]) + 80;
    char *h = malloc(cap);
    if (!h) {
        hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory");
        return NULL;
    }
    size_t k = (size_t)snprintf(
        h, cap, "tokenizer %016" PRIx64 "\nval_fraction %.17g\nseed %" PRIu64 "\ndoc_bytes %d\n",
        tok_hash, cfg->val_fraction, cfg->seed, HYB_DATA_DOC_BYTES);
    /* only when set, so caches written before the option existed stay valid */
    if (cfg->parse_special && cfg->tok) k += (size_t)snprintf(h + k, cap - k, "special 1\n");
    for (int i = 0; i < cfg->n_files; i++) {
        struct stat st;
        if (stat(cfg->files[i], &st) != 0) {
            hyb_error_set(HYB_ERR_IO, "%s: cannot open: %s", cfg->files[i], strerror(errno));
            free(h);
            return NULL;
        }
        k +=
            (size_t)snprintf(h + k, cap - k, "file %lld %lld.%09ld %s\n", (long long)st.st_size,
                             (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec, cfg->files[i]);
    }
    return h;
}

typedef struct cache_w {
    const char *hdr;
    const int32_t *tok;
    int64_t n;
} cache_w;

static int write_cache_fn(hyb_atomic_file *f, void *ctx) {
    const cache_w *c = (const cache_w *)ctx;
    uint32_t hl = (uint32_t)strlen(c->hdr);
    uint32_t pad = (4 - (8 + 4 + hl) % 4) % 4;
    static const char zeros[4] = {0, 0, 0, 0};
    HYB_TRY(hyb_atomic_write(f, MAGIC, 8));
    HYB_TRY(hyb_atomic_write(f, &hl, 4));
    HYB_TRY(hyb_atomic_write(f, c->hdr, hl));
    HYB_TRY(hyb_atomic_write(f, zeros, pad));
    return hyb_atomic_write(f, c->tok, sizeof(int32_t) * (size_t)c->n);
}

/* Try the cache: 1 = loaded into d, 0 = absent/stale (reason logged), < 0 = hard error. */
static int read_cache(const char *path, const char *ident, hyb_dataset *d) {
    char *buf;
    size_t len;
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (read_file(path, &buf, &len) != HYB_OK) {
        hyb_log(HYB_LOG_WARN, "dataset cache %s unreadable (%s): rebuilding", path, hyb_error());
        hyb_error_clear();
        return 0;
    }
    const char *why = NULL;
    uint32_t hl = 0;
    if (len < 12 || memcmp(buf, MAGIC, 8) != 0) why = "not a hyb dataset cache";
    if (!why) {
        memcpy(&hl, buf + 8, 4);
        if ((size_t)hl > len - 12) why = "truncated header";
    }
    char *hdr = NULL;
    int64_t n_train = -1, n_val = -1;
    uint64_t sum = 0;
    size_t off = 0;
    if (!why) {
        hdr = malloc((size_t)hl + 1);
        if (!hdr) {
            free(buf);
            return hyb_error_set(HYB_ERR_NOMEM, "dataset cache: out of memory");
        }
        memcpy(hdr, buf + 12, hl);
        hdr[hl] = 0;
        size_t il = strlen(ident);
        if (strlen(hdr) < il || memcmp(hdr, ident, il) != 0)
            why = "the files, tokenizer or settings changed";
        else if (sscanf(hdr + il, "n_train %" SCNd64 "\nn_val %" SCNd64 "\nchecksum %" SCNx64,
                        &n_train, &n_val, &sum) != 3 ||
                 n_train < 0 || n_val < 0 || n_train > ((int64_t)1 << 53) ||
                 n_val > ((int64_t)1 << 53)) /* counts in [0, 2^53]: n_train + n_val cannot overflow */
            why = "bad header";
        off = 12 + hl;
        off += (4 - off % 4) % 4;
    }
    if (!why &&
        (len < off || (len - off) % 4 != 0 || (int64_t)((len - off) / 4) != n_train + n_val))
        why = "token count does not match the header (truncated?)";
    if (!why && fnv(FNV0, buf + off, len - off) != sum) why = "checksum mismatch";
    if (why) {
        hyb_log(HYB_LOG_INFO, "dataset cache %s: %s; rebuilding", path, why);
        free(hdr);
        free(buf);
        return 0;
    }
    int64_t n = n_train + n_val;
    d->tokens = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    if (!d->tokens) {
        free(hdr);
        free(buf);
        return hyb_error_set(HYB_ERR_NOMEM, "dataset cache: out of memory");
    }
    memcpy(d->tokens, buf + off, sizeof(int32_t) * (size_t)n);
    d->n_train = n_train;
    d->n_val = n_val;
    const char *nd = strstr(hdr, "\ndocs ");
    if (nd) sscanf(nd + 6, "%" SCNd64 " %" SCNd64, &d->n_docs, &d->n_val_docs);
    free(hdr);
    free(buf);
    return 1;
}

// ---- open -----------------------------------------------------------------------------------

static int tokenize_doc(const hyb_tokenizer *tok, int special, const char *t, size_t n, doc *d) {
    if (!tok) {
        d->ids = malloc(sizeof(int32_t) * (n ? n : 1));
        if (!d->ids) return hyb_error_set(HYB_ERR_NOMEM, "dataset: out of memory");
        for (size_t i = 0; i < n; i++)
            d->ids[i] = (unsigned char)t[i];
        d->n_ids = n;
        return HYB_OK;
    }
    return hyb_tokenizer_encode_alloc(tok, t, n, special ? 0 : HYB_TOK_NO_PARSE_SPECIAL, &d->ids,
                                      &d->n_ids);
}

int hyb_dataset_open(const hyb_data_cfg *cfg, hyb_dataset **out) {
    *out = NULL;
    if (!cfg || cfg->n_files < 1 || !cfg->files)
        return hyb_error_set(HYB_ERR_ARG, "hyb_dataset_open: no input files");
    if (!(cfg->val_fraction >= 0 && cfg->val_fraction < 1))
        return hyb_error_set(HYB_ERR_ARG, "hyb_dataset_open: val_fraction %g must be in [0, 1)",
                             cfg->val_fraction);
    hyb_dataset *d = calloc(1, sizeof *d);
    if (!d) return hyb_error_set(HYB_ERR_NOMEM, "hyb_dataset_open: out of memory");
    d->perm_epoch = -1;
    d->tok_hash = hyb_tokenizer_identity(cfg->tok);
    char *ident = identity_header(cfg, d->tok_hash);
    if (!ident) {
        free(d);
        return HYB_ERR_IO;
    }
    int rc = HYB_OK;
    if (cfg->cache) {
        rc = read_cache(cfg->cache, ident, d);
        if (rc == 1) {
            free(ident);
            d->from_cache = 1;
            *out = d;
            return HYB_OK;
        }
        if (rc < 0) goto fail;
        rc = HYB_OK;
    }
    /* read, split, tokenize */
    char **text = calloc((size_t)cfg->n_files, sizeof(char *));
    doclist dl = {0};
    if (!text) {
        rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_dataset_open: out of memory");
        goto fail;
    }
    for (int f = 0; f < cfg->n_files && rc == HYB_OK; f++) {
        size_t len;
        rc = read_file(cfg->files[f], &text[f], &len);
        if (rc == HYB_OK) rc = split_docs(&dl, f, text[f], len);
    }
    int64_t n_val_docs = 0;
    for (int64_t i = 0; i < dl.n && rc == HYB_OK; i++) {
        doc *x = &dl.d[i];
        uint64_t h = mix64(fnv(FNV0, text[x->file] + x->off, x->len));
        x->val = cfg->val_fraction > 0 && (double)(h >> 11) * 0x1.0p-53 < cfg->val_fraction;
        n_val_docs += x->val;
    }
    if (rc == HYB_OK && cfg->val_fraction > 0 && n_val_docs == 0 && dl.n > 1) {
        dl.d[dl.n - 1].val = 1; /* at least one held-out document */
        n_val_docs = 1;
    }
    if (rc == HYB_OK && n_val_docs == dl.n)
        rc = hyb_error_set(HYB_ERR_ARG,
                           "hyb_dataset_open: all %" PRId64 " documents went to the held-out split "
                           "(val_fraction %g); give more text",
                           dl.n, cfg->val_fraction);
    for (int64_t i = 0; i < dl.n && rc == HYB_OK; i++)
        rc = tokenize_doc(cfg->tok, cfg->parse_special, text[dl.d[i].file] + dl.d[i].off, dl.d[i].len, &dl.d[i]);
    if (rc == HYB_OK) {
        /* training documents shuffled (seeded), held-out in file order */
        int64_t *order = malloc(sizeof(int64_t) * (size_t)(dl.n ? dl.n : 1));
        int64_t nt = 0, total = 0;
        if (!order) rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_dataset_open: out of memory");
        for (int64_t i = 0; rc == HYB_OK && i < dl.n; i++) {
            if (!dl.d[i].val) order[nt++] = i;
            total += (int64_t)dl.d[i].n_ids;
        }
        if (rc == HYB_OK) {
            hyb_rng r;
            hyb_rng_seed(&r, cfg->seed ^ 0x5d4a7a1ull);
            for (int64_t i = nt - 1; i > 0; i--) {
                int64_t j = (int64_t)(hyb_rng_next(&r) % (uint64_t)(i + 1));
                int64_t tmp = order[i];
                order[i] = order[j];
                order[j] = tmp;
            }
            int64_t k = nt;
            for (int64_t i = 0; i < dl.n; i++)
                if (dl.d[i].val) order[k++] = i;
            d->tokens = malloc(sizeof(int32_t) * (size_t)(total ? total : 1));
            if (!d->tokens)
                rc = hyb_error_set(HYB_ERR_NOMEM,
                                   "hyb_dataset_open: out of memory for %" PRId64 " tokens", total);
            int64_t at = 0;
            for (int64_t i = 0; rc == HYB_OK && i < dl.n; i++) {
                const doc *x = &dl.d[order[i]];
                memcpy(d->tokens + at, x->ids, sizeof(int32_t) * x->n_ids);
                at += (int64_t)x->n_ids;
                if (i == nt - 1) d->n_train = at;
            }
            if (nt == 0) d->n_train = 0;
            d->n_val = total - d->n_train;
            d->n_docs = dl.n;
            d->n_val_docs = n_val_docs;
        }
        free(order);
    }
    for (int64_t i = 0; i < dl.n; i++)
        free(dl.d[i].ids);
    free(dl.d);
    for (int f = 0; f < cfg->n_files; f++)
        free(text[f]);
    free(text);
    if (rc != HYB_OK) goto fail;
    if (cfg->cache) {
        int64_t n = d->n_train + d->n_val;
        uint64_t sum = fnv(FNV0, d->tokens, sizeof(int32_t) * (size_t)n);
        size_t hl = strlen(ident) + 160;
        char *hdr = malloc(hl);
        if (!hdr) {
            rc = hyb_error_set(HYB_ERR_NOMEM, "hyb_dataset_open: out of memory");
            goto fail;
        }
        snprintf(hdr, hl,
                 "%sn_train %" PRId64 "\nn_val %" PRId64 "\nchecksum %016" PRIx64 "\ndocs %" PRId64
                 " %" PRId64 "\n",
                 ident, d->n_train, d->n_val, sum, d->n_docs, d->n_val_docs);
        cache_w c = {hdr, d->tokens, n};
        rc = hyb_atomic_write_file(cfg->cache, write_cache_fn, &c);
        free(hdr);
        if (rc != HYB_OK) {
            rc = hyb_error_wrap(rc, "dataset cache %s", cfg->cache);
            goto fail;
        }
    }
    free(ident);
    *out = d;
    return HYB_OK;
fail:
    free(ident);
    hyb_dataset_free(d);
    return rc;
}

void hyb_dataset_free(hyb_dataset *d) {
    if (!d) return;
    free(d->tokens);
    free(d->perm);
    free(d);
}

// ---- batches --------------------------------------------------------------------------------

int64_t hyb_dataset_windows(const hyb_dataset *d, int split, int T) {
    int64_t n = split == HYB_SPLIT_VAL ? d->n_val : d->n_train;
    if (T < 1 || n < T + 1) return 0;
    return (n - 1) / T;
}

static int make_perm(hyb_dataset *d, int64_t W, int T, uint64_t seed, int64_t epoch) {
    if (d->perm && d->perm_n == W && d->perm_T == T && d->perm_seed == seed &&
        d->perm_epoch == epoch)
        return HYB_OK;
    if (d->perm_n != W || !d->perm) {
        free(d->perm);
        d->perm = malloc(sizeof(int64_t) * (size_t)W);
        d->perm_n = 0;
        if (!d->perm) return hyb_error_set(HYB_ERR_NOMEM, "hyb_dataset_batch: out of memory");
    }
    for (int64_t i = 0; i < W; i++)
        d->perm[i] = i;
    hyb_rng r;
    hyb_rng_seed(&r, mix64(seed * 0x9E3779B97F4A7C15ull + (uint64_t)epoch));
    for (int64_t i = W - 1; i > 0; i--) {
        int64_t j = (int64_t)(hyb_rng_next(&r) % (uint64_t)(i + 1));
        int64_t t = d->perm[i];
        d->perm[i] = d->perm[j];
        d->perm[j] = t;
    }
    d->perm_n = W;
    d->perm_T = T;
    d->perm_seed = seed;
    d->perm_epoch = epoch;
    return HYB_OK;
}

int hyb_dataset_batch(hyb_dataset *d, int split, int64_t step, int B, int T, uint64_t seed,
                      int32_t *ids, int32_t *targets) {
    return hyb_dataset_batch_rows(d, split, step, B, 0, B, T, seed, ids, targets);
}

int hyb_dataset_batch_rows(hyb_dataset *d, int split, int64_t step, int B, int first, int n,
                           int T, uint64_t seed, int32_t *ids, int32_t *targets) {
    if (first < 0 || n < 1 || first > B - n)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_dataset_batch: rows %d..%d are not in a batch of %d", first,
                             first + n - 1, B);
    if (B < 1 || T < 1 || step < 0 || (split != HYB_SPLIT_TRAIN && split != HYB_SPLIT_VAL))
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_dataset_batch: bad arguments (split %d, step %" PRId64
                             ", B %d, T %d)",
                             split, step, B, T);
    if (step > (INT64_MAX - B) / B)
        return hyb_error_set(HYB_ERR_ARG, "hyb_dataset_batch: step %" PRId64 " is too large", step);
    int64_t W = hyb_dataset_windows(d, split, T);
    if (W < 1)
        return hyb_error_set(HYB_ERR_ARG,
                             "hyb_dataset_batch: the %s split holds %" PRId64
                             " tokens; T = %d needs at least %d",
                             split == HYB_SPLIT_VAL ? "held-out" : "training",
                             split == HYB_SPLIT_VAL ? d->n_val : d->n_train, T, T + 1);
    const int32_t *base = split == HYB_SPLIT_VAL ? d->tokens + d->n_train : d->tokens;
    for (int b = first; b < first + n; b++) {
        int64_t i = step * B + b, w;
        if (split == HYB_SPLIT_VAL) {
            w = i % W;
        } else {
            HYB_TRY(make_perm(d, W, T, seed, i / W));
            w = d->perm[i % W];
        }
        const int32_t *src = base + w * T;
        const int64_t o = (int64_t)(b - first) * T; /* row b of the batch: row b - first here */
        memcpy(ids + o, src, sizeof(int32_t) * (size_t)T);
        if (targets) memcpy(targets + o, src + 1, sizeof(int32_t) * (size_t)T);
    }
    return HYB_OK;
}
