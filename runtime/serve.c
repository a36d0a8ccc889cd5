/* runtime/serve.c: `hyb serve`, an OpenAI-compatible HTTP server on the continuous-batching
 * engine (see serve.h for the threads, docs/SERVE.md for the API).
 *
 * HTTP is libmicrohttpd in thread-per-connection mode: a connection thread may block, so a request
 * waits for its tokens on a condition variable (and polls its socket for a hang-up between
 * tokens) instead of being suspended and resumed from the engine thread. Connections are bounded
 * by the queue limit plus the slots, so a thread each is cheap next to the model.
 *
 * Locking: one mutex (srv.mu) guards the queue, every request's shared fields and the metrics;
 * the engine thread holds it only to move requests and to append a token, never during a step.
 */
#define _GNU_SOURCE
#include "serve.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "hyb/backend.h"
#include "hyb/common.h"
#include "hyb/engine.h"
#include "hyb/hf.h"
#include "hyb/model.h"
#include "hyb/tokenizer.h"

#define MAX_N 16         /* choices per request (n times the prompts) */
#define MAX_TOP_LOGPROBS 20
#define MAX_STOP 4       /* OpenAI's limit on stop strings */
#define WAIT_SLICE_MS 50 /* how often a waiting connection checks its socket */

hyb_serve_config hyb_serve_defaults(void) {
    hyb_serve_config c;
    memset(&c, 0, sizeof c);
    c.host = "127.0.0.1";
    c.port = 8080;
    c.slots = 16;
    c.max_queue = 256;
    c.max_body = 1 << 20;
    c.kv_cache = HYB_KV_DEFAULT;
    return c;
}

/* ---- small growable buffer ------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static int buf_put(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int buf_puts(buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

static int buf_printf(buf *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < sizeof tmp) return buf_put(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big) return -1;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = buf_put(b, big, (size_t)n);
    free(big);
    return rc;
}

static void buf_free(buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- UTF-8 ------------------------------------------------------------------------------------ */

/* Length of the valid sequence starting at s[0] (1..4), 0 when it is cut short by the end of the
 * text, -1 when s[0] does not start a valid sequence. */
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len;
    unsigned min;
    if (c < 0x80) return c ? 1 : -1; /* NUL is not kept: JSON strings here are C strings */
    if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
    else return -1;
    unsigned cp = c & (0x3F >> (len - 1));
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n) return 0;
        if ((s[i] & 0xC0) != 0x80) return -1;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
    return len;
}

/* How many of the n bytes can be sent now: all but a multi-byte character cut short at the end
 * (unless final: then everything). */
static size_t utf8_ready(const char *s, size_t n, int final) {
    if (final) return n;
    size_t i = 0;
    while (i < n) {
        int k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k == 0) return i;
        i += k > 0 ? (size_t)k : 1;
    }
    return n;
}

/* s[0..n) as valid UTF-8 into a new NUL-terminated string: an invalid byte (or NUL) becomes
 * U+FFFD. */
static char *utf8_clean(const char *s, size_t n) {
    buf b = {0};
    buf_put(&b, "", 0);
    size_t i = 0;
    while (i < n) {
        int k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k > 0) {
            buf_put(&b, s + i, (size_t)k);
            i += (size_t)k;
        } else {
            buf_put(&b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    return b.p;
}

/* ---- API errors ------------------------------------------------------------------------------- */

typedef struct apierr {
    int status;
    const char *type;
    const char *code; /* may be NULL */
    char param[96];   /* "" -> null */
    char msg[512];
} apierr;

static int api_fail(apierr *e, int status, const char *param, const char *code, const char *fmt,
                    ...) {
    e->status = status;
    e->type = status == 401   ? "authentication_error"
              : status == 429 ? "rate_limit_error"
              : status >= 500 ? "server_error"
                              : "invalid_request_error";
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static char *api_error_json(const apierr *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    char *m = utf8_clean(e->msg, strlen(e->msg));
    cJSON_AddStringToObject(o, "message", m ? m : "error");
    free(m);
    cJSON_AddStringToObject(o, "type", e->type);
    if (e->param[0])
        cJSON_AddStringToObject(o, "param", e->param);
    else
        cJSON_AddNullToObject(o, "param");
    if (e->code)
        cJSON_AddStringToObject(o, "code", e->code);
    else
        cJSON_AddNullToObject(o, "code");
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

/* ---- the server's state ------------------------------------------------------------------------ */

enum { EP_COMPLETIONS, EP_CHAT, EP_MODELS, EP_HEALTH, EP_METRICS, EP_OTHER, EP_COUNT };
static const char *const ep_names[EP_COUNT] = {"completions", "chat_completions", "models",
                                               "health",      "metrics",          "other"};
static const int status_codes[] = {200, 400, 401, 404, 405, 413, 429, 500, 503};
#define N_STATUS ((int)(sizeof status_codes / sizeof status_codes[0]))

typedef struct lp_top {
    int32_t id;
    float lp;
} lp_top;

typedef struct lp_entry {
    int32_t id;
    float lp;
    int n_top;
    lp_top top[MAX_TOP_LOGPROBS];
} lp_entry;

struct req;

typedef struct choice {
    struct req *r;
    int index;
    int prompt; /* which prompt (completions with an array of prompts) */
    int64_t eng_id;
    buf text;        /* streamed text so far (events) */
    size_t text_sent;
    char *final_text; /* the completion's text (stop strings cut) */
    size_t final_len;
    lp_entry *lps;
    int n_lps, cap_lps, lps_sent;
    int n_tokens;
    int finish; /* -1 running, else HYB_FINISH_* */
    int started, finish_sent; /* streaming: role chunk sent, finish chunk sent */
} choice;

typedef struct req {
    struct srv *s;
    int refs;
    int ep; /* EP_COMPLETIONS or EP_CHAT */
    int stream, include_usage;
    int n_choices, n_done;
    choice ch[MAX_N];
    int n_prompts;
    int32_t *prompt_ids[MAX_N];
    int prompt_len[MAX_N];
    hyb_request_params p;
    char *stops[MAX_STOP + 1];
    int n_stop;
    int logprobs; /* top logprobs wanted (-1: no logprobs) */
    int cancelled, failed;
    pthread_cond_t cv;
    struct req *next;                 /* the server queue */
    struct req *live_prev, *live_next; /* every live request (for a forced shutdown) */
    char id[48];
    long created;
    double t_arrival, t_first;
    /* connection side */
    struct MHD_Connection *conn;
    buf out; /* streaming: bytes formatted, not yet handed to MHD */
    size_t out_off;
    int done_sent;
} req;

typedef struct srv {
    hyb_serve_config cfg;
    char model_id[256];
    hyb_model *m;
    hyb_tokenizer *tok;
    char *chat_template; /* the model's own (GGUF / tokenizer_config.json), else hyb's ChatML */
    char *bos_text, *eos_text; /* the special tokens' text, for the template's bos/eos_token */
    int chatml_stop;     /* add "<|im_end|>" as a stop string (ChatML templates) */
    hyb_engine *e;
    int max_ctx, V;
    int32_t eos;
    pthread_mutex_t mu;
    pthread_cond_t work; /* the engine thread waits here for requests */
    pthread_cond_t idle; /* shutdown waits here for the last request */
    req *q_head, *q_tail;
    int q_len;
    req live; /* list head */
    int n_live;
    int n_busy; /* connections with a request being read or answered */
    int stopping, quit;
    long created;
    uint64_t next_id;
    /* metrics */
    long long requests[EP_COUNT][N_STATUS];
    long long prompt_tokens, gen_tokens, cancelled_total, queue_rejected;
    double ttft_sum;
    long long ttft_count;
    int active, engine_waiting;
    long long tok_bucket[16];
    long tok_bucket_sec[16];
    double t_start;
} srv;

static double now_s(void) { return hyb_time_now(); }

static void count_status(srv *s, int ep, int status) {
    for (int i = 0; i < N_STATUS; i++)
        if (status_codes[i] == status) {
            pthread_mutex_lock(&s->mu);
            s->requests[ep][i]++;
            pthread_mutex_unlock(&s->mu);
            return;
        }
}

/* Drop one reference (mu held). */
static void req_unref(req *r) {
    if (--r->refs > 0) return;
    srv *s = r->s;
    r->live_prev->live_next = r->live_next;
    r->live_next->live_prev = r->live_prev;
    s->n_live--;
    if (s->n_live == 0) pthread_cond_broadcast(&s->idle);
    for (int i = 0; i < r->n_choices; i++) {
        buf_free(&r->ch[i].text);
        free(r->ch[i].final_text);
        free(r->ch[i].lps);
    }
    for (int i = 0; i < r->n_prompts; i++)
        free(r->prompt_ids[i]);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stops[i]);
    buf_free(&r->out);
    pthread_cond_destroy(&r->cv);
    free(r);
}

/* ---- the engine thread -------------------------------------------------------------------------- */

static void finish_choice(choice *c, int finish) {
    req *r = c->r;
    if (c->finish >= 0) return;
    c->finish = finish;
    r->n_done++;
    pthread_cond_broadcast(&r->cv);
}

/* log-softmax of logits[V] at `id`, and the k most probable tokens */
static void logprobs_of(const float *lg, int V, int32_t id, int k, lp_entry *out) {
    float mx = -INFINITY;
    for (int i = 0; i < V; i++)
        if (lg[i] > mx) mx = lg[i];
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)(lg[i] - mx));
    float lse = mx + (float)log(sum);
    out->id = id;
    out->lp = lg[id] - lse;
    out->n_top = 0;
    for (int i = 0; i < V && k > 0; i++) {
        float v = lg[i];
        if (out->n_top == k && v <= out->top[k - 1].lp + lse) continue;
        int j = out->n_top < k ? out->n_top++ : k - 1;
        while (j > 0 && out->top[j - 1].lp + lse < v) {
            out->top[j] = out->top[j - 1];
            j--;
        }
        out->top[j].id = i;
        out->top[j].lp = v - lse;
    }
}

static int on_token(void *user, const hyb_token_event *ev) {
    choice *c = (choice *)user;
    req *r = c->r;
    srv *s = r->s;
    lp_entry lp;
    int want_lp = r->logprobs >= 0 && ev->logits; /* logits: the event's, on the host */
    if (want_lp) logprobs_of(ev->logits, s->V, ev->token, r->logprobs, &lp);
    double t = now_s();
    pthread_mutex_lock(&s->mu);
    if (r->t_first == 0) {
        r->t_first = t;
        s->ttft_sum += t - r->t_arrival;
        s->ttft_count++;
    }
    if (ev->text_len) buf_put(&c->text, ev->text, ev->text_len);
    if (want_lp) {
        if (c->n_lps == c->cap_lps) {
            int cap = c->cap_lps ? 2 * c->cap_lps : 16;
            lp_entry *p = realloc(c->lps, sizeof *p * (size_t)cap);
            if (p) c->lps = p, c->cap_lps = cap;
        }
        if (c->n_lps < c->cap_lps) c->lps[c->n_lps++] = lp;
    }
    c->n_tokens++;
    s->gen_tokens++;
    long sec = (long)t;
    int b = (int)(sec % 16);
    if (s->tok_bucket_sec[b] != sec) s->tok_bucket_sec[b] = sec, s->tok_bucket[b] = 0;
    s->tok_bucket[b]++;
    int stop = r->cancelled;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&s->mu);
    return stop ? 1 : 0;
}

static choice *find_running(srv *s, int64_t id) {
    for (req *r = s->live.live_next; r != &s->live; r = r->live_next)
        for (int i = 0; i < r->n_choices; i++)
            if (r->ch[i].eng_id == id && r->ch[i].finish < 0) return &r->ch[i];
    return NULL;
}

/* Move queued requests into the engine while it has free slots (mu held). */
static void admit(srv *s) {
    while (s->q_head && hyb_engine_pending(s->e) < s->cfg.slots) {
        req *r = s->q_head;
        s->q_head = r->next;
        if (!s->q_head) s->q_tail = NULL;
        s->q_len--;
        if (r->cancelled) {
            for (int i = 0; i < r->n_choices; i++)
                finish_choice(&r->ch[i], HYB_FINISH_STOP);
            s->cancelled_total++;
            req_unref(r);
            continue;
        }
        int submitted = 0;
        for (int i = 0; i < r->n_choices; i++) {
            choice *c = &r->ch[i];
            hyb_request_params p = r->p;
            p.seed = r->p.seed + (uint64_t)i;
            p.user = c;
            int64_t id = -1;
            if (hyb_engine_submit(s->e, r->prompt_ids[c->prompt], r->prompt_len[c->prompt], &p,
                                  &id) != HYB_OK) {
                fprintf(stderr, "hyb serve: request %s: %s\n", r->id, hyb_error());
                r->failed = 1;
                finish_choice(c, HYB_FINISH_ERROR);
                continue;
            }
            c->eng_id = id;
            submitted++;
            s->prompt_tokens += r->prompt_len[c->prompt];
        }
        if (submitted == 0) req_unref(r); /* the engine holds no part of it */
    }
}

static void *engine_main(void *arg) {
    srv *s = (srv *)arg;
    /* the pool's count (process-wide) and OpenMP's on this thread, which runs the engine */
    if (s->cfg.threads > 0 && hyb_set_threads(s->cfg.threads) != HYB_OK)
        fprintf(stderr, "hyb serve: %s\n", hyb_error());
    pthread_mutex_lock(&s->mu);
    for (;;) {
        admit(s);
        if (hyb_engine_pending(s->e) == 0) {
            if (s->quit) break;
            pthread_cond_wait(&s->work, &s->mu);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        int rc = hyb_engine_step(s->e);
        if (rc != HYB_OK) fprintf(stderr, "hyb serve: engine step: %s\n", hyb_error());
        hyb_engine_stats st;
        hyb_engine_get_stats(s->e, &st);
        pthread_mutex_lock(&s->mu);
        hyb_completion c;
        while (hyb_engine_pop(s->e, &c)) {
            choice *ch = find_running(s, c.id);
            if (ch) {
                req *r = ch->r;
                ch->final_text = c.text;
                ch->final_len = c.text_len;
                c.text = NULL;
                ch->n_tokens = c.n_tokens;
                if (r->cancelled && c.finish == HYB_FINISH_STOP) s->cancelled_total++;
                finish_choice(ch, c.finish);
                /* the engine's reference goes with its last choice */
                int left = 0;
                for (int i = 0; i < r->n_choices; i++)
                    if (r->ch[i].finish < 0 && r->ch[i].eng_id >= 0) left++;
                if (left == 0) req_unref(r);
            }
            hyb_completion_free(&c);
        }
        s->active = st.active;
        s->engine_waiting = st.waiting;
    }
    s->active = 0;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- request parsing ------------------------------------------------------------------------- */

static int is_null(const cJSON *v) { return !v || cJSON_IsNull(v); }

static const char *type_name(const cJSON *v) {
    if (cJSON_IsString(v)) return "a string";
    if (cJSON_IsNumber(v)) return "a number";
    if (cJSON_IsBool(v)) return "a boolean";
    if (cJSON_IsArray(v)) return "an array";
    if (cJSON_IsObject(v)) return "an object";
    return "null";
}

/* An optional integer field in [lo, hi]: 1 when present (*out set), 0 when absent or null, -1 on
 * a wrong type or range (e filled). */
static int opt_int(const cJSON *o, const char *key, double lo, double hi, long long *out,
                   apierr *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (is_null(v)) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble))
        return api_fail(e, 400, key, "invalid_type", "'%s' must be an integer, got %s", key,
                        cJSON_IsNumber(v) ? "a fractional number" : type_name(v));
    if (v->valuedouble < lo || v->valuedouble > hi)
        return api_fail(e, 400, key, "invalid_value", "'%s' must be in [%.0f, %.0f], got %.17g",
                        key, lo, hi, v->valuedouble);
    *out = (long long)v->valuedouble;
    return 1;
}

static int opt_num(const cJSON *o, const char *key, double lo, double hi, int lo_open, double *out,
                   apierr *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (is_null(v)) return 0;
    if (!cJSON_IsNumber(v))
        return api_fail(e, 400, key, "invalid_type", "'%s' must be a number, got %s", key,
                        type_name(v));
    double d = v->valuedouble;
    if (!(d >= lo && d <= hi) || (lo_open && d == lo))
        return api_fail(e, 400, key, "invalid_value", "'%s' must be in %c%g, %g], got %g", key,
                        lo_open ? '(' : '[', lo, hi, d);
    *out = d;
    return 1;
}

static int opt_bool(const cJSON *o, const char *key, int *out, apierr *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (is_null(v)) return 0;
    if (!cJSON_IsBool(v))
        return api_fail(e, 400, key, "invalid_type", "'%s' must be a boolean, got %s", key,
                        type_name(v));
    *out = cJSON_IsTrue(v);
    return 1;
}

static int tokenize(srv *s, const char *text, size_t len, int32_t **ids, int *n, const char *param,
                    apierr *e) {
    size_t nn = 0;
    if (hyb_tokenizer_encode_alloc(s->tok, text, len, 0, ids, &nn) != HYB_OK)
        return api_fail(e, 400, param, "invalid_value", "'%s' cannot be tokenized: %s", param,
                        hyb_error());
    if (nn > (size_t)s->max_ctx * 4) nn = (size_t)s->max_ctx * 4; /* reported as too long below */
    *n = (int)nn;
    return 0;
}

/* The prompt of a chat request. The messages are checked here (roles, text content), then
 * rendered by the model's chat template (s->chat_template: its own, else hyb's ChatML) as HF's
 * apply_chat_template would (core/tokenizer/chat_template.c). A template that refuses the
 * conversation (raise_exception, e.g. "roles must alternate") is a 400 naming 'messages' with the
 * template's message. */
static int chat_prompt(srv *s, const cJSON *msgs, buf *out, apierr *e) {
    if (!cJSON_IsArray(msgs))
        return api_fail(e, 400, "messages", is_null(msgs) ? "missing_field" : "invalid_type",
                        is_null(msgs) ? "'messages' is required"
                                      : "'messages' must be an array of messages");
    int n = cJSON_GetArraySize(msgs);
    if (n == 0) return api_fail(e, 400, "messages", "invalid_value", "'messages' is empty");
    int i = 0;
    const cJSON *m;
    buf content_text = {0}; /* one message's text content */
    cJSON *tmsgs = cJSON_CreateArray();
    if (!tmsgs) return api_fail(e, 500, "", "server_error", "out of memory");
    cJSON_ArrayForEach(m, msgs) {
        char pname[64];
        snprintf(pname, sizeof pname, "messages[%d]", i);
        if (!cJSON_IsObject(m)) {
            buf_free(&content_text), cJSON_Delete(tmsgs);
            return api_fail(e, 400, pname, "invalid_type", "'%s' must be an object, got %s", pname,
                            type_name(m));
        }
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        snprintf(pname, sizeof pname, "messages[%d].role", i);
        if (!cJSON_IsString(role)) {
            buf_free(&content_text), cJSON_Delete(tmsgs);
            return api_fail(e, 400, pname, "invalid_type", "'%s' must be a string, got %s", pname,
                            type_name(role));
        }
        const char *rn = role->valuestring;
        if (strcmp(rn, "developer") == 0) rn = "system";
        if (strcmp(rn, "system") && strcmp(rn, "user") && strcmp(rn, "assistant")) {
            buf_free(&content_text), cJSON_Delete(tmsgs);
            return api_fail(e, 400, pname, "invalid_value",
                            "'%s' must be one of system, developer, user, assistant; got '%s'",
                            pname, role->valuestring);
        }
        content_text.n = 0;
        if (content_text.p) content_text.p[0] = 0;
        buf *dst = &content_text;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        snprintf(pname, sizeof pname, "messages[%d].content", i);
        if (cJSON_IsString(content)) {
            buf_puts(dst, content->valuestring);
        } else if (cJSON_IsArray(content)) {
            int k = 0;
            const cJSON *part;
            cJSON_ArrayForEach(part, content) {
                const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type");
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (!cJSON_IsObject(part) || !cJSON_IsString(ty) ||
                    strcmp(ty->valuestring, "text") != 0 || !cJSON_IsString(tx)) {
                    char pp[96];
                    snprintf(pp, sizeof pp, "%s[%d]", pname, k);
                    buf_free(&content_text), cJSON_Delete(tmsgs);
                    return api_fail(e, 400, pp, "invalid_value",
                                    "'%s' must be a text part {\"type\": \"text\", \"text\": ...} "
                                    "(this model reads text only)",
                                    pp);
                }
                buf_puts(dst, tx->valuestring);
                k++;
            }
        } else if (!(is_null(content) && strcmp(rn, "assistant") == 0)) {
            buf_free(&content_text), cJSON_Delete(tmsgs);
            return api_fail(e, 400, pname, is_null(content) ? "missing_field" : "invalid_type",
                            "'%s' must be a string or an array of text parts, got %s", pname,
                            type_name(content));
        }
        cJSON *tm = cJSON_CreateObject();
        if (!tm || !cJSON_AddStringToObject(tm, "role", rn) ||
            !cJSON_AddStringToObject(tm, "content", content_text.p ? content_text.p : "")) {
            cJSON_Delete(tm), buf_free(&content_text), cJSON_Delete(tmsgs);
            return api_fail(e, 500, "", "server_error", "out of memory");
        }
        cJSON_AddItemToArray(tmsgs, tm);
        i++;
    }
    buf_free(&content_text);
    /* the template, with HF's variables */
    cJSON *ctx = cJSON_CreateObject();
    char *ctx_json = NULL, *text = NULL;
    if (ctx) {
        cJSON_AddItemToObject(ctx, "messages", tmsgs);
        tmsgs = NULL;
        cJSON_AddTrueToObject(ctx, "add_generation_prompt");
        cJSON_AddStringToObject(ctx, "bos_token", s->bos_text);
        cJSON_AddStringToObject(ctx, "eos_token", s->eos_text);
        ctx_json = cJSON_PrintUnformatted(ctx);
    }
    cJSON_Delete(ctx);
    cJSON_Delete(tmsgs);
    if (!ctx_json) return api_fail(e, 500, "", "server_error", "out of memory");
    int rc = hyb_chat_template_render(s->chat_template, ctx_json, &text);
    free(ctx_json);
    if (rc != HYB_OK) {
        int r = api_fail(e, 400, "messages", "invalid_value",
                         "the model's chat template refused these messages: %s", hyb_error());
        hyb_error_clear();
        return r;
    }
    buf_puts(out, text);
    free(text);
    return 0;
}

