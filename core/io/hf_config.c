/* core/io/hf_config.c: JSON and TOML services for the mixers' HF config hooks (hf_export /
 * hf_import in hyb/plugin.h), handed to plugins through hyb_host, and the config.json printer.
 * Plugins never link cJSON: they see opaque hyb_json / hyb_toml pointers and these functions. */
#include "hf_config.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/common.h"

static _Thread_local const char *g_src;

const char *hyb_hfj_source(const char *path) {
    const char *old = g_src;
    g_src = path;
    return old;
}

static const char *src(void) {
    return g_src ? g_src : "config.json";
}

/* "ssm_cfg: " for a nested object (cJSON keeps the key an item sits under), "" for the root */
static const char *obj_name(const cJSON *o, char *buf, size_t n) {
    if (o && o->string)
        snprintf(buf, n, "%s: ", o->string);
    else
        buf[0] = 0;
    return buf;
}

int hyb_hfj_verror(const hyb_json *obj, const char *key, const char *fmt, va_list ap) {
    char msg[1024], on[128];
    vsnprintf(msg, sizeof msg, fmt, ap);
    return hyb_error_set(HYB_ERR_FORMAT, "%s: %s%s%s%s%s", src(),
                         obj_name((const cJSON *)obj, on, sizeof on), key ? "\"" : "",
                         key ? key : "", key ? "\": " : "", msg);
}

int hyb_hfj_error(const hyb_json *obj, const char *key, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = hyb_hfj_verror(obj, key, fmt, ap);
    va_end(ap);
    return rc;
}

static const cJSON *item(const hyb_json *obj, const char *key) {
    return obj && key ? cJSON_GetObjectItemCaseSensitive((const cJSON *)obj, key) : NULL;
}

int hyb_hfj_type(const hyb_json *obj, const char *key) {
    const cJSON *v = item(obj, key);
    if (!v) return HYB_JSON_ABSENT;
    if (cJSON_IsNull(v)) return HYB_JSON_NULL;
    if (cJSON_IsBool(v)) return HYB_JSON_BOOL;
    if (cJSON_IsNumber(v) || cJSON_IsRaw(v)) return HYB_JSON_NUMBER;
    if (cJSON_IsString(v)) return HYB_JSON_STRING;
    if (cJSON_IsArray(v)) return HYB_JSON_ARRAY;
    return HYB_JSON_OBJECT;
}

/* 1: present and not null; 0: take the default; < 0: error (missing and required) */
static int present(const hyb_json *obj, const char *key, int required, const cJSON **v) {
    *v = item(obj, key);
    if (*v && !cJSON_IsNull(*v)) return 1;
    if (!required) return 0;
    char on[128];
    return hyb_error_set(HYB_ERR_FORMAT, "%s: %skey \"%s\" is %s", src(),
                         obj_name((const cJSON *)obj, on, sizeof on), key, *v ? "null" : "missing");
}

/* present() and of the type `is` accepts: 1 with *v set; 0: take the default; < 0: error (missing
 * and required, or "must be <what>") */
static int typed(const hyb_json *obj, const char *key, int required,
                 cJSON_bool (*is)(const cJSON *), const char *what, const cJSON **v) {
    int p = present(obj, key, required, v);
    if (p <= 0) return p;
    return is(*v) ? 1 : hyb_hfj_error(obj, key, "must be %s", what);
}

/* a number that is an integer of at most 2^53 in magnitude */
static cJSON_bool is_integer(const cJSON *v) {
    /* range first: converting an out-of-range double (1e300, inf) to an integer is UB */
    return cJSON_IsNumber(v) && fabs(v->valuedouble) <= 9007199254740992.0 &&
           v->valuedouble == floor(v->valuedouble);
}

int hyb_hfj_object(const hyb_json *obj, const char *key, int required, const hyb_json **out) {
    const cJSON *v;
    int p = typed(obj, key, required, cJSON_IsObject, "an object", &v);
    *out = p > 0 ? (const hyb_json *)v : NULL;
    return p < 0 ? p : HYB_OK;
}

/* hyb_hfj_int, _float, _bool, _string: `value` (an expression of the item v) when the key is
 * present and of its type, else def */
