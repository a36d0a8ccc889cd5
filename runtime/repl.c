/* runtime/repl.c: the interactive prompt (`hyb` on a terminal, or `hyb repl`).
 *
 * A Lua 5.4 prompt with `hyb` loaded (as `hyb` and through require), in the style of lua.c and
 * torch7's `th`:
 *  - a line that is an expression prints its values (`1 + 1`, `m:generate(...)`); `=expr` too;
 *  - a statement runs (`m = hyb.llm()`); an unfinished one (a `for` without its `end`, an open
 *    string or paren) continues on `>> ` lines;
 *  - an error prints one line (no traceback unless --verbose) and the session goes on; Ctrl-C
 *    stops the running statement and returns to the prompt;
 *  - tab completes globals, fields (`hyb.tr<TAB>`) and methods (`m:gen<TAB>`, looked up through
 *    the value's metatable __index), without calling anything;
 *  - line editing and history (kept in $HYB_HISTORY, default ~/.hyb_history) by libedit (BSD
 *    licensed, readline-compatible API; Debian's libedit-dev);
 *  - Ctrl-D (end of input) leaves with status 0.
 * With standard input not a terminal, the same loop reads lines without prompts or editing, so a
 * pipe (`printf '=1+1\n' | hyb repl`) behaves the same and tests can drive it.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "hyb/common.h"
#include "lhyb.h"

static lua_State *repl_L;
static volatile sig_atomic_t repl_running;

static void stop_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted");
}

static void on_sigint(int sig) {
    (void)sig;
    if (repl_running && repl_L)
        lua_sethook(repl_L, stop_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static int msg_handler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (lhyb_verbose())
        luaL_traceback(L, L, msg, 1);
    else
        lua_pushstring(L, msg);
    return 1;
}

/* ---- printing values ------------------------------------------------------------------------ */

/* a growing text buffer (luaL_Buffer cannot be used here: building the text walks tables with
 * values on the stack, which a luaL_Buffer forbids between its calls) */
typedef struct sbuf {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) return;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }
/* the value at idx through tostring (its __tostring / __name), stack unchanged */
static void sb_tostring(lua_State *L, int idx, sbuf *b) {
    size_t n;
    const char *s = luaL_tolstring(L, idx, &n);
    sb_add(b, s, n);
    lua_pop(L, 1);
}

/* One value as the prompt shows it: strings quoted, tables as a short {k = v, ...} listing (in
 * Lua's next order, at most 16 entries, one level), the rest through tostring (tensors, models
 * and other hyb objects print themselves). The stack is unchanged. */
static void show_value(lua_State *L, int idx, sbuf *b, int depth) {
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        lua_getglobal(L, "string");
        lua_getfield(L, -1, "format");
        lua_pushliteral(L, "%q");
        lua_pushvalue(L, idx);
        if (lua_pcall(L, 2, 1, 0) == LUA_OK) sb_str(b, lua_tostring(L, -1));
        lua_pop(L, 2);
        return;
    }
    if (lua_type(L, idx) != LUA_TTABLE || depth > 0 || luaL_getmetafield(L, idx, "__tostring")) {
        if (lua_type(L, idx) == LUA_TTABLE && depth == 0) lua_pop(L, 1); /* the __tostring */
        sb_tostring(L, idx, b);
        return;
    }
    sb_str(b, "{");
    int n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (n == 16) {
            lua_pop(L, 2);
            sb_str(b, ", ...");
            break;
        }
        if (n++) sb_str(b, ", ");
        if (!(lua_isinteger(L, -2) && lua_tointeger(L, -2) == n)) {
            if (lua_type(L, -2) == LUA_TSTRING) {
                sb_str(b, lua_tostring(L, -2));
            } else {
                sb_str(b, "[");
                sb_tostring(L, -2, b);
                sb_str(b, "]");
            }
            sb_str(b, " = ");
        }
        show_value(L, -1, b, depth + 1);
        lua_pop(L, 1);
    }
    sb_str(b, "}");
}

