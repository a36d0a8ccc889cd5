/* core/io/hf_config.h: the host side of the HF config.json hooks (internal to libhyb).
 *
 * A hyb_json is a cJSON node; a hyb_toml a string buffer of `key = value` lines. The services
 * below fill the json_* / toml_* entries of hyb_host (core/mixer.c); core/model/io.c (export)
 * and core/io/hf_load.c (import) use the rest: the file named in messages, the printer. */
#ifndef HYB_IO_HF_CONFIG_H
#define HYB_IO_HF_CONFIG_H

#include <stdarg.h>

#include <cJSON.h>

#include "hyb/plugin.h"
#include "../strbuf.h"

struct hyb_toml {
    hyb_strbuf b;
};

/* The file json_* messages name (this thread; NULL: "config.json"). Returns the previous one. */
const char *hyb_hfj_source(const char *path);

/* config.json text: 2-space indent, arrays of scalars on one line, floats as written. Caller
 * frees; NULL when out of memory. */
char *hyb_hfj_print(const cJSON *root);

int hyb_hfj_type(const hyb_json *obj, const char *key);
int hyb_hfj_object(const hyb_json *obj, const char *key, int required, const hyb_json **out);
int hyb_hfj_int(const hyb_json *obj, const char *key, int required, int64_t def, int64_t *out);
int hyb_hfj_float(const hyb_json *obj, const char *key, int required, double def, double *out);
int hyb_hfj_bool(const hyb_json *obj, const char *key, int required, int def, int *out);
int hyb_hfj_string(const hyb_json *obj, const char *key, int required, const char *def,
                   const char **out);
int hyb_hfj_error(const hyb_json *obj, const char *key, const char *fmt, ...);
int hyb_hfj_verror(const hyb_json *obj, const char *key, const char *fmt, va_list ap);
int hyb_hfj_set_int(hyb_json *obj, const char *key, int64_t v);
int hyb_hfj_set_float(hyb_json *obj, const char *key, double v);
int hyb_hfj_set_bool(hyb_json *obj, const char *key, int v);
int hyb_hfj_set_string(hyb_json *obj, const char *key, const char *v);
int hyb_hfj_set_null(hyb_json *obj, const char *key);
int hyb_hfj_set_object(hyb_json *obj, const char *key, hyb_json **out);
int hyb_toml_put_int(hyb_toml *t, const char *key, int64_t v);
int hyb_toml_put_float(hyb_toml *t, const char *key, double v);
int hyb_toml_put_bool(hyb_toml *t, const char *key, int v);
int hyb_toml_put_string(hyb_toml *t, const char *key, const char *v);

/* The shortest %g form of a finite v that reads back as the same double ("10000.0", not 1e+04). */
void hyb_hfj_shortest(char *buf, size_t n, double v);

#endif