/* Parse and check a completions / chat body into r (prompts tokenized). 0 or -1 with e. */
static int parse_request(srv *s, int ep, const char *body, size_t len, req *r, apierr *e) {
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= body && at <= body + len ? (long)(at - body) : -1;
        return api_fail(e, 400, "", "invalid_json",
                        "the body is not valid JSON (error near byte %ld)", off);
    }
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        api_fail(e, 400, "", "invalid_json", "the body must be a JSON object, got %s",
                 type_name(root));
        goto out;
    }
    /* model */
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!is_null(model)) {
        if (!cJSON_IsString(model)) {
            api_fail(e, 400, "model", "invalid_type", "'model' must be a string, got %s",
                     type_name(model));
            goto out;
        }
        if (strcmp(model->valuestring, s->model_id) != 0 &&
            strcmp(model->valuestring, s->cfg.model_path) != 0) {
            api_fail(e, 404, "model", "model_not_found",
                     "the model '%s' does not exist; this server has '%s'", model->valuestring,
                     s->model_id);
            goto out;
        }
    }
    /* sampling */
    hyb_request_params p = hyb_request_defaults();
    double d;
    long long ll;
    int b;
    int has;
    p.sampler.temperature = 1.0f; /* OpenAI's default */
    if ((has = opt_num(root, "temperature", 0, 2, 0, &d, e)) < 0) goto out;
    if (has) p.sampler.temperature = (float)d;
    if ((has = opt_num(root, "top_p", 0, 1, 1, &d, e)) < 0) goto out;
    if (has) p.sampler.top_p = (float)d;
    if ((has = opt_int(root, "top_k", 0, 1 << 24, &ll, e)) < 0) goto out;
    if (has) p.sampler.top_k = (int)ll;
    if ((has = opt_num(root, "repetition_penalty", 0, 100, 1, &d, e)) < 0) goto out;
    if (has) p.sampler.repetition_penalty = (float)d;
    static const char *const zero_only[] = {"frequency_penalty", "presence_penalty"};
    for (int i = 0; i < 2; i++) {
        if ((has = opt_num(root, zero_only[i], -2, 2, 0, &d, e)) < 0) goto out;
        if (has && d != 0) {
            api_fail(e, 400, zero_only[i], "unsupported_value",
                     "'%s' is not supported (only 0); repetition_penalty is", zero_only[i]);
            goto out;
        }
    }
    p.seed = (uint64_t)time(NULL) * 2654435761u + s->next_id * 97u; /* no seed: differs per call */
    if ((has = opt_int(root, "seed", -9007199254740992.0, 9007199254740992.0, &ll, e)) < 0)
        goto out;
    if (has) p.seed = (uint64_t)ll;
    long long n = 1;
    if (opt_int(root, "n", 1, MAX_N, &n, e) < 0) goto out;
    b = 0;
    if (opt_bool(root, "stream", &b, e) < 0) goto out;
    r->stream = b;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (!is_null(so)) {
        if (!cJSON_IsObject(so)) {
            api_fail(e, 400, "stream_options", "invalid_type",
                     "'stream_options' must be an object, got %s", type_name(so));
            goto out;
        }
        b = 0;
        if (opt_bool(so, "include_usage", &b, e) < 0) {
            snprintf(e->param, sizeof e->param, "stream_options.include_usage");
            goto out;
        }
        r->include_usage = b;
    }
    /* logprobs */
    r->logprobs = -1;
    if (ep == EP_COMPLETIONS) {
        if ((has = opt_int(root, "logprobs", 0, MAX_TOP_LOGPROBS, &ll, e)) < 0) goto out;
        if (has) r->logprobs = (int)ll;
    } else {
        b = 0;
        if (opt_bool(root, "logprobs", &b, e) < 0) goto out;
        ll = 0;
        int has_top = opt_int(root, "top_logprobs", 0, MAX_TOP_LOGPROBS, &ll, e);
        if (has_top < 0) goto out;
        if (has_top && !b) {
            api_fail(e, 400, "top_logprobs", "invalid_value",
                     "'top_logprobs' needs 'logprobs': true");
            goto out;
        }
        if (b) r->logprobs = (int)ll;
    }
    /* stop */
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (cJSON_IsString(stop)) {
        if (stop->valuestring[0]) r->stops[r->n_stop++] = strdup(stop->valuestring);
    } else if (cJSON_IsArray(stop)) {
        if (cJSON_GetArraySize(stop) > MAX_STOP) {
            api_fail(e, 400, "stop", "invalid_value", "'stop' holds %d strings, at most %d",
                     cJSON_GetArraySize(stop), MAX_STOP);
            goto out;
        }
        const cJSON *it;
        int k = 0;
        cJSON_ArrayForEach(it, stop) {
            if (!cJSON_IsString(it) || !it->valuestring[0]) {
                char pp[32];
                snprintf(pp, sizeof pp, "stop[%d]", k);
                api_fail(e, 400, pp, "invalid_type", "'%s' must be a non-empty string, got %s",
                         pp, cJSON_IsString(it) ? "an empty string" : type_name(it));
                goto out;
            }
            r->stops[r->n_stop++] = strdup(it->valuestring);
            k++;
        }
    } else if (!is_null(stop)) {
        api_fail(e, 400, "stop", "invalid_type",
                 "'stop' must be a string or an array of strings, got %s", type_name(stop));
        goto out;
    }
    /* unsupported features that change the answer: refused rather than ignored */
    const cJSON *v;
    if (ep == EP_COMPLETIONS && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "echo"))) {
        api_fail(e, 400, "echo", "unsupported_value", "'echo' is not supported");
        goto out;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "suffix")) && !is_null(v)) {
        api_fail(e, 400, "suffix", "unsupported_value", "'suffix' is not supported");
        goto out;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "best_of")) && !is_null(v) &&
        !(cJSON_IsNumber(v) && v->valuedouble == (double)n)) {
        api_fail(e, 400, "best_of", "unsupported_value", "'best_of' is not supported");
        goto out;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "tools")) && cJSON_GetArraySize(v) > 0) {
        api_fail(e, 400, "tools", "unsupported_value", "'tools' is not supported");
        goto out;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(root, "logit_bias")) && cJSON_IsObject(v) &&
        v->child) {
        api_fail(e, 400, "logit_bias", "unsupported_value", "'logit_bias' is not supported");
        goto out;
    }

    /* prompts */
    if (ep == EP_CHAT) {
        buf text = {0};
        if (chat_prompt(s, cJSON_GetObjectItemCaseSensitive(root, "messages"), &text, e) < 0) {
            buf_free(&text);
            goto out;
        }
        int trc = tokenize(s, text.p, text.n, &r->prompt_ids[0], &r->prompt_len[0], "messages", e);
        buf_free(&text);
        if (trc < 0) goto out;
        r->n_prompts = 1;
        if (s->chatml_stop && r->n_stop < MAX_STOP + 1) r->stops[r->n_stop++] = strdup("<|im_end|>");
    } else {
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (is_null(pr)) {
            api_fail(e, 400, "prompt", "missing_field", "'prompt' is required");
            goto out;
        }
        if (cJSON_IsString(pr)) {
            if (tokenize(s, pr->valuestring, strlen(pr->valuestring), &r->prompt_ids[0],
                         &r->prompt_len[0], "prompt", e) < 0)
                goto out;
            r->n_prompts = 1;
        } else if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) > 0 &&
                   cJSON_IsNumber(pr->child)) { /* one prompt of token ids */
            int k = cJSON_GetArraySize(pr);
            r->prompt_ids[0] = malloc(sizeof(int32_t) * (size_t)k);
            r->n_prompts = 1;
            int j = 0;
            const cJSON *it;
            cJSON_ArrayForEach(it, pr) {
                if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
                    it->valuedouble < 0 || it->valuedouble >= s->V) {
                    char pp[32];
                    snprintf(pp, sizeof pp, "prompt[%d]", j);
                    api_fail(e, 400, pp, "invalid_value",
                             "'%s' must be a token id in [0, %d)", pp, s->V);
                    goto out;
                }
                r->prompt_ids[0][j++] = (int32_t)it->valuedouble;
            }
            r->prompt_len[0] = j;
        } else if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) > 0) {
            int k = cJSON_GetArraySize(pr);
            if (k * n > MAX_N) {
                api_fail(e, 400, "prompt", "invalid_value",
                         "%d prompts times n = %lld choices: at most %d", k, n, MAX_N);
                goto out;
            }
            const cJSON *it;
            int j = 0;
            cJSON_ArrayForEach(it, pr) {
                char pp[32];
                snprintf(pp, sizeof pp, "prompt[%d]", j);
                if (!cJSON_IsString(it)) {
                    api_fail(e, 400, pp, "invalid_type", "'%s' must be a string, got %s", pp,
                             type_name(it));
                    goto out;
                }
                if (tokenize(s, it->valuestring, strlen(it->valuestring), &r->prompt_ids[j],
                             &r->prompt_len[j], pp, e) < 0)
                    goto out;
                r->n_prompts = ++j;
            }
        } else {
            api_fail(e, 400, "prompt", cJSON_IsArray(pr) ? "invalid_value" : "invalid_type",
                     cJSON_IsArray(pr) ? "'prompt' is an empty array"
                                       : "'prompt' must be a string, an array of strings or an "
                                         "array of token ids, got %s",
                     type_name(pr));
            goto out;
        }
    }
    const char *pparam = ep == EP_CHAT ? "messages" : "prompt";
    int longest = 0;
    for (int i = 0; i < r->n_prompts; i++) {
        if (r->prompt_len[i] == 0) {
            api_fail(e, 400, pparam, "invalid_value", "'%s' is empty (no tokens)", pparam);
            goto out;
        }
        if (r->prompt_len[i] > longest) longest = r->prompt_len[i];
    }
    if (longest >= s->max_ctx) {
        api_fail(e, 400, pparam, "context_length_exceeded",
                 "the prompt has %d tokens; this server's context is %d tokens (--max-ctx), "
                 "which leaves no room for a completion",
                 longest, s->max_ctx);
        goto out;
    }
    const char *mt_key = "max_tokens";
    int has_mt = opt_int(root, "max_tokens", 1, 1e15, &ll, e);
    if (has_mt < 0) goto out;
    if (!has_mt && ep == EP_CHAT) {
        has_mt = opt_int(root, "max_completion_tokens", 1, 1e15, &ll, e);
        if (has_mt < 0) goto out;
        if (has_mt) mt_key = "max_completion_tokens";
    }
    if (has_mt) {
        if (longest + ll > s->max_ctx) {
            api_fail(e, 400, mt_key, "context_length_exceeded",
                     "'%s' is %lld, but the prompt has %d tokens and the context is %d tokens: "
                     "at most %d new tokens fit",
                     mt_key, ll, longest, s->max_ctx, s->max_ctx - longest);
            goto out;
        }
        p.max_tokens = (int)ll;
    } else {
        p.max_tokens = ep == EP_CHAT ? s->max_ctx - longest : 16; /* OpenAI's defaults */
        if (p.max_tokens > s->max_ctx - longest) p.max_tokens = s->max_ctx - longest;
    }
    p.tok = s->tok;
    p.on_token = on_token;
    /* without logprobs no token needs its logits: a model on a device then samples there and
     * downloads no logits per token */
    if (r->logprobs < 0) p.flags |= HYB_REQ_FINAL_LOGITS;
    if (s->eos >= 0) p.eos[p.n_eos++] = s->eos;
    p.stop = (const char *const *)r->stops;
    p.n_stop = r->n_stop;
    r->p = p;
    r->n_choices = (int)n * r->n_prompts;
    for (int i = 0; i < r->n_choices; i++) {
        r->ch[i].r = r;
        r->ch[i].index = i;
        r->ch[i].prompt = i / (int)n;
        r->ch[i].eng_id = -1;
        r->ch[i].finish = -1;
    }
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- responses ---------------------------------------------------------------------------------- */