/* print the values on the stack above `base`, tab-separated */
static void print_results(lua_State *L, int base) {
    int n = lua_gettop(L) - base;
    if (n <= 0) return;
    sbuf b = {0};
    for (int i = 1; i <= n; i++) {
        if (i > 1) sb_str(&b, "\t");
        show_value(L, base + i, &b, 0);
    }
    fprintf(stdout, "%s\n", b.p ? b.p : "");
    fflush(stdout);
    free(b.p);
}

/* ---- reading input -------------------------------------------------------------------------- */

static int g_tty;

/* A line without its newline, malloc'ed; NULL at the end of input. */
static char *read_line(const char *prompt) {
    if (g_tty) {
        char *s = readline(prompt);
        if (s && *s) add_history(s);
        return s;
    }
    size_t cap = 256, n = 0;
    char *s = malloc(cap);
    int c;
    while (s && (c = getchar()) != EOF && c != '\n') {
        if (n + 1 == cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) {
                free(s);
                return NULL;
            }
            s = t;
        }
        s[n++] = (char)c;
    }
    if (!s || (c == EOF && n == 0)) {
        free(s);
        return NULL;
    }
    s[n] = 0;
    return s;
}

/* 1 when the chunk failed to compile only because its input ended early */
static int incomplete(lua_State *L, int status) {
    if (status != LUA_ERRSYNTAX) return 0;
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    return len >= 5 && strcmp(msg + len - 5, "<eof>") == 0;
}

/* Compile `code` as "return <code>" (an expression) or as statements; on an unfinished chunk
 * read more lines. Leaves the function (LUA_OK) or the error message on the stack; -1 at the end
 * of input in the middle of a chunk. */
static int load_chunk(lua_State *L, char **code) {
    const char *src = **code == '=' ? *code + 1 : *code;
    const char *ret = lua_pushfstring(L, "return %s;", src);
    int status = luaL_loadbuffer(L, ret, strlen(ret), "=stdin");
    lua_remove(L, -2);
    if (status == LUA_OK) return LUA_OK;
    lua_pop(L, 1);
    for (;;) {
        status = luaL_loadbuffer(L, src, strlen(src), "=stdin");
        if (!incomplete(L, status)) return status;
        lua_pop(L, 1);
        char *more = read_line(">> ");
        if (!more) return -1;
        size_t a = strlen(*code), m = strlen(more);
        char *joined = realloc(*code, a + m + 2);
        if (!joined) {
            free(more);
            lua_pushliteral(L, "out of memory");
            return LUA_ERRMEM;
        }
        joined[a] = '\n';
        memcpy(joined + a + 1, more, m + 1);
        free(more);
        *code = joined;
        src = **code == '=' ? *code + 1 : *code;
    }
}

/* ---- tab completion ------------------------------------------------------------------------- */

static char **g_cands;
static int g_ncands, g_ccap;

static void cand_add(const char *prefix, size_t plen, const char *key, char sep) {
    if (g_ncands + 1 >= g_ccap) {
        int cap = g_ccap ? 2 * g_ccap : 64;
        char **c = realloc(g_cands, (size_t)cap * sizeof *c);
        if (!c) return;
        g_cands = c;
        g_ccap = cap;
    }
    for (int i = 0; i < g_ncands; i++) /* the same name in a table and its __index */
        if (!strcmp(g_cands[i] + plen + (sep ? 1 : 0), key)) return;
    size_t n = plen + (sep ? 1 : 0) + strlen(key) + 1;
    char *s = malloc(n);
    if (!s) return;
    snprintf(s, n, "%.*s%s%s", (int)plen, prefix, sep ? (char[2]){sep, 0} : "", key);
    g_cands[g_ncands++] = s;
}

/* the string keys of the table at the top of the stack that start with `part` */
static void keys_of(lua_State *L, const char *prefix, size_t plen, char sep, const char *part,
                    int only_functions) {
    if (!lua_istable(L, -1)) return;
    size_t n = strlen(part);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING && (!only_functions || lua_isfunction(L, -1))) {
            const char *k = lua_tostring(L, -2);
            if (!strncmp(k, part, n) && k[0] != '_') cand_add(prefix, plen, k, sep);
        }
        lua_pop(L, 1);
    }
}

