/* core/config/toml_internal.h: private helpers of the TOML shim used by layermap.c (not public).
 *
 * Positions are 1-based "line, column" as toml++ reports them (columns count code points).
 * Every function accepts t == NULL (an empty table) and then reports "absent".
 */
#ifndef HYB_CONFIG_TOML_INTERNAL_H
#define HYB_CONFIG_TOML_INTERNAL_H

#include <stddef.h>

#include "hyb/config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parse a file / a string like hyb_toml_parse_file/_string, but return the status (HYB_ERR_IO for
 * a file that cannot be read, HYB_ERR_FORMAT for malformed TOML, HYB_ERR_NOMEM). */
int hyb_toml_open(const char *path, hyb_toml **out);
int hyb_toml_open_string(const char *text, const char *source_name, hyb_toml **out);

/* Source name (file path or the name given to hyb_toml_parse_string); "" for t == NULL. */
const char *hyb_cfg_source(const hyb_cfg_table *t);
/* Dotted path of the table inside its document: "" for the root, "mixers.attn". */
const char *hyb_cfg_path(const hyb_cfg_table *t);
/* TOML type of a value: "string", "integer", "float", "boolean", "array", "table", "date",
 * "time", "date-time"; NULL when the key is absent. */
const char *hyb_cfg_type(const hyb_cfg_table *t, const char *key);
/* Position of a key (of_value = 0) or of its value (of_value = 1); key == NULL: the table.
 * Returns 0, or -1 when the key is absent (line/col then hold the table's position). */
int hyb_cfg_pos(const hyb_cfg_table *t, const char *key, int of_value, int *line, int *col);
/* Position of element i of array `key`. Returns 0, or -1 when there is no such element (line/col
 * then hold the key's position). */
int hyb_cfg_array_pos(const hyb_cfg_table *t, const char *key, int i, int *line, int *col);
/* Position of byte `offset` of the string value of `key` inside the source text. Exact when the
 * string's text in the file equals its value (no escapes); otherwise the value's start. Returns
 * 0 when exact, 1 when approximate, -1 when the key is absent or not a string. */
int hyb_cfg_string_pos(const hyb_cfg_table *t, const char *key, size_t offset, int *line, int *col);
/* Error "source:line:col: <message>" at an explicit position. Returns HYB_ERR_FORMAT. */
int hyb_cfg_error_at(const hyb_cfg_table *t, int line, int col, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif
