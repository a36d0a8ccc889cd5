/* core/tokenizer/chat_template.c: render a model's chat template.
 *
 * Chat templates ship with models (a GGUF's tokenizer.chat_template, tokenizer_config.json's
 * chat_template) as Jinja2 source, and HF's apply_chat_template renders them with
 * trim_blocks/lstrip_blocks, the loop-controls extension, raise_exception(), strftime_now() and
 * a tojson that keeps key order and non-ASCII text. This file interprets the part of Jinja2
 * those templates use (docs/CHAT_TEMPLATES.md lists it), so hyb formats a conversation exactly as
 * the model was trained to read it, without Python:
 *
 *   text, {{ expr }}, {% if/elif/else %}, {% for a[, b] in expr [if cond] %}...{% else %}, loop.*,
 *   {% set x = e %}, {% set ns.attr = e %}, {% set x %}...{% endset %}, {% macro %}/calls,
 *   {% break %}/{% continue %}, {% generation %}, {# comments #}, whitespace control (-),
 *   literals, lists, dicts, attribute/subscript/slice, + - * / // % ** ~, comparisons, in,
 *   and/or/not, a if c else b, filters, tests (is defined, is string, ...), string and dict
 *   methods, namespace(), range(), raise_exception().
 *
 * The template is parsed into a tree first (syntax errors name line:col before anything renders);
 * rendering walks the tree with scopes as Jinja2 has them (a loop iteration and a macro call get
 * their own; `if` does not). Every allocation of one render comes from an arena freed at the end.
 * Templates come from model files, so they are untrusted: output size, loop iterations, nesting
 * and range() lengths are bounded, and every failure is an error naming the template position.
 * tests/test_chat_template.c compares with jinja2 itself (tests/reference/chat_template_ref.py).
 */
#include "hyb/tokenizer.h"

#include <cJSON.h>
#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hyb/common.h"
#include "strbuf.h"

#define CT_MAX_OUTPUT (64u << 20) /* bytes rendered */
#define CT_MAX_STEPS 10000000LL   /* nodes evaluated (loops of loops); a 1000-turn chat takes ~1e5 */
#define CT_MAX_DEPTH 200          /* expression / statement / macro-call nesting */
#define CT_MAX_RANGE 1000000      /* elements of one range() */
#define CT_MAX_MEMORY (256u << 20) /* bytes of values and tree of one render */

/* ---- arena ------------------------------------------------------------------------------------*/

typedef struct ablock {
    struct ablock *next;
    size_t used, cap;
    max_align_t data[];
} ablock;

typedef struct ct ct;

/* ---- values -----------------------------------------------------------------------------------*/

typedef enum {
    V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC, V_MACRO
} vtype;

typedef struct list list;
typedef struct dict dict;
typedef struct node node;

typedef struct val {
    vtype t;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *p;
            size_t n;
        } s;
        list *l;
        dict *d;
        struct {
            int id;             /* builtin function / method id */
            const struct val *self; /* bound object for methods, NULL for globals */
        } fn;
        const node *macro;
    };
    const char *uname; /* V_UNDEF: the name that was missing (for error messages) */
} val;

struct list {
    val *v;
    int n, cap;
};

struct dict {
    val *k; /* string keys (V_STR) or other hashable values */
    val *v;
    int n, cap;
    int ns; /* a namespace(): attributes may be assigned */
};

/* ---- the template tree ------------------------------------------------------------------------*/

typedef enum {
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_INDEX, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NOT, E_NEG,
    E_POS, E_COND, E_LIST, E_DICT, E_AND, E_OR,
    /* statements */
    S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_SETBLOCK, S_MACRO, S_BREAK, S_CONTINUE, S_SEQ
} nkind;

typedef enum {
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FDIV, OP_MOD, OP_POW, OP_CAT,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN
} binop;

struct node {
    nkind k;
    int pos; /* byte offset in the template, for errors */
    val lit; /* E_LIT */
    const char *name; /* E_NAME, E_ATTR, E_FILTER / E_TEST name, S_SET target, S_MACRO name */
    const char *attr; /* S_SET ns.attr */
    binop op;
    int negate;       /* E_TEST: is not */
    node *a, *b, *c;  /* children: operands; S_IF cond/then/else; S_FOR iter/body/else */
    node *cond;       /* S_FOR filter */
    node **items;     /* E_CALL / E_FILTER / E_TEST args; E_LIST items; E_DICT keys; S_SEQ */
    node **items2;    /* E_DICT values */
    const char **kw;  /* keyword names of items (NULL entries: positional) */
    int n;            /* count of items */
    const char *var1, *var2; /* S_FOR targets; S_MACRO: parameter names in kw, defaults in items */
    const char *text; /* S_TEXT */
    size_t tlen;
};

/* ---- the interpreter state --------------------------------------------------------------------*/

typedef struct scope {
    struct scope *up;
    dict vars;
} scope;

struct ct {
    const char *src;
    size_t srclen;
    ablock *arena;
    size_t arena_bytes;
    jmp_buf jb;
    char err[512];
    int err_pos;
    /* lexing of one tag */
    const char *tp;  /* cursor in the tag's text */
    const char *te;  /* end of the tag's text */
    /* rendering */
    hyb_strbuf *out;
    long long steps;
    int depth;
    int brk; /* 1: break, 2: continue pending */
    scope *sc;
    scope *top; /* the template's top-level scope (what macros see besides their arguments) */
    /* text buffers (malloc'ed) in use by the functions on the stack: freed if an error unwinds */
    hyb_strbuf *live[CT_MAX_DEPTH * 2 + 16];
    int nlive;
};

/* a text buffer that an error unwinding past it frees: the struct lives in the arena (the C
 * stack frames are gone when the error lands), its text is malloc'ed */
static void *aalloc(ct *c, size_t n);
static _Noreturn void fail_at(ct *c, int pos, const char *fmt, ...);
static hyb_strbuf *live_new(ct *c) {
    if (c->nlive >= (int)(sizeof c->live / sizeof *c->live)) fail_at(c, -1, "nested too deeply");
    hyb_strbuf *b = aalloc(c, sizeof *b);
    c->live[c->nlive++] = b;
    return b;
}
/* drop b (the innermost live buffer) from the list and free it */
static void live_free(ct *c, hyb_strbuf *b) {
    if (c->nlive > 0 && c->live[c->nlive - 1] == b) c->nlive--;
    hyb_strbuf_free(b);
}

static _Noreturn void fail_at(ct *c, int pos, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    c->err_pos = pos;
    longjmp(c->jb, 1);
}

static void *aalloc(ct *c, size_t n) {
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (!c->arena || c->arena->cap - c->arena->used < n) {
        size_t cap = n > (1u << 16) ? n : (1u << 16);
        if (c->arena_bytes + cap > CT_MAX_MEMORY)
            fail_at(c, -1, "the template uses more than %u MiB", CT_MAX_MEMORY >> 20);
        c->arena_bytes += cap;
        ablock *b = malloc(sizeof *b + cap);
        if (!b) fail_at(c, -1, "out of memory");
        b->next = c->arena, b->used = 0, b->cap = cap;
        c->arena = b;
    }
    void *p = (char *)c->arena->data + c->arena->used;
    c->arena->used += n;
    memset(p, 0, n);
    return p;
}

static char *astrdup(ct *c, const char *s, size_t n) {
    char *p = aalloc(c, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- value helpers ----------------------------------------------------------------------------*/

static val vundef(const char *name) { return (val){.t = V_UNDEF, .uname = name}; }
static val vnone(void) { return (val){.t = V_NONE}; }
static val vbool(int b) { return (val){.t = V_BOOL, .b = !!b}; }
static val vint(int64_t i) { return (val){.t = V_INT, .i = i}; }
static val vfloat(double f) { return (val){.t = V_FLOAT, .f = f}; }
static val vstr(const char *p, size_t n) { return (val){.t = V_STR, .s = {p, n}}; }
static val vcstr(const char *p) { return vstr(p, strlen(p)); }

static val vlist(ct *c) {
    val v = {.t = V_LIST};
    v.l = aalloc(c, sizeof *v.l);
    return v;
}
static val vdict(ct *c) {
    val v = {.t = V_DICT};
    v.d = aalloc(c, sizeof *v.d);
    return v;
}

static void list_push(ct *c, list *l, val x) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        val *nv = aalloc(c, (size_t)cap * sizeof *nv);
        if (l->n) memcpy(nv, l->v, (size_t)l->n * sizeof *nv);
        l->v = nv, l->cap = cap;
    }
    l->v[l->n++] = x;
}

static int veq(const val *a, const val *b);

static int dict_find(const dict *d, const val *k) {
    for (int i = 0; i < d->n; i++)
        if (veq(&d->k[i], k)) return i;
    return -1;
}
static int dict_find_s(const dict *d, const char *k) {
    size_t n = strlen(k);
    for (int i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].s.n == n && !memcmp(d->k[i].s.p, k, n)) return i;
    return -1;
}
static void dict_set(ct *c, dict *d, val k, val v) {
    int i = dict_find(d, &k);
    if (i >= 0) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        int cap = d->cap ? 2 * d->cap : 8;
        val *nk = aalloc(c, (size_t)cap * sizeof *nk), *nv = aalloc(c, (size_t)cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, (size_t)d->n * sizeof *nk);
            memcpy(nv, d->v, (size_t)d->n * sizeof *nv);
        }
        d->k = nk, d->v = nv, d->cap = cap;
    }
    d->k[d->n] = k, d->v[d->n] = v, d->n++;
}
static void dict_set_s(ct *c, dict *d, const char *k, val v) { dict_set(c, d, vcstr(k), v); }

static int is_num(const val *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num(const val *v) {
    return v->t == V_FLOAT ? v->f : v->t == V_INT ? (double)v->i : (double)v->b;
}
static int64_t inum(const val *v) { return v->t == V_INT ? v->i : v->t == V_BOOL ? v->b : 0; }

static int truthy(const val *v) {
    switch (v->t) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL: return v->b;
    case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->s.n > 0;
    case V_LIST: return v->l->n > 0;
    case V_DICT: return v->d->n > 0 || v->d->ns;
    default: return 1;
    }
}

static int veq(const val *a, const val *b) {
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return inum(a) == inum(b);
        return num(a) == num(b);
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR: return a->s.n == b->s.n && !memcmp(a->s.p, b->s.p, a->s.n);
    case V_LIST:
        if (a->l->n != b->l->n) return 0;
        for (int i = 0; i < a->l->n; i++)
            if (!veq(&a->l->v[i], &b->l->v[i])) return 0;
        return 1;
    case V_DICT:
        if (a->d == b->d) return 1;
        if (a->d->n != b->d->n) return 0;
        for (int i = 0; i < a->d->n; i++) {
            int j = dict_find(b->d, &a->d->k[i]);
            if (j < 0 || !veq(&a->d->v[i], &b->d->v[j])) return 0;
        }
        return 1;
    case V_FUNC: return a->fn.id == b->fn.id && a->fn.self == b->fn.self;
    case V_MACRO: return a->macro == b->macro;
    default: return 0;
    }
}

static const char *tname(const val *v) {
    static const char *n[] = {"undefined", "none", "bool", "int", "float", "string", "list",
                              "dict", "function", "macro"};
    return v->t == V_DICT && v->d->ns ? "namespace" : n[v->t];
}

/* ---- text conversion (Python's str() / repr()) -----------------------------------------------*/

static void put_float(hyb_strbuf *b, double f) {
    if (isnan(f)) {
        hyb_strbuf_puts(b, "nan");
        return;
    }
    if (isinf(f)) {
        hyb_strbuf_puts(b, f < 0 ? "-inf" : "inf");
        return;
    }
    char s[40];
    for (int p = 1; p <= 17; p++) { /* the shortest text that reads back as f, as repr() */
        snprintf(s, sizeof s, "%.*g", p, f);
        if (strtod(s, NULL) == f) break;
    }
    /* Python writes 1e+16 and up, and below 1e-4, in exponent form; %g may differ in between */
    double a = fabs(f);
    if (strchr(s, 'e') && a >= 1e-4 && a < 1e16) snprintf(s, sizeof s, "%.1f", f);
    if (!strchr(s, 'e') && !strchr(s, '.') && !strchr(s, 'n')) strcat(s, ".0");
    hyb_strbuf_puts(b, s);
}

static void put_repr_str(hyb_strbuf *b, const char *p, size_t n) {
    int has_sq = memchr(p, '\'', n) != NULL, has_dq = memchr(p, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    hyb_strbuf_putn(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '\\') hyb_strbuf_puts(b, "\\\\");
        else if (ch == (unsigned char)q) hyb_strbuf_printf(b, "\\%c", q);
        else if (ch == '\n') hyb_strbuf_puts(b, "\\n");
        else if (ch == '\t') hyb_strbuf_puts(b, "\\t");
        else if (ch == '\r') hyb_strbuf_puts(b, "\\r");
        else if (ch < 0x20 || ch == 0x7f) hyb_strbuf_printf(b, "\\x%02x", ch);
        else hyb_strbuf_putn(b, (const char *)&p[i], 1);
    }
    hyb_strbuf_putn(b, &q, 1);
}