#define HFJ_GETTER(fn, T, is, what, value)                                                         \
    int fn(const hyb_json *obj, const char *key, int required, T def, T *out) {                    \
        const cJSON *v;                                                                            \
        int p = typed(obj, key, required, is, what, &v);                                           \
        *out = p > 0 ? (value) : def;                                                              \
        return p < 0 ? p : HYB_OK;                                                                 \
    }

HFJ_GETTER(hyb_hfj_int, int64_t, is_integer, "an integer", (int64_t)v->valuedouble)
HFJ_GETTER(hyb_hfj_float, double, cJSON_IsNumber, "a number", v->valuedouble)
HFJ_GETTER(hyb_hfj_bool, int, cJSON_IsBool, "true or false", cJSON_IsTrue(v))
HFJ_GETTER(hyb_hfj_string, const char *, cJSON_IsString, "a string", v->valuestring)

void hyb_hfj_shortest(char *buf, size_t n, double v) {
    if (v == floor(v) && fabs(v) < 1e15) { /* 10000.0, not 1e+04 */
        snprintf(buf, n, "%.1f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
}

/* The value's text as it will be printed (for comparisons and messages). */
static void value_text(const cJSON *v, char *buf, size_t n) {
    if (cJSON_IsRaw(v))
        snprintf(buf, n, "%s", v->valuestring);
    else if (cJSON_IsNumber(v))
        snprintf(buf, n, "%.17g", v->valuedouble);
    else if (cJSON_IsString(v))
        snprintf(buf, n, "\"%s\"", v->valuestring);
    else if (cJSON_IsBool(v))
        snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v))
        snprintf(buf, n, "null");
    else
        snprintf(buf, n, "%s", cJSON_IsArray(v) ? "[...]" : "{...}");
}

/* Add `nv` under key, or compare it with what is there. Takes ownership of nv. */
static int set(hyb_json *obj, const char *key, cJSON *nv) {
    cJSON *o = (cJSON *)obj;
    if (!nv) return hyb_error_set(HYB_ERR_NOMEM, "config.json: out of memory");
    if (!o || !cJSON_IsObject(o) || !key) {
        cJSON_Delete(nv);
        return hyb_error_set(HYB_ERR_ARG, "config.json: json_set on something not an object");
    }
    cJSON *old = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!old) {
        if (!cJSON_AddItemToObject(o, key, nv)) {
            cJSON_Delete(nv);
            return hyb_error_set(HYB_ERR_NOMEM, "config.json: out of memory");
        }
        return HYB_OK;
    }
    char a[128], b[128], on[128];
    value_text(old, a, sizeof a);
    value_text(nv, b, sizeof b);
    cJSON_Delete(nv);
    if (!strcmp(a, b)) return HYB_OK;
    return hyb_error_set(HYB_ERR_UNSUPPORTED,
                         "config.json key %s\"%s\" would be %s here but is %s from another layer "
                         "(the format has one value for all of them)",
                         obj_name(o, on, sizeof on), key, b, a);
}

int hyb_hfj_set_int(hyb_json *obj, const char *key, int64_t v) {
    return set(obj, key, cJSON_CreateNumber((double)v));
}

int hyb_hfj_set_float(hyb_json *obj, const char *key, double v) {
    if (!isfinite(v))
        return hyb_error_set(HYB_ERR_ARG, "config.json key \"%s\": %g is not finite", key, v);
    char t[64];
    hyb_hfj_shortest(t, sizeof t, v);
    return set(obj, key, cJSON_CreateRaw(t));
}

int hyb_hfj_set_bool(hyb_json *obj, const char *key, int v) {
    return set(obj, key, cJSON_CreateBool(v != 0));
}

int hyb_hfj_set_string(hyb_json *obj, const char *key, const char *v) {
    return set(obj, key, cJSON_CreateString(v ? v : ""));
}

int hyb_hfj_set_null(hyb_json *obj, const char *key) {
    return set(obj, key, cJSON_CreateNull());
}

int hyb_hfj_set_object(hyb_json *obj, const char *key, hyb_json **out) {
    cJSON *o = (cJSON *)obj;
    *out = NULL;
    cJSON *old = o && key ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (old) {
        if (!cJSON_IsObject(old))
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "config.json key \"%s\" is not an object (another layer wrote "
                                 "something else there)",
                                 key);
        *out = (hyb_json *)old;
        return HYB_OK;
    }
    cJSON *nv = cJSON_CreateObject();
    int rc = set(obj, key, nv);
    if (rc == HYB_OK) *out = (hyb_json *)nv;
    return rc;
}