static const char *finish_name(int f) {
    switch (f) {
    case HYB_FINISH_EOS:
    case HYB_FINISH_STOP: return "stop";
    case HYB_FINISH_LENGTH:
    case HYB_FINISH_CTX: return "length";
    default: return "error";
    }
}

static cJSON *str_clean(const char *s, size_t n) {
    char *c = utf8_clean(s, n);
    cJSON *j = cJSON_CreateString(c ? c : "");
    free(c);
    return j;
}

static cJSON *token_str(srv *s, int32_t id) {
    size_t len = 0;
    const char *p = hyb_tokenizer_token_to_piece(s->tok, id, &len);
    return str_clean(p ? p : "", p ? len : 0);
}

static cJSON *token_bytes(srv *s, int32_t id) {
    size_t len = 0;
    const char *p = hyb_tokenizer_token_to_piece(s->tok, id, &len);
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; p && i < len; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)p[i]));
    return a;
}

/* logprobs of entries [from, to) of a choice in the endpoint's format */
static cJSON *logprobs_json(srv *s, int ep, const lp_entry *lps, int from, int to,
                            size_t text_offset) {
    if (ep == EP_COMPLETIONS) {
        cJSON *o = cJSON_CreateObject();
        cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
        cJSON *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
        cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
        cJSON *off = cJSON_AddArrayToObject(o, "text_offset");
        for (int i = from; i < to; i++) {
            cJSON_AddItemToArray(toks, token_str(s, lps[i].id));
            cJSON_AddItemToArray(tlp, cJSON_CreateNumber(lps[i].lp));
            cJSON *t = cJSON_CreateObject();
            for (int k = 0; k < lps[i].n_top; k++) {
                size_t len = 0;
                const char *p = hyb_tokenizer_token_to_piece(s->tok, lps[i].top[k].id, &len);
                char *c = utf8_clean(p ? p : "", p ? len : 0);
                if (c && !cJSON_GetObjectItemCaseSensitive(t, c))
                    cJSON_AddNumberToObject(t, c, lps[i].top[k].lp);
                free(c);
            }
            cJSON_AddItemToArray(top, t);
            cJSON_AddItemToArray(off, cJSON_CreateNumber((double)text_offset));
            size_t len = 0;
            hyb_tokenizer_token_to_piece(s->tok, lps[i].id, &len);
            text_offset += len;
        }
        return o;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *content = cJSON_AddArrayToObject(o, "content");
    for (int i = from; i < to; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddItemToObject(e, "token", token_str(s, lps[i].id));
        cJSON_AddNumberToObject(e, "logprob", lps[i].lp);
        cJSON_AddItemToObject(e, "bytes", token_bytes(s, lps[i].id));
        cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < lps[i].n_top; k++) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddItemToObject(t, "token", token_str(s, lps[i].top[k].id));
            cJSON_AddNumberToObject(t, "logprob", lps[i].top[k].lp);
            cJSON_AddItemToObject(t, "bytes", token_bytes(s, lps[i].top[k].id));
            cJSON_AddItemToArray(top, t);
        }
        cJSON_AddItemToArray(content, e);
    }
    cJSON_AddNullToObject(o, "refusal");
    return o;
}

static cJSON *usage_json(req *r) {
    long long pt = 0, ct = 0;
    for (int i = 0; i < r->n_prompts; i++)
        pt += r->prompt_len[i];
    for (int i = 0; i < r->n_choices; i++)
        ct += r->ch[i].n_tokens;
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)pt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)ct);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(pt + ct));
    return u;
}

static cJSON *envelope(srv *s, req *r, int chunk) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object",
                            r->ep == EP_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                             : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", s->model_id);
    cJSON_AddStringToObject(o, "system_fingerprint", "hyb-" HYB_VERSION);
    return o;
}

/* The whole answer of a finished non-streaming request (mu held). */
static char *final_json(srv *s, req *r) {
    cJSON *o = envelope(s, r, 0);
    cJSON *chs = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < r->n_choices; i++) {
        choice *c = &r->ch[i];
        const char *t = c->final_text ? c->final_text : c->text.p ? c->text.p : "";
        size_t tn = c->final_text ? c->final_len : c->text.n;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "index", i);
        if (r->ep == EP_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(j, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddItemToObject(m, "content", str_clean(t, tn));
            cJSON_AddNullToObject(m, "refusal");
        } else {
            cJSON_AddItemToObject(j, "text", str_clean(t, tn));
        }
        if (r->logprobs >= 0)
            cJSON_AddItemToObject(j, "logprobs", logprobs_json(s, r->ep, c->lps, 0, c->n_lps, 0));
        else
            cJSON_AddNullToObject(j, "logprobs");
        cJSON_AddStringToObject(j, "finish_reason", finish_name(c->finish));
        cJSON_AddItemToArray(chs, j);
    }
    cJSON_AddItemToObject(o, "usage", usage_json(r));
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

static void sse(buf *out, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return;
    buf_puts(out, "data: ");
    buf_puts(out, s);
    buf_puts(out, "\n\n");
    free(s);
}

/* Format the chunks that became available into r->out (mu held). Returns 1 when the stream is
 * complete ([DONE] written). */
static int stream_collect(srv *s, req *r) {
    for (int i = 0; i < r->n_choices; i++) {
        choice *c = &r->ch[i];
        int done = c->finish >= 0;
        size_t avail = c->text.n - c->text_sent;
        size_t ready = utf8_ready(c->text.p + c->text_sent, avail, done);
        int new_lps = c->n_lps - c->lps_sent;
        int need_role = r->ep == EP_CHAT && !c->started;
        if (ready == 0 && new_lps == 0 && !need_role && !(done && !c->finish_sent)) continue;
        if (ready > 0 || new_lps > 0 || need_role) {
            cJSON *o = envelope(s, r, 1);
            cJSON *chs = cJSON_AddArrayToObject(o, "choices");
            cJSON *j = cJSON_CreateObject();
            cJSON_AddNumberToObject(j, "index", i);
            if (r->ep == EP_CHAT) {
                cJSON *d = cJSON_AddObjectToObject(j, "delta");
                if (need_role) cJSON_AddStringToObject(d, "role", "assistant");
                cJSON_AddItemToObject(d, "content", str_clean(c->text.p + c->text_sent, ready));
            } else {
                cJSON_AddItemToObject(j, "text", str_clean(c->text.p + c->text_sent, ready));
            }
            if (r->logprobs >= 0 && new_lps > 0) {
                size_t off = 0;
                for (int k = 0; k < c->lps_sent; k++) {
                    size_t len = 0;
                    hyb_tokenizer_token_to_piece(s->tok, c->lps[k].id, &len);
                    off += len;
                }
                cJSON_AddItemToObject(
                    j, "logprobs", logprobs_json(s, r->ep, c->lps, c->lps_sent, c->n_lps, off));
            } else {
                cJSON_AddNullToObject(j, "logprobs");
            }
            cJSON_AddNullToObject(j, "finish_reason");
            cJSON_AddItemToArray(chs, j);
            sse(&r->out, o);
            c->started = 1;
            c->text_sent += ready;
            c->lps_sent = c->n_lps;
        }
        if (done && !c->finish_sent) {
            cJSON *o = envelope(s, r, 1);
            cJSON *chs = cJSON_AddArrayToObject(o, "choices");
            cJSON *j = cJSON_CreateObject();
            cJSON_AddNumberToObject(j, "index", i);
            if (r->ep == EP_CHAT)
                cJSON_AddObjectToObject(j, "delta");
            else
                cJSON_AddStringToObject(j, "text", "");
            cJSON_AddNullToObject(j, "logprobs");
            cJSON_AddStringToObject(j, "finish_reason", finish_name(c->finish));
            cJSON_AddItemToArray(chs, j);
            sse(&r->out, o);
            c->finish_sent = 1;
        }
    }
    if (r->n_done < r->n_choices || r->done_sent) return r->done_sent;
    if (r->failed) {
        apierr e = {0};
        api_fail(&e, 500, "", "server_error", "the engine could not run this request");
        char *j = api_error_json(&e);
        if (j) buf_printf(&r->out, "data: %s\n\n", j);
        free(j);
    }
    if (r->include_usage) {
        cJSON *o = envelope(s, r, 1);
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", usage_json(r));
        sse(&r->out, o);
    }
    buf_puts(&r->out, "data: [DONE]\n\n");
    r->done_sent = 1;
    return 1;
}