static void put_val(hyb_strbuf *b, const val *v, int repr) {
    switch (v->t) {
    case V_UNDEF: break;
    case V_NONE: hyb_strbuf_puts(b, "None"); break;
    case V_BOOL: hyb_strbuf_puts(b, v->b ? "True" : "False"); break;
    case V_INT: hyb_strbuf_printf(b, "%lld", (long long)v->i); break;
    case V_FLOAT: put_float(b, v->f); break;
    case V_STR:
        if (repr) put_repr_str(b, v->s.p, v->s.n);
        else hyb_strbuf_putn(b, v->s.p, v->s.n);
        break;
    case V_LIST:
        hyb_strbuf_puts(b, "[");
        for (int i = 0; i < v->l->n; i++) {
            if (i) hyb_strbuf_puts(b, ", ");
            put_val(b, &v->l->v[i], 1);
        }
        hyb_strbuf_puts(b, "]");
        break;
    case V_DICT:
        if (v->d->ns) hyb_strbuf_puts(b, "<Namespace ");
        hyb_strbuf_puts(b, "{");
        for (int i = 0; i < v->d->n; i++) {
            if (i) hyb_strbuf_puts(b, ", ");
            put_val(b, &v->d->k[i], 1);
            hyb_strbuf_puts(b, ": ");
            put_val(b, &v->d->v[i], 1);
        }
        hyb_strbuf_puts(b, "}");
        if (v->d->ns) hyb_strbuf_puts(b, ">");
        break;
    case V_FUNC: hyb_strbuf_puts(b, "<function>"); break;
    case V_MACRO: hyb_strbuf_puts(b, "<macro>"); break;
    }
}

static val to_str(ct *c, const val *v) {
    if (v->t == V_STR) return *v;
    hyb_strbuf *b = live_new(c);
    put_val(b, v, 0);
    if (b->oom) {
        live_free(c, b);
        fail_at(c, -1, "out of memory");
    }
    val r = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
    live_free(c, b);
    return r;
}

/* json.dumps(v, ensure_ascii=False[, indent]) as HF's tojson filter writes it */
static void put_json(ct *c, hyb_strbuf *b, const val *v, int indent, int level, int pos) {
    switch (v->t) {
    case V_UNDEF:
        fail_at(c, pos, "tojson: '%s' is undefined", v->uname ? v->uname : "value");
    case V_NONE: hyb_strbuf_puts(b, "null"); return;
    case V_BOOL: hyb_strbuf_puts(b, v->b ? "true" : "false"); return;
    case V_INT: hyb_strbuf_printf(b, "%lld", (long long)v->i); return;
    case V_FLOAT:
        if (isnan(v->f)) hyb_strbuf_puts(b, "NaN");
        else if (isinf(v->f)) hyb_strbuf_puts(b, v->f < 0 ? "-Infinity" : "Infinity");
        else put_float(b, v->f);
        return;
    case V_STR:
        hyb_strbuf_puts(b, "\"");
        for (size_t i = 0; i < v->s.n; i++) {
            unsigned char ch = (unsigned char)v->s.p[i];
            if (ch == '"') hyb_strbuf_puts(b, "\\\"");
            else if (ch == '\\') hyb_strbuf_puts(b, "\\\\");
            else if (ch == '\n') hyb_strbuf_puts(b, "\\n");
            else if (ch == '\r') hyb_strbuf_puts(b, "\\r");
            else if (ch == '\t') hyb_strbuf_puts(b, "\\t");
            else if (ch == '\b') hyb_strbuf_puts(b, "\\b");
            else if (ch == '\f') hyb_strbuf_puts(b, "\\f");
            else if (ch < 0x20 || ch == 0x7f) hyb_strbuf_printf(b, "\\u%04x", ch);
            else hyb_strbuf_putn(b, (const char *)&v->s.p[i], 1);
        }
        hyb_strbuf_puts(b, "\"");
        return;
    case V_LIST:
    case V_DICT: {
        int isl = v->t == V_LIST, n = isl ? v->l->n : v->d->n;
        hyb_strbuf_puts(b, isl ? "[" : "{");
        if (n == 0) {
            hyb_strbuf_puts(b, isl ? "]" : "}");
            return;
        }
        for (int i = 0; i < n; i++) {
            if (i) hyb_strbuf_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) hyb_strbuf_printf(b, "\n%*s", indent * (level + 1), "");
            if (!isl) {
                val k = v->d->k[i];
                if (k.t != V_STR) k = to_str(c, &k);
                put_json(c, b, &k, indent, level + 1, pos);
                hyb_strbuf_puts(b, ": ");
            }
            put_json(c, b, isl ? &v->l->v[i] : &v->d->v[i], indent, level + 1, pos);
        }
        if (indent >= 0) hyb_strbuf_printf(b, "\n%*s", indent * level, "");
        hyb_strbuf_puts(b, isl ? "]" : "}");
        return;
    }
    default: fail_at(c, pos, "tojson: a %s is not JSON serializable", tname(v));
    }
}

/* ---- the tag lexer ----------------------------------------------------------------------------*/

typedef enum { T_END, T_NAME, T_STR, T_INT, T_FLOAT, T_OP } ttype;
typedef struct {
    ttype t;
    const char *p; /* T_NAME / T_OP text, T_STR decoded text */
    size_t n;
    int64_t i;
    double f;
    int pos;
} tok;

static int tpos(ct *c, const char *p) { return (int)(p - c->src); }

static tok next_tok(ct *c) {
    const char *p = c->tp;
    while (p < c->te && isspace((unsigned char)*p)) p++;
    tok t = {.t = T_END, .pos = tpos(c, p)};
    if (p >= c->te) {
        c->tp = p;
        return t;
    }
    unsigned char ch = (unsigned char)*p;
    if (isalpha(ch) || ch == '_') {
        const char *s = p;
        while (p < c->te && (isalnum((unsigned char)*p) || *p == '_')) p++;
        t.t = T_NAME, t.p = s, t.n = (size_t)(p - s);
    } else if (isdigit(ch)) {
        const char *s = p;
        int isf = 0;
        while (p < c->te && (isdigit((unsigned char)*p) || *p == '_')) p++;
        if (p + 1 < c->te && *p == '.' && isdigit((unsigned char)p[1])) {
            isf = 1;
            p++;
            while (p < c->te && isdigit((unsigned char)*p)) p++;
        }
        if (p < c->te && (*p == 'e' || *p == 'E')) {
            const char *q = p + 1;
            if (q < c->te && (*q == '+' || *q == '-')) q++;
            if (q < c->te && isdigit((unsigned char)*q)) {
                isf = 1;
                p = q;
                while (p < c->te && isdigit((unsigned char)*p)) p++;
            }
        }
        char buf[64];
        size_t k = 0;
        for (const char *q = s; q < p && k < sizeof buf - 1; q++)
            if (*q != '_') buf[k++] = *q;
        buf[k] = 0;
        if (isf) t.t = T_FLOAT, t.f = strtod(buf, NULL);
        else t.t = T_INT, t.i = strtoll(buf, NULL, 10);
    } else if (ch == '\'' || ch == '"') {
        char q = (char)ch;
        p++;
        hyb_strbuf *b = live_new(c);
        while (p < c->te && *p != q) {
            if (*p == '\\' && p + 1 < c->te) {
                p++;
                char e = *p, o;
                switch (e) {
                case 'n': o = '\n'; break;
                case 't': o = '\t'; break;
                case 'r': o = '\r'; break;
                case '0': o = '\0'; break;
                case '\\': o = '\\'; break;
                case '\'': o = '\''; break;
                case '"': o = '"'; break;
                case 'a': o = '\a'; break;
                case 'b': o = '\b'; break;
                case 'f': o = '\f'; break;
                case 'v': o = '\v'; break;
                case 'x':
                case 'u':
                case 'U': { /* \xHH, \uXXXX, \UXXXXXXXX: the code point in UTF-8 */
                    int nd = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                    uint32_t cp = 0;
                    int k = 0;
                    for (; k < nd && p + 1 + k < c->te && isxdigit((unsigned char)p[1 + k]); k++)
                        cp = cp * 16 + (uint32_t)(isdigit((unsigned char)p[1 + k]) ? p[1 + k] - '0'
                                                  : (tolower((unsigned char)p[1 + k]) - 'a' + 10));
                    if (k < nd || cp > 0x10FFFF) {
                        live_free(c, b);
                        fail_at(c, tpos(c, p - 1), "bad \\%c escape in a string", e);
                    }
                    char u[4];
                    int un;
                    if (cp < 0x80) u[0] = (char)cp, un = 1;
                    else if (cp < 0x800) u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 63)), un = 2;
                    else if (cp < 0x10000)
                        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 63)),
                        u[2] = (char)(0x80 | (cp & 63)), un = 3;
                    else
                        u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 63)),
                        u[2] = (char)(0x80 | ((cp >> 6) & 63)), u[3] = (char)(0x80 | (cp & 63)), un = 4;
                    hyb_strbuf_putn(b, u, (size_t)un);
                    p += 1 + nd;
                    continue;
                }
                case '\n': p++; continue; /* a backslash-newline joins lines */
                default: /* unknown escapes stay as written, as Python keeps them */
                    hyb_strbuf_putn(b, "\\", 1);
                    o = e;
                }
                hyb_strbuf_putn(b, &o, 1);
                p++;
            } else {
                hyb_strbuf_putn(b, p, 1);
                p++;
            }
        }
        if (p >= c->te) {
            live_free(c, b);
            fail_at(c, t.pos, "unterminated string");
        }
        p++;
        t.t = T_STR;
        t.p = astrdup(c, b->p ? b->p : "", b->n);
        t.n = b->n;
        live_free(c, b);
    } else {
        static const char *ops[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%",
                                    "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ".", ":",
                                    "|", "=", NULL};
        for (int i = 0; ops[i]; i++) {
            size_t n = strlen(ops[i]);
            if ((size_t)(c->te - p) >= n && !memcmp(p, ops[i], n)) {
                t.t = T_OP, t.p = ops[i], t.n = n;
                p += n;
                break;
            }
        }
        if (t.t != T_OP) fail_at(c, t.pos, "unexpected character '%c'", *p);
    }
    c->tp = p;
    return t;
}

static tok peek_tok(ct *c) {
    const char *save = c->tp;
    tok t = next_tok(c);
    c->tp = save;
    return t;
}

static int tok_is(const tok *t, ttype ty, const char *s) {
    return t->t == ty && t->n == strlen(s) && !memcmp(t->p, s, t->n);
}
static int accept(ct *c, ttype ty, const char *s) {
    tok t = peek_tok(c);
    if (tok_is(&t, ty, s)) {
        next_tok(c);
        return 1;
    }
    return 0;
}
static void expect(ct *c, ttype ty, const char *s) {
    tok t = next_tok(c);
    if (!tok_is(&t, ty, s))
        fail_at(c, t.pos, "expected '%s', found %s%.*s%s", s, t.t == T_END ? "the end of the tag" : "'",
                t.t == T_END ? 0 : (int)t.n, t.t == T_END ? "" : t.p, t.t == T_END ? "" : "'");
}
static const char *expect_name(ct *c) {
    tok t = next_tok(c);
    if (t.t != T_NAME) fail_at(c, t.pos, "expected a name");
    return astrdup(c, t.p, t.n);
}

/* ---- the expression parser --------------------------------------------------------------------*/

static node *mk(ct *c, nkind k, int pos) {
    node *n = aalloc(c, sizeof *n);
    n->k = k, n->pos = pos;
    return n;
}

typedef struct {
    node **v;
    const char **kw;
    int n, cap;
} nlist;
static void nl_push(ct *c, nlist *l, node *x, const char *kw) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 4;
        node **nv = aalloc(c, (size_t)cap * sizeof *nv);
        const char **nk = aalloc(c, (size_t)cap * sizeof *nk);
        if (l->n) {
            memcpy(nv, l->v, (size_t)l->n * sizeof *nv);
            memcpy(nk, l->kw, (size_t)l->n * sizeof *nk);
        }
        l->v = nv, l->kw = nk, l->cap = cap;
    }
    l->v[l->n] = x, l->kw[l->n] = kw, l->n++;
}

static node *p_expr(ct *c);
static node *p_or(ct *c);

static void depth_in(ct *c, int pos) {
    if (++c->depth > CT_MAX_DEPTH) fail_at(c, pos, "nested too deeply");
}

/* (a, b=c, ...) after the '(' */
static void p_args(ct *c, node *n) {
    nlist l = {0};
    if (!accept(c, T_OP, ")")) {
        do {
            tok t = peek_tok(c);
            const char *kw = NULL;
            if (t.t == T_NAME) {
                const char *save = c->tp;
                next_tok(c);
                tok t2 = peek_tok(c);
                if (tok_is(&t2, T_OP, "=")) {
                    next_tok(c);
                    kw = astrdup(c, t.p, t.n);
                } else {
                    c->tp = save;
                }
            }
            nl_push(c, &l, p_expr(c), kw);
        } while (accept(c, T_OP, ","));
        expect(c, T_OP, ")");
    }
    n->items = l.v, n->kw = l.kw, n->n = l.n;
}