/* ---- TOML lines ------------------------------------------------------------------------------*/

static int toml_key(hyb_toml *t, const char *key) {
    for (const char *c = key; c && *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '-'))
            return hyb_error_set(HYB_ERR_ARG, "toml: key '%s' must be a bare key", key);
    if (!key || !*key) return hyb_error_set(HYB_ERR_ARG, "toml: empty key");
    hyb_strbuf_printf(&t->b, "%s = ", key);
    return HYB_OK;
}

int hyb_toml_put_int(hyb_toml *t, const char *key, int64_t v) {
    HYB_TRY(toml_key(t, key));
    hyb_strbuf_printf(&t->b, "%" PRId64 "\n", v);
    return HYB_OK;
}

int hyb_toml_put_float(hyb_toml *t, const char *key, double v) {
    if (!isfinite(v)) return hyb_error_set(HYB_ERR_ARG, "toml: %s = %g is not finite", key, v);
    HYB_TRY(toml_key(t, key));
    hyb_strbuf_printf(&t->b, "%.17g%s\n", v, v == floor(v) && fabs(v) < 1e15 ? ".0" : "");
    return HYB_OK;
}

int hyb_toml_put_bool(hyb_toml *t, const char *key, int v) {
    HYB_TRY(toml_key(t, key));
    hyb_strbuf_puts(&t->b, v ? "true\n" : "false\n");
    return HYB_OK;
}

static void quoted(hyb_strbuf *b, const char *s) {
    hyb_strbuf_puts(b, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            hyb_strbuf_printf(b, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f)
            hyb_strbuf_printf(b, "\\u%04x", *c);
        else
            hyb_strbuf_putn(b, (const char *)c, 1);
    }
    hyb_strbuf_puts(b, "\"");
}

int hyb_toml_put_string(hyb_toml *t, const char *key, const char *v) {
    HYB_TRY(toml_key(t, key));
    quoted(&t->b, v ? v : "");
    hyb_strbuf_puts(&t->b, "\n");
    return HYB_OK;
}

/* ---- printer ---------------------------------------------------------------------------------*/

static int scalar(const cJSON *v) {
    return !cJSON_IsArray(v) && !cJSON_IsObject(v);
}

static void print_value(hyb_strbuf *b, const cJSON *v, int depth) {
    if (cJSON_IsRaw(v)) {
        hyb_strbuf_puts(b, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == floor(d) && fabs(d) < 9007199254740992.0)
            hyb_strbuf_printf(b, "%" PRId64, (int64_t)d);
        else
            hyb_strbuf_printf(b, "%.17g", d);
    } else if (cJSON_IsString(v)) {
        quoted(b, v->valuestring);
    } else if (cJSON_IsBool(v)) {
        hyb_strbuf_puts(b, cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsArray(v)) {
        int flat = 1;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) flat &= scalar(e);
        hyb_strbuf_puts(b, "[");
        int first = 1;
        cJSON_ArrayForEach(e, v) {
            if (flat)
                hyb_strbuf_puts(b, first ? "" : ", ");
            else
                hyb_strbuf_printf(b, "%s\n%*s", first ? "" : ",", 2 * (depth + 1), "");
            print_value(b, e, depth + 1);
            first = 0;
        }
        if (!flat && !first) hyb_strbuf_printf(b, "\n%*s", 2 * depth, "");
        hyb_strbuf_puts(b, "]");
    } else if (cJSON_IsObject(v)) {
        hyb_strbuf_puts(b, "{");
        int first = 1;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            hyb_strbuf_printf(b, "%s\n%*s", first ? "" : ",", 2 * (depth + 1), "");
            quoted(b, e->string ? e->string : "");
            hyb_strbuf_puts(b, ": ");
            print_value(b, e, depth + 1);
            first = 0;
        }
        if (!first) hyb_strbuf_printf(b, "\n%*s", 2 * depth, "");
        hyb_strbuf_puts(b, "}");
    } else {
        hyb_strbuf_puts(b, "null");
    }
}

char *hyb_hfj_print(const cJSON *root) {
    hyb_strbuf b = {0};
    print_value(&b, root, 0);
    hyb_strbuf_puts(&b, "\n");
    if (b.oom) {
        hyb_strbuf_free(&b);
        return NULL;
    }
    return b.p;
}