/* ---- HTTP --------------------------------------------------------------------------------------- */

typedef struct conn_ctx {
    srv *s;
    int ep, method_ok, status;
    buf body;
    int too_big;
    req *r; /* a streaming request, released by the response's free callback */
} conn_ctx;

static volatile int g_closing; /* shutting down: answers close their connection */

static enum MHD_Result send_text(struct MHD_Connection *conn, int status, const char *ctype,
                                 const char *text, size_t n) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(n, (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", ctype);
    if (status == 429 || status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    if (status == 401) MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (g_closing) MHD_add_response_header(resp, "Connection", "close");
    enum MHD_Result rc = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result send_json(conn_ctx *cc, struct MHD_Connection *conn, int status,
                                 const char *json) {
    count_status(cc->s, cc->ep, status);
    return send_text(conn, status, "application/json", json ? json : "{}", json ? strlen(json) : 2);
}

static enum MHD_Result send_error(conn_ctx *cc, struct MHD_Connection *conn, const apierr *e) {
    char *j = api_error_json(e);
    enum MHD_Result rc = send_json(cc, conn, e->status, j);
    free(j);
    return rc;
}

/* Has the client closed its side (or the connection failed)? */
static int client_gone(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    struct pollfd pf = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&pf, 1, 0) <= 0) return 0;
    return (pf.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* Wait (mu held) up to WAIT_SLICE_MS for the request's condition variable. */
static void wait_slice(req *r) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WAIT_SLICE_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_cond_timedwait(&r->cv, &r->s->mu, &ts);
}

static void cancel(req *r) {
    if (!r->cancelled) {
        r->cancelled = 1;
        pthread_cond_signal(&r->s->work);
    }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max) {
    req *r = (req *)cls;
    srv *s = r->s;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (r->out_off < r->out.n) {
            size_t k = r->out.n - r->out_off;
            if (k > max) k = max;
            memcpy(out, r->out.p + r->out_off, k);
            r->out_off += k;
            if (r->out_off == r->out.n) r->out.n = r->out_off = 0;
            pthread_mutex_unlock(&s->mu);
            return (ssize_t)k;
        }
        if (r->done_sent) {
            pthread_mutex_unlock(&s->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        stream_collect(s, r);
        if (r->out.n > 0) continue;
        pthread_mutex_unlock(&s->mu);
        int gone = client_gone(r->conn);
        pthread_mutex_lock(&s->mu);
        if (gone) {
            cancel(r);
            pthread_mutex_unlock(&s->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        wait_slice(r);
    }
}

static void stream_free(void *cls) {
    req *r = (req *)cls;
    srv *s = r->s;
    pthread_mutex_lock(&s->mu);
    if (r->n_done < r->n_choices) cancel(r);
    req_unref(r);
    pthread_mutex_unlock(&s->mu);
}

static int check_auth(srv *s, struct MHD_Connection *conn, apierr *e) {
    if (!s->cfg.api_key || !*s->cfg.api_key) return 0;
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h)
        return api_fail(e, 401, "", "invalid_api_key",
                        "no API key: send the header 'Authorization: Bearer <key>'");
    if (strncasecmp(h, "Bearer ", 7) != 0)
        return api_fail(e, 401, "", "invalid_api_key",
                        "the Authorization header must be 'Bearer <key>'");
    const char *k = h + 7;
    while (*k == ' ')
        k++;
    /* constant time over the key's length */
    size_t a = strlen(k), b = strlen(s->cfg.api_key);
    unsigned diff = (unsigned)(a != b);
    for (size_t i = 0; i < b; i++)
        diff |= (unsigned char)s->cfg.api_key[i] ^ (unsigned char)(i < a ? k[i] : 0);
    if (diff) return api_fail(e, 401, "", "invalid_api_key", "incorrect API key");
    return 0;
}

static char *metrics_text(srv *s) {
    buf b = {0};
    pthread_mutex_lock(&s->mu);
    buf_puts(&b, "# HELP hyb_requests_total HTTP requests answered, by endpoint and status.\n"
                 "# TYPE hyb_requests_total counter\n");
    for (int ep = 0; ep < EP_COUNT; ep++)
        for (int i = 0; i < N_STATUS; i++)
            if (s->requests[ep][i] || (ep <= EP_CHAT && status_codes[i] == 200))
                buf_printf(&b, "hyb_requests_total{endpoint=\"%s\",status=\"%d\"} %lld\n",
                           ep_names[ep], status_codes[i], s->requests[ep][i]);
    long sec = (long)now_s();
    long long recent = 0;
    for (int i = 0; i < 16; i++)
        if (s->tok_bucket_sec[i] < sec && s->tok_bucket_sec[i] >= sec - 10)
            recent += s->tok_bucket[i];
    buf_printf(&b,
               "# HELP hyb_prompt_tokens_total Prompt tokens of the requests run.\n"
               "# TYPE hyb_prompt_tokens_total counter\nhyb_prompt_tokens_total %lld\n"
               "# HELP hyb_generation_tokens_total Tokens generated.\n"
               "# TYPE hyb_generation_tokens_total counter\nhyb_generation_tokens_total %lld\n"
               "# HELP hyb_requests_cancelled_total Requests stopped because the client went "
               "away.\n"
               "# TYPE hyb_requests_cancelled_total counter\nhyb_requests_cancelled_total %lld\n"
               "# HELP hyb_requests_rejected_total Requests refused because the queue was "
               "full.\n"
               "# TYPE hyb_requests_rejected_total counter\nhyb_requests_rejected_total %lld\n"
               "# HELP hyb_queue_length Requests waiting for a slot.\n"
               "# TYPE hyb_queue_length gauge\nhyb_queue_length %d\n"
               "# HELP hyb_active_slots Slots running a request.\n"
               "# TYPE hyb_active_slots gauge\nhyb_active_slots %d\n"
               "# HELP hyb_slots Slots (sequences decoded together).\n"
               "# TYPE hyb_slots gauge\nhyb_slots %d\n"
               "# HELP hyb_tokens_per_second Tokens generated per second over the last 10 s.\n"
               "# TYPE hyb_tokens_per_second gauge\nhyb_tokens_per_second %.3f\n"
               "# HELP hyb_time_to_first_token_seconds Arrival to first token.\n"
               "# TYPE hyb_time_to_first_token_seconds summary\n"
               "hyb_time_to_first_token_seconds_sum %.6f\n"
               "hyb_time_to_first_token_seconds_count %lld\n"
               "# HELP hyb_uptime_seconds Seconds since the server started.\n"
               "# TYPE hyb_uptime_seconds gauge\nhyb_uptime_seconds %.3f\n",
               s->prompt_tokens, s->gen_tokens, s->cancelled_total, s->queue_rejected,
               s->q_len + s->engine_waiting, s->active, s->cfg.slots, recent / 10.0, s->ttft_sum,
               s->ttft_count, now_s() - s->t_start);
    pthread_mutex_unlock(&s->mu);
    return b.p;
}

static enum MHD_Result handle_get(conn_ctx *cc, struct MHD_Connection *conn) {
    srv *s = cc->s;
    if (cc->ep == EP_HEALTH) {
        pthread_mutex_lock(&s->mu);
        int stopping = s->stopping, active = s->active, q = s->q_len;
        pthread_mutex_unlock(&s->mu);
        char j[512];
        snprintf(j, sizeof j,
                 "{\"status\":\"%s\",\"model\":\"%s\",\"slots\":%d,\"active\":%d,\"queued\":%d}",
                 stopping ? "shutting_down" : "ok", s->model_id, s->cfg.slots, active, q);
        return send_json(cc, conn, stopping ? 503 : 200, j);
    }
    if (cc->ep == EP_MODELS) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "object", "list");
        cJSON *d = cJSON_AddArrayToObject(o, "data");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "id", s->model_id);
        cJSON_AddStringToObject(m, "object", "model");
        cJSON_AddNumberToObject(m, "created", (double)s->created);
        cJSON_AddStringToObject(m, "owned_by", "hyb");
        cJSON_AddNumberToObject(m, "max_model_len", s->max_ctx);
        cJSON_AddItemToArray(d, m);
        char *j = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        enum MHD_Result rc = send_json(cc, conn, 200, j);
        free(j);
        return rc;
    }
    char *t = metrics_text(s);
    count_status(s, cc->ep, 200);
    enum MHD_Result rc = send_text(conn, 200, "text/plain; version=0.0.4", t ? t : "",
                                   t ? strlen(t) : 0);
    free(t);
    return rc;
}

static enum MHD_Result handle_post(conn_ctx *cc, struct MHD_Connection *conn) {
    srv *s = cc->s;
    apierr e = {0};
    req *r = calloc(1, sizeof *r);
    if (!r) {
        api_fail(&e, 500, "", "server_error", "out of memory");
        return send_error(cc, conn, &e);
    }
    r->s = s;
    r->ep = cc->ep;
    r->refs = 1;
    r->conn = conn;
    r->t_arrival = now_s();
    r->created = (long)time(NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_mutex_lock(&s->mu);
    r->live_next = s->live.live_next;
    r->live_prev = &s->live;
    s->live.live_next->live_prev = r;
    s->live.live_next = r;
    s->n_live++;
    uint64_t seq = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    snprintf(r->id, sizeof r->id, "%s-%llx%06llx", cc->ep == EP_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)s->created, (unsigned long long)seq);

    if (parse_request(s, cc->ep, cc->body.p ? cc->body.p : "", cc->body.n, r, &e) < 0) {
        pthread_mutex_lock(&s->mu);
        req_unref(r);
        pthread_mutex_unlock(&s->mu);
        return send_error(cc, conn, &e);
    }
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        req_unref(r);
        pthread_mutex_unlock(&s->mu);
        api_fail(&e, 503, "", "shutting_down", "the server is shutting down");
        return send_error(cc, conn, &e);
    }
    if (s->q_len >= s->cfg.max_queue) {
        s->queue_rejected++;
        req_unref(r);
        int q = s->q_len;
        pthread_mutex_unlock(&s->mu);
        api_fail(&e, 429, "", "queue_full",
                 "the server is busy: %d requests are waiting for a slot (--max-queue); retry "
                 "later",
                 q);
        return send_error(cc, conn, &e);
    }
    r->refs++; /* the engine's */
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->q_len++;
    pthread_cond_signal(&s->work);

    if (r->stream) {
        pthread_mutex_unlock(&s->mu);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r,
                                              stream_free);
        if (!resp) {
            pthread_mutex_lock(&s->mu);
            cancel(r);
            req_unref(r);
            pthread_mutex_unlock(&s->mu);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        count_status(s, cc->ep, 200);
        enum MHD_Result rc = MHD_queue_response(conn, 200, resp);
        MHD_destroy_response(resp); /* stream_free releases r when MHD is done with it */
        return rc;
    }
    /* non-streaming: wait here, watching the socket */
    while (r->n_done < r->n_choices) {
        wait_slice(r);
        if (r->n_done == r->n_choices) break;
        pthread_mutex_unlock(&s->mu);
        int gone = client_gone(conn);
        pthread_mutex_lock(&s->mu);
        if (gone) {
            cancel(r);
            req_unref(r);
            pthread_mutex_unlock(&s->mu);
            return MHD_NO; /* closes the connection */
        }
    }
    char *j = NULL;
    if (r->failed)
        api_fail(&e, 500, "", "server_error", "the engine could not run this request");
    else
        j = final_json(s, r);
    req_unref(r);
    pthread_mutex_unlock(&s->mu);
    if (!j) {
        if (!e.status) api_fail(&e, 500, "", "server_error", "out of memory");
        return send_error(cc, conn, &e);
    }
    enum MHD_Result rc = send_json(cc, conn, 200, j);
    free(j);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls) {
    srv *s = (srv *)cls;
    conn_ctx *cc = *con_cls;
    apierr e = {0};
    if (!cc) { /* headers are in: route, check, then read the body */
        cc = calloc(1, sizeof *cc);
        if (!cc) return MHD_NO;
        cc->s = s;
        *con_cls = cc;
        pthread_mutex_lock(&s->mu);
        s->n_busy++;
        pthread_mutex_unlock(&s->mu);
        int post = strcmp(method, "POST") == 0;
        int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
        if (strcmp(url, "/v1/completions") == 0 || strcmp(url, "/completions") == 0)
            cc->ep = EP_COMPLETIONS, cc->method_ok = post;
        else if (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0)
            cc->ep = EP_CHAT, cc->method_ok = post;
        else if (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0)
            cc->ep = EP_MODELS, cc->method_ok = get;
        else if (strcmp(url, "/health") == 0)
            cc->ep = EP_HEALTH, cc->method_ok = get;
        else if (strcmp(url, "/metrics") == 0)
            cc->ep = EP_METRICS, cc->method_ok = get;
        else
            cc->ep = EP_OTHER;
        if (cc->ep == EP_OTHER) {
            api_fail(&e, 404, "", "not_found", "no such endpoint: %s %s", method, url);
            return send_error(cc, conn, &e);
        }
        if (!cc->method_ok) {
            api_fail(&e, 405, "", "method_not_allowed", "%s is not allowed on %s (use %s)", method,
                     url, cc->ep <= EP_CHAT ? "POST" : "GET");
            struct MHD_Response *resp = NULL;
            char *j = api_error_json(&e);
            count_status(s, cc->ep, 405);
            resp = MHD_create_response_from_buffer(j ? strlen(j) : 0, j ? j : (char *)"",
                                                   MHD_RESPMEM_MUST_COPY);
            free(j);
            if (!resp) return MHD_NO;
            MHD_add_response_header(resp, "Content-Type", "application/json");
            MHD_add_response_header(resp, "Allow", cc->ep <= EP_CHAT ? "POST" : "GET, HEAD");
            enum MHD_Result rc = MHD_queue_response(conn, 405, resp);
            MHD_destroy_response(resp);
            return rc;
        }
        if (cc->ep != EP_HEALTH && check_auth(s, conn, &e) < 0) return send_error(cc, conn, &e);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->cfg.max_body) {
            api_fail(&e, 413, "", "request_too_large",
                     "the body is %s bytes; this server takes at most %zu (--max-body)", cl,
                     s->cfg.max_body);
            return send_error(cc, conn, &e);
        }
        return MHD_YES;
    }
    if (*upload_size) { /* body data */
        if (!cc->too_big && cc->body.n + *upload_size > s->cfg.max_body) cc->too_big = 1;
        if (!cc->too_big && buf_put(&cc->body, upload, *upload_size) < 0) cc->too_big = 1;
        *upload_size = 0;
        return MHD_YES;
    }
    if (cc->too_big) {
        api_fail(&e, 413, "", "request_too_large",
                 "the body is larger than %zu bytes (--max-body)", s->cfg.max_body);
        return send_error(cc, conn, &e);
    }
    if (cc->ep <= EP_CHAT) return handle_post(cc, conn);
    return handle_get(cc, conn);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    conn_ctx *cc = *con_cls;
    if (!cc) return;
    srv *s = cc->s;
    pthread_mutex_lock(&s->mu);
    if (--s->n_busy == 0) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
    buf_free(&cc->body);
    free(cc);
    *con_cls = NULL;
}