static node *p_primary(ct *c) {
    tok t = next_tok(c);
    node *n;
    switch (t.t) {
    case T_STR: {
        /* adjacent string literals concatenate */
        hyb_strbuf *b = live_new(c);
        hyb_strbuf_putn(b, t.p, t.n);
        for (tok u = peek_tok(c); u.t == T_STR; u = peek_tok(c)) {
            next_tok(c);
            hyb_strbuf_putn(b, u.p, u.n);
        }
        n = mk(c, E_LIT, t.pos);
        n->lit = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
        live_free(c, b);
        return n;
    }
    case T_INT:
        n = mk(c, E_LIT, t.pos);
        n->lit = vint(t.i);
        return n;
    case T_FLOAT:
        n = mk(c, E_LIT, t.pos);
        n->lit = vfloat(t.f);
        return n;
    case T_NAME:
        n = mk(c, E_LIT, t.pos);
        if (tok_is(&t, T_NAME, "true") || tok_is(&t, T_NAME, "True")) n->lit = vbool(1);
        else if (tok_is(&t, T_NAME, "false") || tok_is(&t, T_NAME, "False")) n->lit = vbool(0);
        else if (tok_is(&t, T_NAME, "none") || tok_is(&t, T_NAME, "None")) n->lit = vnone();
        else {
            n->k = E_NAME;
            n->name = astrdup(c, t.p, t.n);
        }
        return n;
    case T_OP:
        if (tok_is(&t, T_OP, "(")) {
            node *e = p_expr(c);
            if (accept(c, T_OP, ",")) { /* a tuple: a list here */
                nlist l = {0};
                nl_push(c, &l, e, NULL);
                while (!accept(c, T_OP, ")")) {
                    nl_push(c, &l, p_expr(c), NULL);
                    if (!accept(c, T_OP, ",")) {
                        expect(c, T_OP, ")");
                        break;
                    }
                }
                n = mk(c, E_LIST, t.pos);
                n->items = l.v, n->n = l.n;
                return n;
            }
            expect(c, T_OP, ")");
            return e;
        }
        if (tok_is(&t, T_OP, "[")) {
            nlist l = {0};
            while (!accept(c, T_OP, "]")) {
                nl_push(c, &l, p_expr(c), NULL);
                if (!accept(c, T_OP, ",")) {
                    expect(c, T_OP, "]");
                    break;
                }
            }
            n = mk(c, E_LIST, t.pos);
            n->items = l.v, n->n = l.n;
            return n;
        }
        if (tok_is(&t, T_OP, "{")) {
            nlist k = {0}, v = {0};
            while (!accept(c, T_OP, "}")) {
                nl_push(c, &k, p_expr(c), NULL);
                expect(c, T_OP, ":");
                nl_push(c, &v, p_expr(c), NULL);
                if (!accept(c, T_OP, ",")) {
                    expect(c, T_OP, "}");
                    break;
                }
            }
            n = mk(c, E_DICT, t.pos);
            n->items = k.v, n->items2 = v.v, n->n = k.n;
            return n;
        }
        break;
    default: break;
    }
    if (t.t == T_END) fail_at(c, t.pos, "expected an expression, found the end of the tag");
    fail_at(c, t.pos, "unexpected '%.*s'", (int)t.n, t.p);
}

static node *p_postfix(ct *c) {
    node *n = p_primary(c);
    for (;;) {
        tok t = peek_tok(c);
        if (tok_is(&t, T_OP, ".")) {
            next_tok(c);
            tok a = next_tok(c);
            node *m = mk(c, E_ATTR, a.pos);
            if (a.t == T_NAME) m->name = astrdup(c, a.p, a.n);
            else if (a.t == T_INT) { /* x.0 is x[0] in Jinja */
                m->k = E_INDEX;
                m->b = mk(c, E_LIT, a.pos);
                m->b->lit = vint(a.i);
            } else fail_at(c, a.pos, "expected an attribute name after '.'");
            m->a = n;
            n = m;
        } else if (tok_is(&t, T_OP, "[")) {
            next_tok(c);
            node *idx[3] = {NULL, NULL, NULL};
            int k = 0, slice = 0;
            for (;;) {
                tok u = peek_tok(c);
                if (tok_is(&u, T_OP, ":")) {
                    next_tok(c);
                    slice = 1;
                    if (++k > 2) fail_at(c, u.pos, "a slice has at most three parts");
                    continue;
                }
                if (tok_is(&u, T_OP, "]")) {
                    next_tok(c);
                    break;
                }
                if (idx[k]) fail_at(c, u.pos, "expected ']'");
                idx[k] = p_expr(c);
            }
            node *m = mk(c, slice ? E_SLICE : E_INDEX, t.pos);
            m->a = n;
            if (slice) m->items = aalloc(c, 3 * sizeof(node *)), memcpy(m->items, idx, sizeof idx), m->n = 3;
            else {
                if (!idx[0]) fail_at(c, t.pos, "empty subscript");
                m->b = idx[0];
            }
            n = m;
        } else if (tok_is(&t, T_OP, "(")) {
            next_tok(c);
            node *m = mk(c, E_CALL, t.pos);
            m->a = n;
            p_args(c, m);
            n = m;
        } else {
            return n;
        }
    }
}

/* filters (x | f(args)) and tests (x is [not] t(args) / x is t arg) bind to a unary operand */
static node *p_filters(ct *c, node *n) {
    for (;;) {
        tok t = peek_tok(c);
        if (tok_is(&t, T_OP, "|")) {
            next_tok(c);
            node *m = mk(c, E_FILTER, t.pos);
            m->name = expect_name(c);
            while (accept(c, T_OP, ".")) { /* dotted filter names are not used; keep last */
                m->name = expect_name(c);
            }
            m->a = n;
            if (accept(c, T_OP, "(")) p_args(c, m);
            n = m;
        } else if (tok_is(&t, T_NAME, "is")) {
            next_tok(c);
            node *m = mk(c, E_TEST, t.pos);
            m->negate = accept(c, T_NAME, "not");
            tok nm = next_tok(c);
            if (nm.t == T_NAME) m->name = astrdup(c, nm.p, nm.n);
            else if (nm.t == T_OP && (tok_is(&nm, T_OP, "==") || tok_is(&nm, T_OP, "!=") ||
                                      tok_is(&nm, T_OP, "<") || tok_is(&nm, T_OP, ">") ||
                                      tok_is(&nm, T_OP, "<=") || tok_is(&nm, T_OP, ">=")))
                m->name = astrdup(c, nm.p, nm.n);
            else if (tok_is(&nm, T_NAME, "none") || nm.t == T_NAME) m->name = astrdup(c, nm.p, nm.n);
            else fail_at(c, nm.pos, "expected a test name after 'is'");
            m->a = n;
            if (accept(c, T_OP, "(")) {
                p_args(c, m);
            } else {
                /* `is divisibleby 3`, `is sameas none`: one argument without parentheses */
                tok u = peek_tok(c);
                if (u.t == T_STR || u.t == T_INT || u.t == T_FLOAT ||
                    (u.t == T_NAME && !tok_is(&u, T_NAME, "and") && !tok_is(&u, T_NAME, "or") &&
                     !tok_is(&u, T_NAME, "if") && !tok_is(&u, T_NAME, "else") &&
                     !tok_is(&u, T_NAME, "is") && !tok_is(&u, T_NAME, "in") &&
                     !tok_is(&u, T_NAME, "not"))) {
                    nlist l = {0};
                    nl_push(c, &l, p_postfix(c), NULL);
                    m->items = l.v, m->kw = l.kw, m->n = l.n;
                }
            }
            n = m;
        } else {
            return n;
        }
    }
}

/* -x | f is (-x) | f, as in Jinja2: the sign's operand takes no filters, the result does */
static node *p_unary_nf(ct *c) {
    tok t = peek_tok(c);
    depth_in(c, t.pos);
    node *n;
    if (tok_is(&t, T_OP, "-") || tok_is(&t, T_OP, "+")) {
        next_tok(c);
        n = mk(c, tok_is(&t, T_OP, "-") ? E_NEG : E_POS, t.pos);
        n->a = p_unary_nf(c);
    } else {
        n = p_postfix(c);
    }
    c->depth--;
    return n;
}
static node *p_unary(ct *c) { return p_filters(c, p_unary_nf(c)); }

static node *bin(ct *c, binop op, node *a, node *b, int pos) {
    node *n = mk(c, E_BIN, pos);
    n->op = op, n->a = a, n->b = b;
    return n;
}

static node *p_pow(ct *c) {
    node *a = p_unary(c);
    tok t = peek_tok(c);
    if (tok_is(&t, T_OP, "**")) {
        next_tok(c);
        return bin(c, OP_POW, a, p_unary(c), t.pos);
    }
    return a;
}
static node *p_mul(ct *c) {
    node *a = p_pow(c);
    for (;;) {
        tok t = peek_tok(c);
        binop op;
        if (tok_is(&t, T_OP, "*")) op = OP_MUL;
        else if (tok_is(&t, T_OP, "/")) op = OP_DIV;
        else if (tok_is(&t, T_OP, "//")) op = OP_FDIV;
        else if (tok_is(&t, T_OP, "%")) op = OP_MOD;
        else return a;
        next_tok(c);
        a = bin(c, op, a, p_pow(c), t.pos);
    }
}
static node *p_add(ct *c) {
    node *a = p_mul(c);
    for (;;) {
        tok t = peek_tok(c);
        binop op;
        if (tok_is(&t, T_OP, "+")) op = OP_ADD;
        else if (tok_is(&t, T_OP, "-")) op = OP_SUB;
        else return a;
        next_tok(c);
        a = bin(c, op, a, p_mul(c), t.pos);
    }
}
static node *p_cat(ct *c) {
    node *a = p_add(c);
    for (;;) {
        tok t = peek_tok(c);
        if (!tok_is(&t, T_OP, "~")) return a;
        next_tok(c);
        a = bin(c, OP_CAT, a, p_add(c), t.pos);
    }
}
static node *p_cmp(ct *c) {
    node *a = p_cat(c);
    for (;;) {
        tok t = peek_tok(c);
        binop op;
        if (tok_is(&t, T_OP, "==")) op = OP_EQ;
        else if (tok_is(&t, T_OP, "!=")) op = OP_NE;
        else if (tok_is(&t, T_OP, "<")) op = OP_LT;
        else if (tok_is(&t, T_OP, "<=")) op = OP_LE;
        else if (tok_is(&t, T_OP, ">")) op = OP_GT;
        else if (tok_is(&t, T_OP, ">=")) op = OP_GE;
        else if (tok_is(&t, T_NAME, "in")) op = OP_IN;
        else if (tok_is(&t, T_NAME, "not")) {
            const char *save = c->tp;
            next_tok(c);
            if (!accept(c, T_NAME, "in")) {
                c->tp = save;
                return a;
            }
            a = bin(c, OP_NOTIN, a, p_cat(c), t.pos);
            continue;
        } else return a;
        next_tok(c);
        a = bin(c, op, a, p_cat(c), t.pos);
    }
}
static node *p_not(ct *c) {
    tok t = peek_tok(c);
    if (tok_is(&t, T_NAME, "not")) {
        next_tok(c);
        depth_in(c, t.pos);
        node *n = mk(c, E_NOT, t.pos);
        n->a = p_not(c);
        c->depth--;
        return n;
    }
    return p_cmp(c);
}
static node *p_and(ct *c) {
    node *a = p_not(c);
    for (;;) {
        tok t = peek_tok(c);
        if (!tok_is(&t, T_NAME, "and")) return a;
        next_tok(c);
        node *n = mk(c, E_AND, t.pos);
        n->a = a, n->b = p_not(c);
        a = n;
    }
}
static node *p_or(ct *c) {
    node *a = p_and(c);
    for (;;) {
        tok t = peek_tok(c);
        if (!tok_is(&t, T_NAME, "or")) return a;
        next_tok(c);
        node *n = mk(c, E_OR, t.pos);
        n->a = a, n->b = p_and(c);
        a = n;
    }
}
static node *p_expr(ct *c) {
    tok t0 = peek_tok(c);
    depth_in(c, t0.pos);
    node *a = p_or(c);
    tok t = peek_tok(c);
    if (tok_is(&t, T_NAME, "if")) {
        next_tok(c);
        node *n = mk(c, E_COND, t.pos);
        n->a = a;
        n->cond = p_or(c);
        if (accept(c, T_NAME, "else")) n->b = p_expr(c);
        a = n;
    }
    c->depth--;
    return a;
}

/* ---- the template parser: segments, then statements -------------------------------------------*/

typedef enum { G_TEXT, G_VAR, G_BLOCK } gkind;
typedef struct {
    gkind k;
    const char *p; /* text, or the tag's inside */
    size_t n;
    const char *tag; /* a tag's opening '{' (error positions) */
} seg;

typedef struct {
    seg *v;
    int n, cap;
} segs;

static void seg_push(ct *c, segs *s, gkind k, const char *p, size_t n, const char *tag) {
    if (k == G_TEXT && n == 0) return;
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        seg *nv = aalloc(c, (size_t)cap * sizeof *nv);
        if (s->n) memcpy(nv, s->v, (size_t)s->n * sizeof *nv);
        s->v = nv, s->cap = cap;
    }
    s->v[s->n++] = (seg){k, p, n, tag ? tag : p};
}

/* Split the source into text and tags, applying '-' whitespace control, trim_blocks (drop the
 * newline after a block or comment tag) and lstrip_blocks (drop the spaces before one on its
 * line), as HF's environment sets them. */
static void split_segments(ct *c, segs *out) {
    const char *s = c->src, *end = s + c->srclen, *p = s;
    /* keep_trailing_newline is off in Jinja2: one newline at the very end is dropped */
    if (end > s && end[-1] == '\n') end -= end - 1 > s && end[-2] == '\r' ? 2 : 1;
    const char *text = s; /* start of pending text */
    int strip_next = 0;   /* the previous tag ended with '-': strip leading whitespace */
    while (p < end) {
        const char *o = NULL;
        for (const char *q = p; q + 1 < end; q++)
            if (q[0] == '{' && (q[1] == '{' || q[1] == '%' || q[1] == '#')) {
                o = q;
                break;
            }
        if (!o) break;
        /* pending text [text, o) */
        const char *ts = text, *tend = o;
        if (strip_next)
            while (ts < tend && isspace((unsigned char)*ts)) ts++;
        char kind = o[1];
        const char *in = o + 2;
        int lminus = in < end && *in == '-', lplus = in < end && *in == '+';
        if (lminus) {
            while (tend > ts && isspace((unsigned char)tend[-1])) tend--;
        } else if ((kind == '%' || kind == '#') && !lplus) {
            /* lstrip_blocks: drop the spaces/tabs between the line start and the tag (q[-1] is
             * the source's own character, also when trim_blocks ate the newline before) */
            const char *q = tend;
            while (q > ts && (q[-1] == ' ' || q[-1] == '\t')) q--;
            if (q == c->src || q[-1] == '\n') tend = q;
        }
        seg_push(c, out, G_TEXT, ts, (size_t)(tend - ts), NULL);
        if (lminus || lplus) in++;
        /* find the closing delimiter, skipping string literals in expressions */
        char close = kind == '{' ? '}' : kind;
        const char *q = in, *ce = NULL;
        char inq = 0;
        while (q + 1 < end) {
            if (kind != '#' && inq) {
                if (*q == '\\') q++;
                else if (*q == inq) inq = 0;
            } else if (kind != '#' && (*q == '\'' || *q == '"')) {
                inq = *q;
            } else if (q[0] == close && q[1] == '}') {
                ce = q;
                break;
            }
            q++;
        }
        if (!ce)
            fail_at(c, tpos(c, o), "unclosed '{%c' (no matching '%c}')", kind, close);
        const char *inner_end = ce;
        int rminus = inner_end > in && inner_end[-1] == '-';
        int rplus = inner_end > in && inner_end[-1] == '+';
        if (rminus || rplus) inner_end--;
        if (kind == '{') seg_push(c, out, G_VAR, in, (size_t)(inner_end - in), o);
        else if (kind == '%') seg_push(c, out, G_BLOCK, in, (size_t)(inner_end - in), o);
        p = ce + 2;
        strip_next = rminus;
        if (!rminus && !rplus && (kind == '%' || kind == '#')) { /* trim_blocks */
            if (p < end && *p == '\n') p++;
            else if (p + 1 < end && p[0] == '\r' && p[1] == '\n') p += 2;
        }
        text = p;
    }
    const char *ts = text;
    if (strip_next)
        while (ts < end && isspace((unsigned char)*ts)) ts++;
    seg_push(c, out, G_TEXT, ts, (size_t)(end - ts), NULL);
}

typedef struct {
    segs *s;
    int i;
} pcur;

/* the first word of a block tag */
static int block_word(ct *c, const seg *g, const char *w) {
    c->tp = g->p, c->te = g->p + g->n;
    tok t = next_tok(c);
    return tok_is(&t, T_NAME, w);
}

static void tag_done(ct *c) {
    tok t = next_tok(c);
    if (t.t != T_END) fail_at(c, t.pos, "unexpected '%.*s' at the end of the tag", (int)t.n, t.p);
}

static node *p_body(ct *c, pcur *pc, const char *const *stops, int *which);

static node *p_stmt_block(ct *c, pcur *pc, const seg *g) {
    c->tp = g->p, c->te = g->p + g->n;
    tok w = next_tok(c);
    if (w.t != T_NAME) fail_at(c, w.pos, "expected a statement name after '{%%'");
    int pos = w.pos;
    if (tok_is(&w, T_NAME, "if")) {
        node *n = mk(c, S_IF, pos);
        n->cond = p_expr(c);
        tag_done(c);
        static const char *const stops[] = {"elif", "else", "endif", NULL};
        int which;
        n->a = p_body(c, pc, stops, &which);
        node *cur = n;
        while (which == 0) { /* elif: a nested if in the else branch */
            const seg *e = &pc->s->v[pc->i - 1];
            c->tp = e->p, c->te = e->p + e->n;
            tok ew = next_tok(c);
            node *m = mk(c, S_IF, ew.pos);
            m->cond = p_expr(c);
            tag_done(c);
            m->a = p_body(c, pc, stops, &which);
            cur->b = m;
            cur = m;
        }
        if (which == 1) {
            static const char *const s2[] = {"endif", NULL};
            c->tp = pc->s->v[pc->i - 1].p;
            c->te = c->tp + pc->s->v[pc->i - 1].n;
            next_tok(c);
            tag_done(c);
            cur->b = p_body(c, pc, s2, &which);
        }
        return n;
    }
    if (tok_is(&w, T_NAME, "for")) {
        node *n = mk(c, S_FOR, pos);
        n->var1 = expect_name(c);
        if (accept(c, T_OP, ",")) n->var2 = expect_name(c);
        expect(c, T_NAME, "in");
        /* the iterable: no conditional expression here ('if' filters the loop) */
        n->a = p_or(c);
        if (accept(c, T_NAME, "if")) n->cond = p_or(c);
        if (accept(c, T_NAME, "recursive")) fail_at(c, pos, "recursive loops are not supported");
        tag_done(c);
        static const char *const stops[] = {"else", "endfor", NULL};
        int which;
        n->b = p_body(c, pc, stops, &which);
        if (which == 0) {
            tag_done(c);
            static const char *const s2[] = {"endfor", NULL};
            n->c = p_body(c, pc, s2, &which);
        }
        return n;
    }
    if (tok_is(&w, T_NAME, "set")) {
        node *n = mk(c, S_SET, pos);
        n->name = expect_name(c);
        if (accept(c, T_OP, ".")) n->attr = expect_name(c);
        else if (accept(c, T_OP, ",")) n->var2 = expect_name(c); /* set a, b = pair */
        if (accept(c, T_OP, "=")) {
            n->a = p_expr(c);
            tag_done(c);
            return n;
        }
        tag_done(c);
        if (n->attr || n->var2) fail_at(c, pos, "a block set takes one name");
        n->k = S_SETBLOCK;
        static const char *const stops[] = {"endset", NULL};
        int which;
        n->a = p_body(c, pc, stops, &which);
        return n;
    }
    if (tok_is(&w, T_NAME, "macro")) {
        node *n = mk(c, S_MACRO, pos);
        n->name = expect_name(c);
        expect(c, T_OP, "(");
        nlist l = {0};
        if (!accept(c, T_OP, ")")) {
            do {
                const char *pn = expect_name(c);
                node *def = NULL;
                if (accept(c, T_OP, "=")) def = p_expr(c);
                nl_push(c, &l, def, pn);
            } while (accept(c, T_OP, ","));
            expect(c, T_OP, ")");
        }
        n->items = l.v, n->kw = l.kw, n->n = l.n;
        tag_done(c);
        static const char *const stops[] = {"endmacro", NULL};
        int which;
        n->a = p_body(c, pc, stops, &which);
        return n;
    }
    if (tok_is(&w, T_NAME, "break") || tok_is(&w, T_NAME, "continue")) {
        node *n = mk(c, tok_is(&w, T_NAME, "break") ? S_BREAK : S_CONTINUE, pos);
        tag_done(c);
        return n;
    }
    if (tok_is(&w, T_NAME, "generation")) { /* HF's assistant-mask marker: renders its body */
        tag_done(c);
        static const char *const stops[] = {"endgeneration", NULL};
        int which;
        return p_body(c, pc, stops, &which);
    }
    fail_at(c, pos, "unknown or misplaced statement '%.*s'", (int)w.n, w.p);
}

/* Statements until one of stops (which = its index; the stop tag is consumed) or the end. */
static node *p_body(ct *c, pcur *pc, const char *const *stops, int *which) {
    nlist l = {0};
    int start_pos = pc->i > 0 && pc->i <= pc->s->n ? tpos(c, pc->s->v[pc->i - 1].tag) : 0;
    depth_in(c, start_pos);
    *which = -1;
    while (pc->i < pc->s->n) {
        const seg *g = &pc->s->v[pc->i++];
        if (g->k == G_TEXT) {
            node *t = mk(c, S_TEXT, tpos(c, g->p));
            t->text = g->p, t->tlen = g->n;
            nl_push(c, &l, t, NULL);
        } else if (g->k == G_VAR) {
            c->tp = g->p, c->te = g->p + g->n;
            node *t = mk(c, S_OUT, tpos(c, g->p));
            t->a = p_expr(c);
            tag_done(c);
            nl_push(c, &l, t, NULL);
        } else {
            if (stops)
                for (int k = 0; stops[k]; k++)
                    if (block_word(c, g, stops[k])) {
                        if (!strncmp(stops[k], "end", 3)) tag_done(c);
                        *which = k;
                        goto done;
                    }
            nl_push(c, &l, p_stmt_block(c, pc, g), NULL);
        }
    }
    if (stops) {
        const char *endw = stops[0];
        for (int k = 0; stops[k]; k++)
            if (!strncmp(stops[k], "end", 3)) endw = stops[k];
        fail_at(c, start_pos, "missing '{%% %s %%}' for the block that starts here", endw);
    }
done:;
    node *s = mk(c, S_SEQ, start_pos);
    s->items = l.v, s->n = l.n;
    c->depth--;
    return s;
}

/* ---- evaluation -------------------------------------------------------------------------------*/

enum { /* builtin functions and methods */
    F_RAISE = 1, F_NAMESPACE, F_RANGE, F_STRFTIME, F_DICT,
    M_STRIP, M_LSTRIP, M_RSTRIP, M_STARTSWITH, M_ENDSWITH, M_SPLIT, M_RSPLIT, M_UPPER, M_LOWER,
    M_TITLE, M_CAPITALIZE, M_REPLACE, M_FIND, M_JOIN, M_COUNT, M_ITEMS, M_KEYS, M_VALUES, M_GET,
    M_ISDIGIT, M_ISALPHA, M_ISSPACE
};

static const struct {
    const char *name;
    int id;
    vtype on;
} METHODS[] = {
    {"strip", M_STRIP, V_STR},        {"lstrip", M_LSTRIP, V_STR},
    {"rstrip", M_RSTRIP, V_STR},      {"startswith", M_STARTSWITH, V_STR},
    {"endswith", M_ENDSWITH, V_STR},  {"split", M_SPLIT, V_STR},
    {"rsplit", M_RSPLIT, V_STR},      {"upper", M_UPPER, V_STR},
    {"lower", M_LOWER, V_STR},        {"title", M_TITLE, V_STR},
    {"capitalize", M_CAPITALIZE, V_STR}, {"replace", M_REPLACE, V_STR},
    {"find", M_FIND, V_STR},          {"join", M_JOIN, V_STR},
    {"count", M_COUNT, V_STR},        {"isdigit", M_ISDIGIT, V_STR},
    {"isalpha", M_ISALPHA, V_STR},    {"isspace", M_ISSPACE, V_STR},
    {"items", M_ITEMS, V_DICT},       {"keys", M_KEYS, V_DICT},
    {"values", M_VALUES, V_DICT},     {"get", M_GET, V_DICT},
};

static val eval(ct *c, const node *n);
static void exec(ct *c, const node *n);

static void step(ct *c, int pos) {
    if (++c->steps > CT_MAX_STEPS) fail_at(c, pos, "the template runs too long (over %lld steps)", CT_MAX_STEPS);
}

static int lookup(ct *c, const char *name, val *out) {
    for (scope *s = c->sc; s; s = s->up) {
        int i = dict_find_s(&s->vars, name);
        if (i >= 0) {
            *out = s->vars.v[i];
            return 1;
        }
    }
    return 0;
}

static void assign(ct *c, const char *name, val v) { dict_set_s(c, &c->sc->vars, name, v); }

static val attr_of(ct *c, const val *o, const char *name, int pos) {
    if (o->t == V_UNDEF)
        fail_at(c, pos, "'%s' is undefined (reading .%s)", o->uname ? o->uname : "value", name);
    if (o->t == V_DICT) {
        if (!o->d->ns)
            for (size_t k = 0; k < sizeof METHODS / sizeof *METHODS; k++)
                if (METHODS[k].on == V_DICT && !strcmp(METHODS[k].name, name)) {
                    val *self = aalloc(c, sizeof *self);
                    *self = *o;
                    return (val){.t = V_FUNC, .fn = {METHODS[k].id, self}};
                }
        int i = dict_find_s(o->d, name);
        return i >= 0 ? o->d->v[i] : vundef(name);
    }
    if (o->t == V_STR)
        for (size_t k = 0; k < sizeof METHODS / sizeof *METHODS; k++)
            if (METHODS[k].on == V_STR && !strcmp(METHODS[k].name, name)) {
                val *self = aalloc(c, sizeof *self);
                *self = *o;
                return (val){.t = V_FUNC, .fn = {METHODS[k].id, self}};
            }
    if (o->t == V_LIST && (!strcmp(name, "append") || !strcmp(name, "pop") ||
                           !strcmp(name, "insert") || !strcmp(name, "extend")))
        fail_at(c, pos, "lists cannot be modified in a template (.%s)", name);
    return vundef(name);
}