static void collect(const char *word) {
    lua_State *L = repl_L;
    int top = lua_gettop(L);
    const char *last = NULL;
    for (const char *p = word; *p; p++)
        if (*p == '.' || *p == ':') last = p;
    if (!last) { /* a global (or keyword-free name) */
        lua_pushglobaltable(L);
        keys_of(L, "", 0, 0, word, 0);
        lua_settop(L, top);
        return;
    }
    /* walk the path before `last` through plain field reads (no calls, no __index functions) */
    lua_pushglobaltable(L);
    const char *s = word;
    while (s < last) {
        const char *e = s;
        while (e < last && *e != '.' && *e != ':') e++;
        if (e == s) break;
        if (lua_istable(L, -1)) {
            lua_pushlstring(L, s, (size_t)(e - s));
            lua_rawget(L, -2);
        } else {
            lua_pushnil(L);
        }
        lua_remove(L, -2);
        s = e < last ? e + 1 : e;
    }
    const char *part = last + 1;
    const size_t plen = (size_t)(last - word);
    const int method = *last == ':';
    if (lua_istable(L, -1)) keys_of(L, word, plen, *last, part, method);
    /* the methods of a userdata or table: its metatable's __index table */
    if (lua_getmetatable(L, -1)) {
        lua_pushliteral(L, "__index");
        lua_rawget(L, -2);
        keys_of(L, word, plen, *last, part, method);
    }
    lua_settop(L, top);
}

static char *generator(const char *text, int state) {
    static int i;
    if (state == 0) {
        for (int k = 0; k < g_ncands; k++)
            free(g_cands[k]);
        g_ncands = 0;
        i = 0;
        collect(text);
    }
    (void)text;
    if (i < g_ncands) {
        char *s = g_cands[i];
        g_cands[i++] = NULL; /* readline frees what we return */
        return s;
    }
    return NULL;
}

static char **complete(const char *text, int start, int end) {
    (void)start;
    (void)end;
    rl_attempted_completion_over = 1; /* never file names */
    rl_completion_append_character = '\0'; /* m:gen<Tab> -> m:generate, ready for "(" */
    return rl_completion_matches(text, generator);
}

/* ---- the loop ------------------------------------------------------------------------------- */

int lhyb_repl(lua_State *L) {
    repl_L = L;
    g_tty = isatty(0) && isatty(1);
    char hist[4096] = "";
    if (g_tty) {
        const char *h = getenv("HYB_HISTORY"), *home = getenv("HOME");
        if (h && *h)
            snprintf(hist, sizeof hist, "%s", h);
        else if (home)
            snprintf(hist, sizeof hist, "%s/.hyb_history", home);
        rl_readline_name = "hyb";
        rl_basic_word_break_characters = " \t\n\"\\'`@$><=;|&{(,+-*/%^~#[]";
        rl_attempted_completion_function = complete;
        using_history();
        if (hist[0]) read_history(hist);
        printf("hyb %s (%s): hyb is loaded; =expr prints, Tab completes, Ctrl-D leaves\n",
               HYB_VERSION, LUA_RELEASE);
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "hyb");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
        lua_setglobal(L, "hyb");
    else
        lua_pop(L, 1);
    signal(SIGINT, on_sigint);
    for (;;) {
        char *code = read_line("> ");
        if (!code) break;
        if (!*code) {
            free(code);
            continue;
        }
        int base = lua_gettop(L);
        lua_pushcfunction(L, msg_handler);
        int status = load_chunk(L, &code);
        free(code);
        if (status == -1) {
            lua_settop(L, base);
            break;
        }
        if (status == LUA_OK) {
            repl_running = 1;
            status = lua_pcall(L, 0, LUA_MULTRET, base + 1);
            repl_running = 0;
            lua_sethook(L, NULL, 0, 0);
        }
        if (status == LUA_OK) {
            print_results(L, base + 1);
        } else {
            const char *msg = lua_tostring(L, -1);
            fprintf(stderr, "%s\n", msg ? msg : "(error without a message)");
            fflush(stderr);
        }
        lua_settop(L, base);
    }
    signal(SIGINT, SIG_DFL);
    if (g_tty) {
        putchar('\n');
        if (hist[0]) write_history(hist);
    }
    for (int k = 0; k < g_ncands; k++)
        free(g_cands[k]);
    free(g_cands);
    g_cands = NULL;
    g_ncands = g_ccap = 0;
    return 0;
}