/* ---- startup and shutdown ------------------------------------------------------------------------- */

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void model_name(const char *path, char *out, size_t n) {
    char tmp[1024];
    snprintf(tmp, sizeof tmp, "%s", path);
    size_t len = strlen(tmp);
    while (len > 1 && tmp[len - 1] == '/')
        tmp[--len] = 0;
    const char *base = strrchr(tmp, '/');
    base = base ? base + 1 : tmp;
    snprintf(out, n, "%s", base);
    len = strlen(out);
    if (len > 5 && strcmp(out + len - 5, ".gguf") == 0) out[len - 5] = 0;
}

static int load(srv *s) {
    const hyb_serve_config *c = &s->cfg;
    const hyb_backend *be = NULL;
    if (c->device && strcmp(c->device, "cpu") != 0 && hyb_backend_open(c->device, &be) != HYB_OK)
        return HYB_ERR_ARG;
    int dir = is_dir(c->model_path);
    int rc = dir ? hyb_model_load_hf_dir(c->model_path, &s->m)
                 : hyb_model_load_gguf_ex(c->model_path, c->quant, &s->m);
    if (rc != HYB_OK) {
        s->m = NULL;
        return rc;
    }
    if (c->tokenizer) {
        s->tok = hyb_tokenizer_load_json(c->tokenizer);
    } else if (dir) {
        char tp[1200];
        snprintf(tp, sizeof tp, "%s/tokenizer.json", c->model_path);
        s->tok = hyb_tokenizer_load_json(tp);
    } else {
        s->tok = hyb_tokenizer_load_gguf(c->model_path);
    }
    if (!s->tok) return HYB_ERR_ARG;
    /* the chat template that came with the tokenizer (or the model file); ChatML without one */
    s->chat_template = hyb_tokenizer_chat_template(c->tokenizer ? c->tokenizer : c->model_path);
    if (s->chat_template && hyb_chat_template_check(s->chat_template) != HYB_OK) {
        hyb_log(HYB_LOG_WARN, "serve: the model's chat template cannot be used (%s); chat requests "
                "are written as ChatML", hyb_error());
        hyb_error_clear();
        free(s->chat_template);
        s->chat_template = NULL;
    }
    if (!s->chat_template) s->chat_template = strdup(hyb_chat_template_chatml());
    if (!s->chat_template) return hyb_error_set(HYB_ERR_NOMEM, "serve: out of memory");
    s->chatml_stop = strstr(s->chat_template, "<|im_end|>") != NULL;
    s->bos_text = hyb_tokenizer_special_text(s->tok, hyb_tokenizer_bos_id(s->tok));
    s->eos_text = hyb_tokenizer_special_text(s->tok, hyb_tokenizer_eos_id(s->tok));
    if (!s->bos_text || !s->eos_text) return hyb_error_set(HYB_ERR_NOMEM, "serve: out of memory");
    if (be && hyb_model_to_device(s->m, be) != HYB_OK) return HYB_ERR_ARG;
    int max_seq = s->m->map->max_seq;
    s->max_ctx = c->max_ctx ? c->max_ctx : (max_seq < 2048 ? max_seq : 2048);
    if (s->max_ctx > max_seq)
        return hyb_error_set(HYB_ERR_ARG, "--max-ctx %d is larger than the model's max_seq %d",
                             s->max_ctx, max_seq);
    if (s->max_ctx < 2) return hyb_error_set(HYB_ERR_ARG, "--max-ctx must be at least 2");
    s->V = s->m->V;
    s->eos = hyb_tokenizer_eos_id(s->tok);
    if (s->eos >= s->V) s->eos = -1;
    hyb_engine_opts eo = hyb_engine_defaults();
    eo.slots = c->slots;
    eo.max_ctx = s->max_ctx;
    eo.prefill_chunk = c->prefill_chunk;
    eo.prefix_block = c->prefix_block;
    eo.kv_cache = c->kv_cache;
    if (hyb_engine_new(s->m, &eo, &s->e) != HYB_OK) {
        s->e = NULL;
        return HYB_ERR_ARG;
    }
    if (c->name && *c->name)
        snprintf(s->model_id, sizeof s->model_id, "%s", c->name);
    else
        model_name(c->model_path, s->model_id, sizeof s->model_id);
    return HYB_OK;
}