static int64_t norm_index(int64_t i, int64_t n) { return i < 0 ? i + n : i; }

static val index_of(ct *c, const val *o, const val *k, int pos) {
    if (o->t == V_UNDEF) fail_at(c, pos, "'%s' is undefined (subscripted)", o->uname ? o->uname : "value");
    if (o->t == V_DICT) {
        int i = dict_find(o->d, k);
        if (i >= 0) return o->d->v[i];
        if (k->t == V_STR) {
            char *nm = astrdup(c, k->s.p, k->s.n);
            return attr_of(c, o, nm, pos);
        }
        return vundef(NULL);
    }
    if ((o->t == V_LIST || o->t == V_STR) && (k->t == V_INT || k->t == V_BOOL)) {
        int64_t n = o->t == V_LIST ? o->l->n : (int64_t)o->s.n;
        int64_t i = norm_index(inum(k), n);
        if (i < 0 || i >= n) return vundef(NULL);
        return o->t == V_LIST ? o->l->v[i] : vstr(o->s.p + i, 1);
    }
    if (k->t == V_STR) {
        char *nm = astrdup(c, k->s.p, k->s.n);
        return attr_of(c, o, nm, pos);
    }
    return vundef(NULL);
}

static val slice_of(ct *c, const val *o, const node *n) {
    if (o->t != V_LIST && o->t != V_STR)
        fail_at(c, n->pos, "cannot slice a %s", tname(o));
    int64_t len = o->t == V_LIST ? o->l->n : (int64_t)o->s.n;
    int64_t st = 1;
    val sv[3];
    int has[3];
    for (int k = 0; k < 3; k++) {
        has[k] = n->items[k] != NULL;
        if (has[k]) {
            sv[k] = eval(c, n->items[k]);
            if (sv[k].t == V_NONE) has[k] = 0;
            else if (sv[k].t != V_INT) fail_at(c, n->items[k]->pos, "slice indices must be integers");
        }
    }
    if (has[2]) st = sv[2].i;
    if (st == 0) fail_at(c, n->pos, "slice step cannot be zero");
    int64_t a, b;
    if (st > 0) {
        a = has[0] ? norm_index(sv[0].i, len) : 0;
        b = has[1] ? norm_index(sv[1].i, len) : len;
        if (a < 0) a = 0;
        if (b > len) b = len;
        if (b < 0) b = 0;
        if (a > len) a = len;
    } else {
        a = has[0] ? norm_index(sv[0].i, len) : len - 1;
        b = has[1] ? norm_index(sv[1].i, len) : -1;
        if (a >= len) a = len - 1;
        if (has[1] && b < -1) b = -1;
        if (a < -1) a = -1;
    }
    if (o->t == V_LIST) {
        val r = vlist(c);
        for (int64_t i = a; st > 0 ? i < b : i > b; i += st) list_push(c, r.l, o->l->v[i]);
        return r;
    }
    hyb_strbuf *sb = live_new(c);
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st) hyb_strbuf_putn(sb, o->s.p + i, 1);
    val r = vstr(astrdup(c, sb->p ? sb->p : "", sb->n), sb->n);
    live_free(c, sb);
    return r;
}

/* the elements of an iterable: a list, a dict's keys, a string's characters (bytes) */
static list *iter_of(ct *c, const val *v, int pos) {
    if (v->t == V_LIST) return v->l;
    list *l = aalloc(c, sizeof *l);
    if (v->t == V_UNDEF) return l;
    if (v->t == V_DICT) {
        for (int i = 0; i < v->d->n; i++) list_push(c, l, v->d->k[i]);
        return l;
    }
    if (v->t == V_STR) {
        for (size_t i = 0; i < v->s.n;) { /* by UTF-8 character */
            size_t k = 1;
            unsigned char ch = (unsigned char)v->s.p[i];
            if (ch >= 0xf0) k = 4;
            else if (ch >= 0xe0) k = 3;
            else if (ch >= 0xc0) k = 2;
            if (i + k > v->s.n) k = v->s.n - i;
            list_push(c, l, vstr(v->s.p + i, k));
            i += k;
        }
        return l;
    }
    fail_at(c, pos, "a %s is not iterable", tname(v));
}

static val str_concat(ct *c, const val *a, const val *b) {
    size_t n = a->s.n + b->s.n;
    if (n > CT_MAX_OUTPUT) fail_at(c, -1, "a string grows past %u bytes", CT_MAX_OUTPUT);
    char *p = aalloc(c, n + 1);
    memcpy(p, a->s.p, a->s.n);
    memcpy(p + a->s.n, b->s.p, b->s.n);
    return vstr(p, n);
}

static int cmp_vals(ct *c, const val *a, const val *b, int pos) {
    if (is_num(a) && is_num(b)) {
        double x = num(a), y = num(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = a->s.n < b->s.n ? a->s.n : b->s.n;
        int r = memcmp(a->s.p, b->s.p, n);
        return r ? (r < 0 ? -1 : 1) : (a->s.n < b->s.n ? -1 : a->s.n > b->s.n);
    }
    fail_at(c, pos, "cannot compare a %s with a %s", tname(a), tname(b));
}

static int contains(ct *c, const val *hay, const val *x, int pos) {
    if (hay->t == V_STR) {
        if (x->t != V_STR) fail_at(c, pos, "'in <string>' needs a string on the left, not a %s", tname(x));
        if (x->s.n == 0) return 1;
        if (x->s.n > hay->s.n) return 0;
        for (size_t i = 0; i + x->s.n <= hay->s.n; i++)
            if (!memcmp(hay->s.p + i, x->s.p, x->s.n)) return 1;
        return 0;
    }
    if (hay->t == V_LIST) {
        for (int i = 0; i < hay->l->n; i++)
            if (veq(&hay->l->v[i], x)) return 1;
        return 0;
    }
    if (hay->t == V_DICT) return dict_find(hay->d, x) >= 0;
    if (hay->t == V_UNDEF) fail_at(c, pos, "'%s' is undefined (right of 'in')", hay->uname ? hay->uname : "value");
    fail_at(c, pos, "'in' needs a string, list or dict on the right, not a %s", tname(hay));
}

static void undef_err(ct *c, const val *v, int pos) {
    fail_at(c, pos, "'%s' is undefined", v->uname ? v->uname : "value");
}

static val arith(ct *c, binop op, const val *a, const val *b, int pos) {
    if (a->t == V_UNDEF) undef_err(c, a, pos);
    if (b->t == V_UNDEF) undef_err(c, b, pos);
    if (op == OP_ADD && a->t == V_STR && b->t == V_STR) return str_concat(c, a, b);
    if (op == OP_ADD && a->t == V_LIST && b->t == V_LIST) {
        val r = vlist(c);
        for (int i = 0; i < a->l->n; i++) list_push(c, r.l, a->l->v[i]);
        for (int i = 0; i < b->l->n; i++) list_push(c, r.l, b->l->v[i]);
        return r;
    }
    if (op == OP_MUL && ((a->t == V_STR && (b->t == V_INT || b->t == V_BOOL)) ||
                         (b->t == V_STR && (a->t == V_INT || a->t == V_BOOL)))) {
        const val *s = a->t == V_STR ? a : b;
        int64_t k = inum(a->t == V_STR ? b : a);
        if (k <= 0) return vstr("", 0);
        if ((double)k * (double)s->s.n > CT_MAX_OUTPUT) fail_at(c, pos, "a string grows past %u bytes", CT_MAX_OUTPUT);
        char *p = aalloc(c, (size_t)k * s->s.n + 1);
        for (int64_t i = 0; i < k; i++) memcpy(p + (size_t)i * s->s.n, s->s.p, s->s.n);
        return vstr(p, (size_t)k * s->s.n);
    }
    if (!is_num(a) || !is_num(b)) {
        static const char *sym[] = {"+", "-", "*", "/", "//", "%", "**"};
        fail_at(c, pos, "unsupported operand types for %s: %s and %s", sym[op], tname(a), tname(b));
    }
    int fl = a->t == V_FLOAT || b->t == V_FLOAT;
    if (op == OP_DIV) {
        if (num(b) == 0) fail_at(c, pos, "division by zero");
        return vfloat(num(a) / num(b));
    }
    if (fl) {
        double x = num(a), y = num(b);
        switch (op) {
        case OP_ADD: return vfloat(x + y);
        case OP_SUB: return vfloat(x - y);
        case OP_MUL: return vfloat(x * y);
        case OP_POW: return vfloat(pow(x, y));
        case OP_FDIV:
            if (y == 0) fail_at(c, pos, "division by zero");
            return vfloat(floor(x / y));
        case OP_MOD: {
            if (y == 0) fail_at(c, pos, "modulo by zero");
            double r = fmod(x, y);
            if (r != 0 && ((r < 0) != (y < 0))) r += y;
            return vfloat(r);
        }
        default: break;
        }
    }
    int64_t x = inum(a), y = inum(b);
    switch (op) {
    case OP_ADD: return vint((int64_t)((uint64_t)x + (uint64_t)y));
    case OP_SUB: return vint((int64_t)((uint64_t)x - (uint64_t)y));
    case OP_MUL: return vint((int64_t)((uint64_t)x * (uint64_t)y));
    case OP_POW: {
        if (y < 0) return vfloat(pow((double)x, (double)y));
        int64_t r = 1;
        for (int64_t i = 0; i < y && i < 64; i++) r = (int64_t)((uint64_t)r * (uint64_t)x);
        return vint(r);
    }
    case OP_FDIV:
    case OP_MOD: {
        if (y == 0) fail_at(c, pos, op == OP_MOD ? "modulo by zero" : "division by zero");
        if (x == INT64_MIN && y == -1) return vint(op == OP_MOD ? 0 : INT64_MIN);
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) q--, r += y;
        return vint(op == OP_MOD ? r : q);
    }
    default: return vnone();
    }
}

/* positional argument k or keyword name (NULL when absent); the args are evaluated */
typedef struct {
    val *v;
    const char **kw;
    int n;
} argv_t;

static argv_t eval_args(ct *c, const node *n) {
    argv_t a = {aalloc(c, (size_t)(n->n + 1) * sizeof(val)), n->kw, n->n};
    for (int i = 0; i < n->n; i++) a.v[i] = eval(c, n->items[i]);
    return a;
}
static const val *arg(const argv_t *a, int k, const char *name) {
    int pi = 0;
    for (int i = 0; i < a->n; i++) {
        if (a->kw && a->kw[i]) {
            if (name && !strcmp(a->kw[i], name)) return &a->v[i];
        } else if (pi++ == k) {
            return &a->v[i];
        }
    }
    return NULL;
}
static val arg_str(ct *c, const argv_t *a, int k, const char *name, const char *what, int pos,
                   const char *dflt) {
    const val *v = arg(a, k, name);
    if (!v || v->t == V_NONE) {
        if (dflt) return vcstr(dflt);
        fail_at(c, pos, "%s: missing argument '%s'", what, name);
    }
    if (v->t != V_STR) fail_at(c, pos, "%s: '%s' must be a string, not a %s", what, name, tname(v));
    return *v;
}

static int in_set(char ch, const val *chars) {
    if (!chars) return isspace((unsigned char)ch) != 0;
    return memchr(chars->s.p, ch, chars->s.n) != NULL;
}

static val strip_str(const val *s, const val *chars, int left, int right) {
    const char *p = s->s.p, *e = p + s->s.n;
    if (left)
        while (p < e && in_set(*p, chars)) p++;
    if (right)
        while (e > p && in_set(e[-1], chars)) e--;
    return vstr(p, (size_t)(e - p));
}

static val case_str(ct *c, const val *s, int mode) { /* 0 upper, 1 lower, 2 title, 3 capitalize */
    char *p = astrdup(c, s->s.p, s->s.n);
    int start = 1;
    for (size_t i = 0; i < s->s.n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (mode == 0) p[i] = (char)toupper(ch);
        else if (mode == 1) p[i] = (char)tolower(ch);
        else if (mode == 2) {
            p[i] = (char)(start ? toupper(ch) : tolower(ch));
            start = !isalpha(ch);
        } else p[i] = (char)(i == 0 ? toupper(ch) : tolower(ch));
    }
    return vstr(p, s->s.n);
}

static val split_str(ct *c, const val *s, const val *sep, int64_t maxsplit, int from_right) {
    val r = vlist(c);
    const char *p = s->s.p, *e = p + s->s.n;
    if (!sep) { /* runs of whitespace, no empty pieces */
        list tmp = {0};
        while (p < e) {
            while (p < e && isspace((unsigned char)*p)) p++;
            if (p >= e) break;
            const char *q = p;
            while (q < e && !isspace((unsigned char)*q)) q++;
            list_push(c, &tmp, vstr(p, (size_t)(q - p)));
            p = q;
        }
        if (maxsplit >= 0 && tmp.n > maxsplit + 1) { /* rejoin the rest as Python keeps it */
            int keep = (int)maxsplit;
            if (!from_right) {
                for (int i = 0; i < keep; i++) list_push(c, r.l, tmp.v[i]);
                const char *rest = tmp.v[keep].s.p;
                const char *re = s->s.p + s->s.n;
                while (re > rest && isspace((unsigned char)re[-1])) re--;
                list_push(c, r.l, vstr(rest, (size_t)(re - rest)));
            } else {
                const char *rs = s->s.p;
                while (rs < e && isspace((unsigned char)*rs)) rs++;
                const val *last = &tmp.v[tmp.n - keep - 1];
                list_push(c, r.l, vstr(rs, (size_t)(last->s.p + last->s.n - rs)));
                for (int i = tmp.n - keep; i < tmp.n; i++) list_push(c, r.l, tmp.v[i]);
            }
            return r;
        }
        r.l->v = tmp.v, r.l->n = tmp.n, r.l->cap = tmp.cap;
        return r;
    }
    if (sep->s.n == 0) fail_at(c, -1, "split: empty separator");
    list tmp = {0};
    const char *q = p;
    for (;;) {
        const char *hit = NULL;
        for (const char *x = q; x + sep->s.n <= e; x++)
            if (!memcmp(x, sep->s.p, sep->s.n)) {
                hit = x;
                break;
            }
        if (!hit) break;
        list_push(c, &tmp, vstr(q, (size_t)(hit - q)));
        q = hit + sep->s.n;
    }
    list_push(c, &tmp, vstr(q, (size_t)(e - q)));
    if (maxsplit < 0 || tmp.n <= maxsplit + 1) {
        r.l->v = tmp.v, r.l->n = tmp.n, r.l->cap = tmp.cap;
        return r;
    }
    if (!from_right) {
        for (int i = 0; i < maxsplit; i++) list_push(c, r.l, tmp.v[i]);
        const char *rest = tmp.v[maxsplit].s.p;
        list_push(c, r.l, vstr(rest, (size_t)(e - rest)));
    } else {
        const val *last = &tmp.v[tmp.n - maxsplit - 1];
        list_push(c, r.l, vstr(p, (size_t)(last->s.p + last->s.n - p)));
        for (int i = tmp.n - (int)maxsplit; i < tmp.n; i++) list_push(c, r.l, tmp.v[i]);
    }
    return r;
}

static val replace_str(ct *c, const val *s, const val *old, const val *nw, int64_t count) {
    hyb_strbuf *b = live_new(c);
    const char *p = s->s.p, *e = p + s->s.n;
    int64_t done = 0;
    if (old->s.n == 0) { /* Python inserts between every character */
        for (const char *x = p; x <= e; x++) {
            if (count < 0 || done < count) hyb_strbuf_putn(b, nw->s.p, nw->s.n), done++;
            if (x < e) hyb_strbuf_putn(b, x, 1);
        }
    } else {
        while (p < e) {
            if ((count < 0 || done < count) && (size_t)(e - p) >= old->s.n &&
                !memcmp(p, old->s.p, old->s.n)) {
                hyb_strbuf_putn(b, nw->s.p, nw->s.n);
                p += old->s.n;
                done++;
            } else {
                hyb_strbuf_putn(b, p, 1);
                p++;
            }
            if (b->n > CT_MAX_OUTPUT) break;
        }
    }
    if (b->oom || b->n > CT_MAX_OUTPUT) {
        live_free(c, b);
        fail_at(c, -1, "replace: the result is too large");
    }
    val r = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
    live_free(c, b);
    return r;
}

static val join_vals(ct *c, const list *l, const val *sep, const char *attr, int pos) {
    hyb_strbuf *b = live_new(c);
    for (int i = 0; i < l->n; i++) {
        if (i && sep) hyb_strbuf_putn(b, sep->s.p, sep->s.n);
        val x = l->v[i];
        if (attr) x = attr_of(c, &x, attr, pos);
        val s = to_str(c, &x);
        hyb_strbuf_putn(b, s.s.p, s.s.n);
        if (b->n > CT_MAX_OUTPUT) break;
    }
    if (b->oom || b->n > CT_MAX_OUTPUT) fail_at(c, pos, "join: the result is too large");
    val r = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
    live_free(c, b);
    return r;
}

static val call_macro(ct *c, const node *m, const argv_t *a, int pos);

static val call_value(ct *c, const val *f, const argv_t *a, int pos) {
    if (f->t == V_MACRO) return call_macro(c, f->macro, a, pos);
    if (f->t != V_FUNC) {
        if (f->t == V_UNDEF)
            fail_at(c, pos, "'%s' is undefined (called as a function)", f->uname ? f->uname : "value");
        fail_at(c, pos, "a %s is not callable", tname(f));
    }
    const val *self = f->fn.self;
    switch (f->fn.id) {
    case F_RAISE: {
        const val *m = arg(a, 0, "message");
        val s = m ? to_str(c, m) : vcstr("");
        fail_at(c, pos, "the template raised an error: %.*s", (int)(s.s.n > 400 ? 400 : s.s.n), s.s.p);
    }
    case F_NAMESPACE:
    case F_DICT: {
        val r = vdict(c);
        r.d->ns = f->fn.id == F_NAMESPACE;
        for (int i = 0; i < a->n; i++) {
            if (!a->kw || !a->kw[i]) {
                if (a->v[i].t == V_DICT) { /* namespace(d) / dict(d): copy */
                    for (int k = 0; k < a->v[i].d->n; k++)
                        dict_set(c, r.d, a->v[i].d->k[k], a->v[i].d->v[k]);
                    continue;
                }
                fail_at(c, pos, "%s() takes keyword arguments", r.d->ns ? "namespace" : "dict");
            }
            dict_set_s(c, r.d, a->kw[i], a->v[i]);
        }
        return r;
    }
    case F_RANGE: {
        int64_t lo = 0, hi, st = 1;
        const val *x0 = arg(a, 0, NULL), *x1 = arg(a, 1, NULL), *x2 = arg(a, 2, NULL);
        if (!x0) fail_at(c, pos, "range() needs at least one argument");
        for (const val *x = x0; x; x = x == x0 ? x1 : x == x1 ? x2 : NULL)
            if (x->t != V_INT && x->t != V_BOOL) fail_at(c, pos, "range() takes integers, not a %s", tname(x));
        if (x1) lo = inum(x0), hi = inum(x1);
        else hi = inum(x0);
        if (x2) st = inum(x2);
        if (st == 0) fail_at(c, pos, "range() step must not be zero");
        val r = vlist(c);
        double count = st > 0 ? ceil(((double)hi - (double)lo) / (double)st)
                              : ceil(((double)lo - (double)hi) / (double)-st);
        if (count > CT_MAX_RANGE) fail_at(c, pos, "range() of %.0f elements is too long (at most %d)", count, CT_MAX_RANGE);
        for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) list_push(c, r.l, vint(i));
        return r;
    }
    case F_STRFTIME: {
        val fmt = arg_str(c, a, 0, "format", "strftime_now", pos, NULL);
        char *fs = astrdup(c, fmt.s.p, fmt.s.n), buf[256];
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        size_t n = strftime(buf, sizeof buf, fs, &tmv);
        return vstr(astrdup(c, buf, n), n);
    }
    case M_STRIP:
    case M_LSTRIP:
    case M_RSTRIP: {
        const val *ch = arg(a, 0, "chars");
        if (ch && ch->t == V_NONE) ch = NULL;
        if (ch && ch->t != V_STR) fail_at(c, pos, "strip: chars must be a string");
        int id = f->fn.id;
        return strip_str(self, ch, id != M_RSTRIP, id != M_LSTRIP);
    }
    case M_STARTSWITH:
    case M_ENDSWITH: {
        const val *x = arg(a, 0, "prefix");
        if (!x) x = arg(a, 0, "suffix");
        if (!x) fail_at(c, pos, "startswith/endswith: missing argument");
        list one = {0};
        const list *opts = x->t == V_LIST ? x->l : (list_push(c, &one, *x), &one);
        for (int i = 0; i < opts->n; i++) {
            const val *o = &opts->v[i];
            if (o->t != V_STR) fail_at(c, pos, "startswith/endswith: expected a string, not a %s", tname(o));
            if (o->s.n > self->s.n) continue;
            const char *at = f->fn.id == M_STARTSWITH ? self->s.p : self->s.p + self->s.n - o->s.n;
            if (!memcmp(at, o->s.p, o->s.n)) return vbool(1);
        }
        return vbool(0);
    }
    case M_SPLIT:
    case M_RSPLIT: {
        const val *sep = arg(a, 0, "sep");
        if (sep && sep->t == V_NONE) sep = NULL;
        if (sep && sep->t != V_STR) fail_at(c, pos, "split: sep must be a string");
        if (sep && sep->s.n == 0) fail_at(c, pos, "split: empty separator");
        const val *ms = arg(a, 1, "maxsplit");
        return split_str(c, self, sep, ms ? inum(ms) : -1, f->fn.id == M_RSPLIT);
    }
    case M_UPPER: return case_str(c, self, 0);
    case M_LOWER: return case_str(c, self, 1);
    case M_TITLE: return case_str(c, self, 2);
    case M_CAPITALIZE: return case_str(c, self, 3);
    case M_REPLACE: {
        val o = arg_str(c, a, 0, "old", "replace", pos, NULL);
        val n = arg_str(c, a, 1, "new", "replace", pos, NULL);
        const val *k = arg(a, 2, "count");
        return replace_str(c, self, &o, &n, k ? inum(k) : -1);
    }
    case M_FIND: {
        val x = arg_str(c, a, 0, "sub", "find", pos, NULL);
        for (size_t i = 0; i + x.s.n <= self->s.n; i++)
            if (!memcmp(self->s.p + i, x.s.p, x.s.n)) return vint((int64_t)i);
        return vint(-1);
    }
    case M_COUNT: {
        val x = arg_str(c, a, 0, "sub", "count", pos, NULL);
        int64_t k = 0;
        if (x.s.n == 0) return vint((int64_t)self->s.n + 1);
        for (size_t i = 0; i + x.s.n <= self->s.n;)
            if (!memcmp(self->s.p + i, x.s.p, x.s.n)) k++, i += x.s.n;
            else i++;
        return vint(k);
    }
    case M_JOIN: {
        const val *it = arg(a, 0, "iterable");
        if (!it) fail_at(c, pos, "join: missing argument");
        return join_vals(c, iter_of(c, it, pos), self, NULL, pos);
    }
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISSPACE: {
        if (self->s.n == 0) return vbool(0);
        for (size_t i = 0; i < self->s.n; i++) {
            unsigned char ch = (unsigned char)self->s.p[i];
            int ok = f->fn.id == M_ISDIGIT ? isdigit(ch) : f->fn.id == M_ISALPHA ? isalpha(ch) : isspace(ch);
            if (!ok) return vbool(0);
        }
        return vbool(1);
    }
    case M_ITEMS:
    case M_KEYS:
    case M_VALUES: {
        val r = vlist(c);
        for (int i = 0; i < self->d->n; i++) {
            if (f->fn.id == M_KEYS) list_push(c, r.l, self->d->k[i]);
            else if (f->fn.id == M_VALUES) list_push(c, r.l, self->d->v[i]);
            else {
                val p = vlist(c);
                list_push(c, p.l, self->d->k[i]);
                list_push(c, p.l, self->d->v[i]);
                list_push(c, r.l, p);
            }
        }
        return r;
    }
    case M_GET: {
        const val *k = arg(a, 0, "key");
        if (!k) fail_at(c, pos, "get: missing key");
        int i = dict_find(self->d, k);
        if (i >= 0) return self->d->v[i];
        const val *d = arg(a, 1, "default");
        return d ? *d : vnone();
    }
    default: fail_at(c, pos, "internal: unknown function %d", f->fn.id);
    }
}

static val call_macro(ct *c, const node *m, const argv_t *a, int pos) {
    if (++c->depth > CT_MAX_DEPTH) fail_at(c, pos, "macro calls nested too deeply");
    scope *s = aalloc(c, sizeof *s);
    /* a macro sees the template's globals and what was defined where it was, not the caller's
     * locals: use the outermost scope as its parent */
    s->up = c->top;
    int np = 0;
    for (int i = 0; i < a->n; i++) {
        if (a->kw && a->kw[i]) {
            int found = 0;
            for (int k = 0; k < m->n; k++)
                if (!strcmp(m->kw[k], a->kw[i])) found = 1;
            if (!found) fail_at(c, pos, "macro '%s' has no parameter '%s'", m->name, a->kw[i]);
            dict_set_s(c, &s->vars, a->kw[i], a->v[i]);
        } else {
            if (np >= m->n) fail_at(c, pos, "macro '%s' takes %d arguments", m->name, m->n);
            dict_set_s(c, &s->vars, m->kw[np++], a->v[i]);
        }
    }
    scope *saved = c->sc;
    c->sc = s;
    for (int k = 0; k < m->n; k++)
        if (dict_find_s(&s->vars, m->kw[k]) < 0)
            dict_set_s(c, &s->vars, m->kw[k], m->items[k] ? eval(c, m->items[k]) : vundef(m->kw[k]));
    hyb_strbuf *out = c->out, *buf = live_new(c);
    c->out = buf;
    int brk = c->brk;
    exec(c, m->a);
    c->brk = brk;
    c->out = out;
    c->sc = saved;
    if (buf->oom) fail_at(c, pos, "out of memory");
    val r = vstr(astrdup(c, buf->p ? buf->p : "", buf->n), buf->n);
    live_free(c, buf);
    c->depth--;
    return r;
}