static void unload(srv *s) {
    hyb_engine_free(s->e);
    hyb_model_free(s->m);
    hyb_tokenizer_free(s->tok);
    free(s->chat_template);
    free(s->bos_text);
    free(s->eos_text);
}

/* The listening socket, made before the model loads so that a bad address or a port in use
 * fails at once. */
static int open_listener(const char *host, int port, int *fd_out, int *v6) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &ai);
    if (rc != 0 || !ai)
        return hyb_error_set(HYB_ERR_ARG, "--host '%s': %s", host, gai_strerror(rc));
    *v6 = ai->ai_family == AF_INET6;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 256) != 0) {
        int err = errno;
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return hyb_error_set(HYB_ERR_IO, "cannot listen on %s%s%s:%d: %s", *v6 ? "[" : "", host,
                             *v6 ? "]" : "", port, strerror(err));
    }
    freeaddrinfo(ai);
    *fd_out = fd;
    return HYB_OK;
}

int hyb_serve_run(const hyb_serve_config *cfg) {
    srv *s = calloc(1, sizeof *s);
    if (!s) return hyb_error_set(HYB_ERR_NOMEM, "hyb serve: out of memory");
    s->cfg = *cfg;
    if (!s->cfg.host) s->cfg.host = "127.0.0.1";
    if (s->cfg.slots < 1 || s->cfg.max_queue < 0 || s->cfg.max_body < 1 || s->cfg.port < 0 ||
        s->cfg.port > 65535) {
        free(s);
        return hyb_error_set(HYB_ERR_ARG, "hyb serve: bad slots/max_queue/max_body/port");
    }
    s->live.live_next = s->live.live_prev = &s->live;
    s->t_start = now_s();
    s->created = (long)time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->idle, NULL);
    int lfd = -1, v6 = 0;
    int rc = open_listener(s->cfg.host, s->cfg.port, &lfd, &v6);
    if (rc == HYB_OK) rc = load(s);
    if (rc != HYB_OK) {
        if (lfd >= 0) close(lfd);
        unload(s);
        free(s);
        return rc;
    }

    /* SIGINT/SIGTERM are taken with sigtimedwait below: block them (and SIGPIPE) in this thread
     * before any thread starts, so every thread inherits the mask */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old);

    pthread_t eng;
    pthread_create(&eng, NULL, engine_main, s);
    /* libmicrohttpd's own messages (a client that closed early, a malformed request line) only
     * with HYB_LOG=debug: each one is also answered or counted here */
    const char *lv = getenv("HYB_LOG");
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_POLL | MHD_USE_ITC;
    if (lv && strcmp(lv, "debug") == 0) flags |= MHD_USE_ERROR_LOG;
    if (v6) flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s, MHD_OPTION_LISTEN_SOCKET,
        (MHD_socket)lfd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(s->cfg.max_queue + s->cfg.slots + 64), MHD_OPTION_END);
    if (!d) {
        int err = errno;
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->mu);
        pthread_join(eng, NULL);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        close(lfd);
        rc = hyb_error_set(HYB_ERR_IO, "cannot start the HTTP server on %s:%d: %s", s->cfg.host,
                           s->cfg.port, strerror(err ? err : EINVAL));
        unload(s);
        free(s);
        return rc;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : s->cfg.port;
    if (!s->cfg.quiet) {
        hyb_engine_stats st;
        hyb_engine_get_stats(s->e, &st);
        fprintf(stderr,
                "hyb serve: model %s (%d layers, vocab %d), %d slots, context %d tokens (%.0f MiB "
                "of state), queue %d\nhyb serve: listening on http://%s%s%s:%d/v1%s\n",
                s->model_id, s->m->L, s->V, s->cfg.slots, s->max_ctx,
                (double)st.state_bytes / (1024.0 * 1024.0), s->cfg.max_queue,
                v6 ? "[" : "", s->cfg.host, v6 ? "]" : "", port,
                s->cfg.api_key && *s->cfg.api_key ? " (API key required)" : "");
        fflush(stderr);
    }

    /* wait for a signal; then stop accepting, finish what was accepted, exit */
    int sig = 0;
    for (;;) {
        siginfo_t si;
        struct timespec ts = {0, 200000000L};
        int k = sigtimedwait(&set, &si, &ts);
        if (k == SIGINT || k == SIGTERM) {
            sig = k;
            break;
        }
    }
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    g_closing = 1;
    int running = s->n_live;
    pthread_mutex_unlock(&s->mu);
    MHD_socket ls = MHD_quiesce_daemon(d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    if (!s->cfg.quiet) {
        fprintf(stderr, "hyb serve: %s: not accepting connections; finishing %d request%s\n",
                sig == SIGINT ? "SIGINT" : "SIGTERM", running, running == 1 ? "" : "s");
        fflush(stderr);
    }
    pthread_mutex_lock(&s->mu);
    while (s->n_live > 0 || s->n_busy > 0) { /* answered and sent */
        pthread_mutex_unlock(&s->mu);
        siginfo_t si;
        struct timespec ts = {0, 100000000L};
        int k = sigtimedwait(&set, &si, &ts);
        pthread_mutex_lock(&s->mu);
        if (k == SIGINT || k == SIGTERM) { /* a second signal: stop the running requests */
            for (req *r = s->live.live_next; r != &s->live; r = r->live_next)
                cancel(r);
            if (!s->cfg.quiet) fprintf(stderr, "hyb serve: second signal: cancelling\n");
        }
    }
    s->quit = 1;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(eng, NULL);
    MHD_stop_daemon(d);
    {   /* drop the signals that arrived meanwhile, then restore the caller's mask */
        siginfo_t si;
        struct timespec ts = {0, 0};
        while (sigtimedwait(&set, &si, &ts) > 0) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    g_closing = 0;
    if (!s->cfg.quiet) {
        fprintf(stderr, "hyb serve: stopped (%lld tokens generated)\n", s->gen_tokens);
        fflush(stderr);
    }
    unload(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->idle);
    free(s);
    return HYB_OK;
}