/* Does v pass test `name` (with args)? */
static int run_test(ct *c, const char *name, const val *v, const argv_t *a, int pos) {
    const val *x = arg(a, 0, NULL);
    if (!strcmp(name, "defined")) return v->t != V_UNDEF;
    if (!strcmp(name, "undefined")) return v->t == V_UNDEF;
    if (!strcmp(name, "none")) return v->t == V_NONE;
    if (!strcmp(name, "string")) return v->t == V_STR;
    if (!strcmp(name, "number")) return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL;
    if (!strcmp(name, "integer")) return v->t == V_INT;
    if (!strcmp(name, "float")) return v->t == V_FLOAT;
    if (!strcmp(name, "boolean")) return v->t == V_BOOL;
    if (!strcmp(name, "true")) return v->t == V_BOOL && v->b;
    if (!strcmp(name, "false")) return v->t == V_BOOL && !v->b;
    if (!strcmp(name, "mapping")) return v->t == V_DICT;
    if (!strcmp(name, "iterable")) return v->t == V_LIST || v->t == V_DICT || v->t == V_STR;
    if (!strcmp(name, "sequence")) return v->t == V_LIST || v->t == V_DICT || v->t == V_STR;
    if (!strcmp(name, "callable")) return v->t == V_FUNC || v->t == V_MACRO;
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (v->t != V_STR) return 0;
        val t = case_str(c, v, name[0] == 'l' ? 1 : 0);
        return veq(&t, v);
    }
    if (!strcmp(name, "odd") || !strcmp(name, "even")) {
        if (v->t != V_INT) fail_at(c, pos, "'%s' test on a %s", name, tname(v));
        return (v->i % 2 != 0) == (name[0] == 'o');
    }
    if (!strcmp(name, "divisibleby")) {
        if (!x || !is_num(x) || inum(x) == 0 || v->t != V_INT) fail_at(c, pos, "divisibleby needs integers");
        return v->i % inum(x) == 0;
    }
    if (!x) fail_at(c, pos, "test '%s' needs an argument", name);
    if (!strcmp(name, "equalto") || !strcmp(name, "eq") || !strcmp(name, "==") ||
        !strcmp(name, "sameas"))
        return veq(v, x);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !veq(v, x);
    if (!strcmp(name, "lt") || !strcmp(name, "<")) return cmp_vals(c, v, x, pos) < 0;
    if (!strcmp(name, "le") || !strcmp(name, "<=")) return cmp_vals(c, v, x, pos) <= 0;
    if (!strcmp(name, "gt") || !strcmp(name, ">")) return cmp_vals(c, v, x, pos) > 0;
    if (!strcmp(name, "ge") || !strcmp(name, ">=")) return cmp_vals(c, v, x, pos) >= 0;
    if (!strcmp(name, "in")) return contains(c, x, v, pos);
    fail_at(c, pos, "unknown test '%s'", name);
}

static val filter(ct *c, const char *name, const val *v, const argv_t *a, int pos) {
    if (!strcmp(name, "trim")) {
        if (v->t == V_UNDEF) return vstr("", 0);
        val s = to_str(c, v);
        const val *ch = arg(a, 0, "chars");
        return strip_str(&s, ch && ch->t == V_STR ? ch : NULL, 1, 1);
    }
    if (!strcmp(name, "length") || !strcmp(name, "count")) {
        if (v->t == V_STR) { /* characters, not bytes */
            int64_t k = 0;
            for (size_t i = 0; i < v->s.n; i++) k += ((unsigned char)v->s.p[i] & 0xc0) != 0x80;
            return vint(k);
        }
        if (v->t == V_LIST) return vint(v->l->n);
        if (v->t == V_DICT) return vint(v->d->n);
        if (v->t == V_UNDEF) return vint(0);
        fail_at(c, pos, "length of a %s", tname(v));
    }
    if (!strcmp(name, "tojson")) {
        const val *ind = arg(a, 0, "indent");
        int indent = ind && (ind->t == V_INT) ? (int)ind->i : -1;
        if (indent > 64) indent = 64;
        hyb_strbuf *b = live_new(c);
        put_json(c, b, v, indent, 0, pos);
        if (b->oom) fail_at(c, pos, "out of memory");
        val r = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
        live_free(c, b);
        return r;
    }
    if (!strcmp(name, "string")) return v->t == V_UNDEF ? vstr("", 0) : to_str(c, v);
    if (!strcmp(name, "upper") || !strcmp(name, "lower") || !strcmp(name, "title") ||
        !strcmp(name, "capitalize")) {
        val s = v->t == V_UNDEF ? vstr("", 0) : to_str(c, v);
        return case_str(c, &s, name[0] == 'u' ? 0 : name[0] == 'l' ? 1 : name[0] == 't' ? 2 : 3);
    }
    if (!strcmp(name, "default") || !strcmp(name, "d")) {
        const val *d = arg(a, 0, "default_value");
        const val *bo = arg(a, 1, "boolean");
        int use = v->t == V_UNDEF || (bo && truthy(bo) && !truthy(v));
        return use ? (d ? *d : vstr("", 0)) : *v;
    }
    if (!strcmp(name, "int")) {
        if (v->t == V_INT) return *v;
        if (v->t == V_FLOAT) return vint((int64_t)v->f);
        if (v->t == V_BOOL) return vint(v->b);
        if (v->t == V_STR) {
            char *s = astrdup(c, v->s.p, v->s.n), *e;
            long long x = strtoll(s, &e, 10);
            return vint(*e == 0 && e != s ? x : 0);
        }
        const val *d = arg(a, 0, "default");
        return d ? *d : vint(0);
    }
    if (!strcmp(name, "float")) {
        if (is_num(v)) return vfloat(num(v));
        if (v->t == V_STR) {
            char *s = astrdup(c, v->s.p, v->s.n), *e;
            double x = strtod(s, &e);
            return vfloat(*e == 0 && e != s ? x : 0.0);
        }
        return vfloat(0.0);
    }
    if (!strcmp(name, "abs")) {
        if (v->t == V_INT) return vint(v->i < 0 ? -v->i : v->i);
        if (is_num(v)) return vfloat(fabs(num(v)));
        fail_at(c, pos, "abs of a %s", tname(v));
    }
    if (!strcmp(name, "first") || !strcmp(name, "last")) {
        list *l = iter_of(c, v, pos);
        if (l->n == 0) return vundef(NULL);
        return name[0] == 'f' ? l->v[0] : l->v[l->n - 1];
    }
    if (!strcmp(name, "join")) {
        const val *sep = arg(a, 0, "d");
        if (sep && sep->t != V_STR) fail_at(c, pos, "join: the separator must be a string");
        const val *at = arg(a, 1, "attribute");
        char *attr = at && at->t == V_STR ? astrdup(c, at->s.p, at->s.n) : NULL;
        return join_vals(c, iter_of(c, v, pos), sep, attr, pos);
    }
    if (!strcmp(name, "list")) {
        val r = vlist(c);
        list *l = iter_of(c, v, pos);
        for (int i = 0; i < l->n; i++) list_push(c, r.l, l->v[i]);
        return r;
    }
    if (!strcmp(name, "reverse")) {
        if (v->t == V_STR) {
            char *p = aalloc(c, v->s.n + 1);
            for (size_t i = 0; i < v->s.n; i++) p[i] = v->s.p[v->s.n - 1 - i];
            return vstr(p, v->s.n);
        }
        list *l = iter_of(c, v, pos);
        val r = vlist(c);
        for (int i = l->n - 1; i >= 0; i--) list_push(c, r.l, l->v[i]);
        return r;
    }
    if (!strcmp(name, "replace")) {
        val s = to_str(c, v);
        val o = arg_str(c, a, 0, "old", "replace", pos, NULL);
        val n = arg_str(c, a, 1, "new", "replace", pos, NULL);
        const val *k = arg(a, 2, "count");
        return replace_str(c, &s, &o, &n, k ? inum(k) : -1);
    }
    if (!strcmp(name, "safe") || !strcmp(name, "e") || !strcmp(name, "escape")) {
        if (name[0] == 's') return *v;
        val s = to_str(c, v);
        hyb_strbuf *b = live_new(c);
        for (size_t i = 0; i < s.s.n; i++) {
            char ch = s.s.p[i];
            if (ch == '&') hyb_strbuf_puts(b, "&amp;");
            else if (ch == '<') hyb_strbuf_puts(b, "&lt;");
            else if (ch == '>') hyb_strbuf_puts(b, "&gt;");
            else if (ch == '"') hyb_strbuf_puts(b, "&#34;");
            else if (ch == '\'') hyb_strbuf_puts(b, "&#39;");
            else hyb_strbuf_putn(b, &ch, 1);
        }
        val r = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
        live_free(c, b);
        return r;
    }
    if (!strcmp(name, "items")) {
        if (v->t != V_DICT) fail_at(c, pos, "items of a %s", tname(v));
        val self = *v;
        val f = {.t = V_FUNC, .fn = {M_ITEMS, &self}};
        argv_t none = {0};
        return call_value(c, &f, &none, pos);
    }
    if (!strcmp(name, "selectattr") || !strcmp(name, "rejectattr") || !strcmp(name, "select") ||
        !strcmp(name, "reject")) {
        int isattr = strstr(name, "attr") != NULL, rej = name[0] == 'r';
        list *l = iter_of(c, v, pos);
        val r = vlist(c);
        int k = 0;
        char *attr = NULL;
        if (isattr) {
            val at = arg_str(c, a, k++, "attr", name, pos, NULL);
            attr = astrdup(c, at.s.p, at.s.n);
        }
        const val *tn = arg(a, k++, NULL);
        char *test = tn && tn->t == V_STR ? astrdup(c, tn->s.p, tn->s.n) : NULL;
        argv_t targs = {0};
        if (test && a->n > k) targs = (argv_t){a->v + k, NULL, a->n - k};
        for (int i = 0; i < l->n; i++) {
            val x = attr ? attr_of(c, &l->v[i], attr, pos) : l->v[i];
            int ok = test ? run_test(c, test, &x, &targs, pos) : truthy(&x);
            if (ok != rej) list_push(c, r.l, l->v[i]);
        }
        return r;
    }
    if (!strcmp(name, "map")) {
        const val *at = arg(a, 99, "attribute");
        list *l = iter_of(c, v, pos);
        val r = vlist(c);
        if (at && at->t == V_STR) {
            char *attr = astrdup(c, at->s.p, at->s.n);
            const val *d = arg(a, 99, "default");
            for (int i = 0; i < l->n; i++) {
                val x = attr_of(c, &l->v[i], attr, pos);
                list_push(c, r.l, x.t == V_UNDEF && d ? *d : x);
            }
            return r;
        }
        const val *fn = arg(a, 0, NULL);
        if (!fn || fn->t != V_STR) fail_at(c, pos, "map: needs attribute= or a filter name");
        char *fname = astrdup(c, fn->s.p, fn->s.n);
        argv_t rest = {a->v + 1, a->kw ? a->kw + 1 : NULL, a->n - 1};
        for (int i = 0; i < l->n; i++) list_push(c, r.l, filter(c, fname, &l->v[i], &rest, pos));
        return r;
    }
    if (!strcmp(name, "indent")) {
        const val *w = arg(a, 0, "width");
        const val *first = arg(a, 1, "first");
        const val *blank = arg(a, 2, "blank");
        int width = w && w->t == V_INT ? (int)(w->i > 64 ? 64 : w->i) : 4;
        val s = to_str(c, v);
        hyb_strbuf *b = live_new(c);
        const char *p = s.s.p, *e = p + s.s.n;
        int line = 0;
        while (p <= e) {
            const char *q = memchr(p, '\n', (size_t)(e - p));
            if (!q) q = e;
            int empty = q == p;
            if ((line > 0 || (first && truthy(first))) && (!empty || (blank && truthy(blank))))
                hyb_strbuf_printf(b, "%*s", width, "");
            hyb_strbuf_putn(b, p, (size_t)(q - p));
            if (q == e) break;
            hyb_strbuf_putn(b, "\n", 1);
            p = q + 1;
            line++;
        }
        val r = vstr(astrdup(c, b->p ? b->p : "", b->n), b->n);
        live_free(c, b);
        return r;
    }
    if (!strcmp(name, "unique")) {
        list *l = iter_of(c, v, pos);
        val r = vlist(c);
        for (int i = 0; i < l->n; i++) {
            val tmp = r;
            if (!contains(c, &tmp, &l->v[i], pos)) list_push(c, r.l, l->v[i]);
        }
        return r;
    }
    fail_at(c, pos, "unknown filter '%s'", name);
}

static val eval(ct *c, const node *n) {
    step(c, n->pos);
    switch (n->k) {
    case E_LIT: return n->lit;
    case E_NAME: {
        val v;
        if (lookup(c, n->name, &v)) return v;
        return vundef(n->name);
    }
    case E_ATTR: {
        val o = eval(c, n->a);
        return attr_of(c, &o, n->name, n->pos);
    }
    case E_INDEX: {
        val o = eval(c, n->a), k = eval(c, n->b);
        return index_of(c, &o, &k, n->pos);
    }
    case E_SLICE: {
        val o = eval(c, n->a);
        return slice_of(c, &o, n);
    }
    case E_CALL: {
        val f = eval(c, n->a);
        argv_t a = eval_args(c, n);
        return call_value(c, &f, &a, n->pos);
    }
    case E_FILTER: {
        val v = eval(c, n->a);
        argv_t a = eval_args(c, n);
        return filter(c, n->name, &v, &a, n->pos);
    }
    case E_TEST: {
        val v = eval(c, n->a);
        argv_t a = eval_args(c, n);
        int r = run_test(c, n->name, &v, &a, n->pos);
        return vbool(n->negate ? !r : r);
    }
    case E_NOT: {
        val v = eval(c, n->a);
        return vbool(!truthy(&v));
    }
    case E_NEG:
    case E_POS: {
        val v = eval(c, n->a);
        if (v.t == V_INT) return n->k == E_NEG ? vint((int64_t)(0 - (uint64_t)v.i)) : v;
        if (v.t == V_BOOL) return vint(n->k == E_NEG ? -v.b : v.b);
        if (v.t == V_FLOAT) return n->k == E_NEG ? vfloat(-v.f) : v;
        if (v.t == V_UNDEF) undef_err(c, &v, n->pos);
        fail_at(c, n->pos, "bad operand type for unary %c: %s", n->k == E_NEG ? '-' : '+', tname(&v));
    }
    case E_AND: {
        val a = eval(c, n->a);
        return truthy(&a) ? eval(c, n->b) : a;
    }
    case E_OR: {
        val a = eval(c, n->a);
        return truthy(&a) ? a : eval(c, n->b);
    }
    case E_COND: {
        val cnd = eval(c, n->cond);
        if (truthy(&cnd)) return eval(c, n->a);
        return n->b ? eval(c, n->b) : vundef(NULL);
    }
    case E_LIST: {
        val r = vlist(c);
        for (int i = 0; i < n->n; i++) list_push(c, r.l, eval(c, n->items[i]));
        return r;
    }
    case E_DICT: {
        val r = vdict(c);
        for (int i = 0; i < n->n; i++) dict_set(c, r.d, eval(c, n->items[i]), eval(c, n->items2[i]));
        return r;
    }
    case E_BIN: {
        val a = eval(c, n->a), b = eval(c, n->b);
        switch (n->op) {
        case OP_CAT: {
            val x = a.t == V_UNDEF ? vstr("", 0) : to_str(c, &a);
            val y = b.t == V_UNDEF ? vstr("", 0) : to_str(c, &b);
            return str_concat(c, &x, &y);
        }
        case OP_EQ: return vbool(veq(&a, &b));
        case OP_NE: return vbool(!veq(&a, &b));
        case OP_LT: return vbool(cmp_vals(c, &a, &b, n->pos) < 0);
        case OP_LE: return vbool(cmp_vals(c, &a, &b, n->pos) <= 0);
        case OP_GT: return vbool(cmp_vals(c, &a, &b, n->pos) > 0);
        case OP_GE: return vbool(cmp_vals(c, &a, &b, n->pos) >= 0);
        case OP_IN: return vbool(contains(c, &b, &a, n->pos));
        case OP_NOTIN: return vbool(!contains(c, &b, &a, n->pos));
        default: return arith(c, n->op, &a, &b, n->pos);
        }
    }
    default: fail_at(c, n->pos, "internal: not an expression");
    }
}

static void emit(ct *c, const char *p, size_t n) {
    if (c->out->n + n > CT_MAX_OUTPUT)
        fail_at(c, -1, "the rendered text exceeds %u bytes", CT_MAX_OUTPUT);
    hyb_strbuf_putn(c->out, p, n);
    if (c->out->oom) fail_at(c, -1, "out of memory");
}

static void exec(ct *c, const node *n) {
    step(c, n->pos);
    switch (n->k) {
    case S_SEQ:
        for (int i = 0; i < n->n && !c->brk; i++) exec(c, n->items[i]);
        return;
    case S_TEXT: emit(c, n->text, n->tlen); return;
    case S_OUT: {
        val v = eval(c, n->a);
        if (v.t == V_STR) emit(c, v.s.p, v.s.n);
        else if (v.t != V_UNDEF) {
            val s = to_str(c, &v);
            emit(c, s.s.p, s.s.n);
        }
        return;
    }
    case S_IF: {
        val v = eval(c, n->cond);
        if (truthy(&v)) exec(c, n->a);
        else if (n->b) exec(c, n->b);
        return;
    }
    case S_FOR: {
        val it = eval(c, n->a);
        if (it.t == V_UNDEF) it = vlist(c);
        list *src = iter_of(c, &it, n->a->pos);
        /* the loop filter runs before loop.* are counted */
        list *l = src;
        scope fsc = {.up = c->sc};
        if (n->cond) {
            l = aalloc(c, sizeof *l);
            for (int i = 0; i < src->n; i++) {
                fsc.vars.n = 0;
                c->sc = &fsc;
                if (n->var2) {
                    const val *pr = &src->v[i];
                    if (pr->t != V_LIST || pr->l->n != 2) {
                        c->sc = fsc.up;
                        fail_at(c, n->pos, "cannot unpack a %s into two loop variables", tname(pr));
                    }
                    assign(c, n->var1, pr->l->v[0]);
                    assign(c, n->var2, pr->l->v[1]);
                } else {
                    assign(c, n->var1, src->v[i]);
                }
                val ok = eval(c, n->cond);
                c->sc = fsc.up;
                if (truthy(&ok)) list_push(c, l, src->v[i]);
            }
        }
        if (l->n == 0) {
            if (n->c) exec(c, n->c);
            return;
        }
        /* one scope and one loop object for all iterations, cleared / updated in place: a
         * variable set in an iteration ends with it (Jinja2's scoping), and Jinja2's loop object
         * is one object too */
        scope *outer = c->sc;
        scope *s = aalloc(c, sizeof *s);
        s->up = outer;
        val lp = vdict(c);
        for (int i = 0; i < l->n; i++) {
            s->vars.n = 0;
            c->sc = s;
            dict_set_s(c, lp.d, "index", vint(i + 1));
            dict_set_s(c, lp.d, "index0", vint(i));
            dict_set_s(c, lp.d, "revindex", vint(l->n - i));
            dict_set_s(c, lp.d, "revindex0", vint(l->n - i - 1));
            dict_set_s(c, lp.d, "first", vbool(i == 0));
            dict_set_s(c, lp.d, "last", vbool(i == l->n - 1));
            dict_set_s(c, lp.d, "length", vint(l->n));
            dict_set_s(c, lp.d, "previtem", i > 0 ? l->v[i - 1] : vundef("previtem"));
            dict_set_s(c, lp.d, "nextitem", i + 1 < l->n ? l->v[i + 1] : vundef("nextitem"));
            assign(c, "loop", lp);
            if (n->var2) {
                const val *pr = &l->v[i];
                if (pr->t != V_LIST || pr->l->n != 2) {
                    c->sc = outer;
                    fail_at(c, n->pos, "cannot unpack a %s into two loop variables", tname(pr));
                }
                assign(c, n->var1, pr->l->v[0]);
                assign(c, n->var2, pr->l->v[1]);
            } else {
                assign(c, n->var1, l->v[i]);
            }
            exec(c, n->b);
            c->sc = outer;
            if (c->brk == 1) {
                c->brk = 0;
                break;
            }
            c->brk = 0;
        }
        return;
    }
    case S_SET: {
        val v = eval(c, n->a);
        if (n->attr) {
            val ns;
            if (!lookup(c, n->name, &ns) || ns.t != V_DICT || !ns.d->ns)
                fail_at(c, n->pos, "'%s' is not a namespace: only a namespace() takes "
                        "'set %s.%s = ...'", n->name, n->name, n->attr);
            dict_set_s(c, ns.d, n->attr, v);
        } else if (n->var2) {
            if (v.t != V_LIST || v.l->n != 2)
                fail_at(c, n->pos, "cannot unpack a %s into two names", tname(&v));
            assign(c, n->name, v.l->v[0]);
            assign(c, n->var2, v.l->v[1]);
        } else {
            assign(c, n->name, v);
        }
        return;
    }
    case S_SETBLOCK: {
        hyb_strbuf *out = c->out, *buf = live_new(c);
        c->out = buf;
        exec(c, n->a);
        c->out = out;
        if (buf->oom) fail_at(c, n->pos, "out of memory");
        val r = vstr(astrdup(c, buf->p ? buf->p : "", buf->n), buf->n);
        live_free(c, buf);
        assign(c, n->name, r);
        return;
    }
    case S_MACRO: assign(c, n->name, (val){.t = V_MACRO, .macro = n}); return;
    case S_BREAK: c->brk = 1; return;
    case S_CONTINUE: c->brk = 2; return;
    default: fail_at(c, n->pos, "internal: not a statement");
    }
}

/* ---- JSON context to values -------------------------------------------------------------------*/

static val from_json(ct *c, const cJSON *j, int depth) {
    if (depth > CT_MAX_DEPTH) fail_at(c, -1, "the context JSON is nested too deeply");
    if (cJSON_IsNull(j)) return vnone();
    if (cJSON_IsBool(j)) return vbool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0) {
            /* cJSON loses whether the text had a '.': integers are what templates compare */
            return vint((int64_t)d);
        }
        return vfloat(d);
    }
    if (cJSON_IsString(j)) return vcstr(astrdup(c, j->valuestring, strlen(j->valuestring)));
    if (cJSON_IsArray(j)) {
        val r = vlist(c);
        const cJSON *e;
        cJSON_ArrayForEach(e, j) list_push(c, r.l, from_json(c, e, depth + 1));
        return r;
    }
    if (cJSON_IsObject(j)) {
        val r = vdict(c);
        const cJSON *e;
        cJSON_ArrayForEach(e, j) dict_set_s(c, r.d, astrdup(c, e->string, strlen(e->string)),
                                            from_json(c, e, depth + 1));
        return r;
    }
    return vnone();
}

/* ---- entry points -----------------------------------------------------------------------------*/

const char *hyb_chat_template_chatml(void) {
    return "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
           "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
           "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}";
}

static void free_arena(ct *c) {
    while (c->nlive > 0) hyb_strbuf_free(c->live[--c->nlive]);
    while (c->arena) {
        ablock *b = c->arena->next;
        free(c->arena);
        c->arena = b;
    }
}

static int report(ct *c, const char *what) {
    if (c->err_pos < 0) return hyb_error_set(HYB_ERR_ARG, "chat template: %s: %s", what, c->err);
    int line = 1, col = 1;
    for (int i = 0; i < c->err_pos && (size_t)i < c->srclen; i++) {
        if (c->src[i] == '\n') line++, col = 1;
        else col++;
    }
    return hyb_error_set(HYB_ERR_ARG, "chat template line %d col %d: %s", line, col, c->err);
}

int hyb_chat_template_check(const char *tmpl) {
    if (!tmpl) return hyb_error_set(HYB_ERR_ARG, "chat template: NULL template");
    ct c = {.src = tmpl, .srclen = strlen(tmpl)};
    if (setjmp(c.jb)) {
        int rc = report(&c, "syntax");
        free_arena(&c);
        return rc;
    }
    segs s = {0};
    split_segments(&c, &s);
    pcur pc = {&s, 0};
    int which;
    p_body(&c, &pc, NULL, &which);
    free_arena(&c);
    return HYB_OK;
}

int hyb_chat_template_render(const char *tmpl, const char *ctx_json, char **out) {
    if (out) *out = NULL;
    if (!tmpl || !out) return hyb_error_set(HYB_ERR_ARG, "chat template: NULL argument");
    cJSON *ctx = ctx_json ? cJSON_Parse(ctx_json) : cJSON_CreateObject();
    if (!ctx || !cJSON_IsObject(ctx)) {
        cJSON_Delete(ctx);
        return hyb_error_set(HYB_ERR_ARG, "chat template: the context is not a JSON object");
    }
    ct c = {.src = tmpl, .srclen = strlen(tmpl)};
    hyb_strbuf result = {0};
    scope global = {0};
    if (setjmp(c.jb)) {
        int rc = report(&c, "render");
        hyb_strbuf_free(&result);
        free_arena(&c);
        cJSON_Delete(ctx);
        return rc;
    }
    segs s = {0};
    split_segments(&c, &s);
    pcur pc = {&s, 0};
    int which;
    node *root = p_body(&c, &pc, NULL, &which);
    c.depth = 0;
    /* globals: HF's additions, then the caller's variables (which may override them) */
    c.sc = &global;
    assign(&c, "raise_exception", (val){.t = V_FUNC, .fn = {F_RAISE, NULL}});
    assign(&c, "namespace", (val){.t = V_FUNC, .fn = {F_NAMESPACE, NULL}});
    assign(&c, "range", (val){.t = V_FUNC, .fn = {F_RANGE, NULL}});
    assign(&c, "strftime_now", (val){.t = V_FUNC, .fn = {F_STRFTIME, NULL}});
    assign(&c, "dict", (val){.t = V_FUNC, .fn = {F_DICT, NULL}});
    const cJSON *e;
    cJSON_ArrayForEach(e, ctx) assign(&c, astrdup(&c, e->string, strlen(e->string)), from_json(&c, e, 0));
    scope top = {.up = &global}; /* the template's own top-level sets */
    c.sc = c.top = &top;
    c.out = &result;
    exec(&c, root);
    free_arena(&c);
    cJSON_Delete(ctx);
    if (result.oom) {
        hyb_strbuf_free(&result);
        return hyb_error_set(HYB_ERR_NOMEM, "chat template: out of memory");
    }
    *out = result.p ? result.p : calloc(1, 1);
    if (!*out) return hyb_error_set(HYB_ERR_NOMEM, "chat template: out of memory");
    return HYB_OK;
}
