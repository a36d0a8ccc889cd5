/* runtime/main.c: the hyb command line.
 *
 *   hyb run script.lua [args...]   run a Lua script with the `hyb` module (arg[0] = script)
 *   hyb run -e 'lua code' [args]   run a chunk given on the command line (`hyb run -` reads stdin)
 *   hyb plugins                    list the mixer plugins found and the search path
 *   hyb devices                    list the devices (cpu, cuda) and whether each can be used
 *   hyb version | hyb help
 *   hyb <name> [args...]           run the shipped script <scripts>/<name>.lua (generate ...)
 *
 * The scripts directory is $HYB_SCRIPTS_DIR, else <binary dir>/../share/hyb/scripts, else the
 * source tree's scripts/ (HYB_SCRIPTS_DIR compile definition). A script error prints
 * "hyb: <message>" on stderr and exits with status 1; the Lua traceback follows only with
 * --verbose (anywhere on the command line, or `hyb --verbose <command> ...`) or HYB_VERBOSE=1.
 * Bad usage exits 2.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hyb/backend.h"
#include <dirent.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "hyb/common.h"
#include "hyb/mixer.h"
#include "hyb/comm.h"
#include "lhyb.h"

#ifndef HYB_SCRIPTS_DIR
#define HYB_SCRIPTS_DIR ""
#endif

static const char *progname = "hyb";
static int g_verbose; /* --verbose or HYB_VERBOSE=1: tracebacks with script errors */

/* ---- paths ----------------------------------------------------------------------------------- */

static int is_dir(const char *p) {
    struct stat st;
    return p && *p && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Directory of the running executable into buf ("" when unknown). */
static void exe_dir(char *buf, size_t n) {
    char tmp[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", tmp, sizeof tmp - 1);
    buf[0] = 0;
    if (len <= 0) return;
    tmp[len] = 0;
    char *slash = strrchr(tmp, '/');
    if (!slash) return;
    *slash = 0;
    snprintf(buf, n, "%s", tmp);
}

/* The scripts directory into buf; returns buf, or NULL when none exists. */
static const char *scripts_dir(char *buf, size_t n) {
    const char *env = getenv("HYB_SCRIPTS_DIR");
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return is_dir(buf) ? buf : NULL;
    }
    char ed[PATH_MAX];
    exe_dir(ed, sizeof ed);
    if (ed[0]) {
        snprintf(buf, n, "%s/../share/hyb/scripts", ed);
        if (is_dir(buf)) return buf;
    }
    snprintf(buf, n, "%s", HYB_SCRIPTS_DIR);
    return is_dir(buf) ? buf : NULL;
}

/* ---- running Lua ----------------------------------------------------------------------------- */

static lua_State *global_L = NULL;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted");
}

/* Ctrl-C: stop the script at the next Lua instruction (a second Ctrl-C kills the process). */
static void on_sigint(int sig) {
    signal(sig, SIG_DFL);
    if (global_L)
        lua_sethook(global_L, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Message handler: the error message, plus the traceback when verbose. */
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    if (g_verbose)
        luaL_traceback(L, L, msg, 1);
    else
        lua_pushstring(L, msg);
    return 1;
}

/* Without --verbose, a message raised in a shipped script ("/x/scripts/distill.lua:57: text")
 * reads as the text alone: the place is the script's, not the user's mistake. */
static const char *strip_script_pos(const char *msg) {
    const char *p = msg ? strstr(msg, ".lua:") : NULL;
    if (g_verbose || !p || (size_t)(p - msg) + 4 >= PATH_MAX) return msg;
    const char *q = p + 5;
    if (*q < '0' || *q > '9') return msg;
    while (*q >= '0' && *q <= '9')
        q++;
    if (q[0] != ':' || q[1] != ' ') return msg;
    char file[PATH_MAX], real_file[PATH_MAX], sd[PATH_MAX], real_sd[PATH_MAX];
    snprintf(file, sizeof file, "%.*s", (int)(p + 4 - msg), msg);
    if (!scripts_dir(sd, sizeof sd) || !realpath(sd, real_sd) || !realpath(file, real_file))
        return msg;
    char *slash = strrchr(real_file, '/');
    if (!slash) return msg;
    *slash = 0;
    return strcmp(real_file, real_sd) == 0 ? q + 2 : msg;
}

static void report(lua_State *L) {
    const char *msg = strip_script_pos(lua_tostring(L, -1));
    fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error without a message)");
    fflush(stderr);
    lua_pop(L, 1);
    /* one rank of several failed: the others would wait for it in their next collective (and
     * MPI_Finalize at exit would wait for them), so end the whole job now */
    hyb_comm *c = hyb_comm_current();
    if (c && hyb_comm_size(c) > 1)
        hyb_comm_abort(c, 1, "the script failed on this rank (error above); ending the job");
}

/* Call the function below nargs arguments on the stack with the traceback handler. */
static int docall(lua_State *L, int nargs) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    global_L = L;
    signal(SIGINT, on_sigint);
    int status = lua_pcall(L, nargs, 0, base);
    signal(SIGINT, SIG_DFL);
    lua_remove(L, base);
    return status;
}

/* Prepend dir/?.lua to package.path so scripts can require their helpers. */
static void add_package_path(lua_State *L, const char *dir) {
    lua_getglobal(L, "package");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    lua_getfield(L, -1, "path");
    const char *old = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/?.lua;%s", dir, old ? old : "");
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

int lhyb_verbose(void) { return g_verbose; }

/* A Lua state with the standard libraries, hyb installed and the scripts directory on
 * package.path; NULL after a message. */
static lua_State *new_state(void) {
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "%s: cannot create the Lua state (out of memory)\n", progname);
        return NULL;
    }
    luaL_openlibs(L);
    lhyb_install(L);
    char sd[PATH_MAX];
    if (scripts_dir(sd, sizeof sd)) add_package_path(L, sd);
    return L;
}

/* The interactive prompt (runtime/repl.c). */
static int run_repl(void) {
    lua_State *L = new_state();
    if (!L) return 1;
    lua_createtable(L, 0, 1); /* arg as for `hyb run`: arg[0] names the prompt */
    lua_pushliteral(L, "repl");
    lua_rawseti(L, -2, 0);
    lua_setglobal(L, "arg");
    int rc = lhyb_repl(L);
    lua_close(L);
    return rc;
}

/* Run `script` (a file, or a chunk when is_chunk) with args[0..nargs). Returns the exit status. */
static int run_lua(const char *script, int is_chunk, char **args, int nargs) {
    lua_State *L = new_state();
    if (!L) return 1;

    /* arg table as in lua.c: arg[-1] = the binary (absolute path), arg[0] = script,
     * arg[1..] = arguments */
    char exe[PATH_MAX];
    ssize_t elen = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[elen > 0 ? elen : 0] = 0;
    lua_createtable(L, nargs, 2);
    lua_pushstring(L, exe[0] ? exe : progname);
    lua_rawseti(L, -2, -1);
    lua_pushstring(L, is_chunk ? "-e" : script);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < nargs; i++) {
        lua_pushstring(L, args[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");

    int status;
    if (is_chunk)
        status = luaL_loadbuffer(L, script, strlen(script), "=(command line)");
    else if (strcmp(script, "-") == 0)
        status = luaL_loadfile(L, NULL); /* standard input */
    else
        status = luaL_loadfile(L, script);
    if (status == LUA_OK) {
        luaL_checkstack(L, nargs + 4, "too many arguments to the script");
        for (int i = 0; i < nargs; i++)
            lua_pushstring(L, args[i]);
        status = docall(L, nargs);
    }
    if (status != LUA_OK) report(L);
    lua_close(L); /* finalizers free models, tensors, optimisers */
    global_L = NULL;
    return status == LUA_OK ? 0 : 1;
}

/* ---- subcommands ----------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The shipped scripts (<scripts>/<name>.lua), sorted by name. */
static void list_scripts(FILE *out) {
    char sd[PATH_MAX];
    if (!scripts_dir(sd, sizeof sd)) {
        fprintf(out, "\nNo scripts directory found (set HYB_SCRIPTS_DIR).\n");
        return;
    }
    DIR *d = opendir(sd);
    if (!d) return;
    char *names[256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0) continue;
        /* modules the scripts require (genlib.lua, evallib.lua) are not commands */
        if (len >= 7 && strcmp(e->d_name + len - 7, "lib.lua") == 0) continue;
        names[n] = strndup(e->d_name, len - 4);
        if (names[n]) n++;
    }
    closedir(d);
    if (n == 0) return;
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    fprintf(out, "\nScripts in %s (run as `%s <name> args...`):\n ", sd, progname);
    for (int i = 0; i < n; i++) {
        fprintf(out, " %s", names[i]);
        free(names[i]);
    }
    fprintf(out, "\n");
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: %s <command> [args...]\n"
            "\n"
            "Commands:\n"
            "  run <script.lua> [args...]  run a Lua script; the `hyb` module is preloaded and\n"
            "                              the script's arguments are in `arg` (arg[0] = script)\n"
            "  run -e '<lua code>' [args]  run a chunk of Lua given on the command line\n"
            "  run - [args]                run Lua read from standard input\n"
            "  plugins                     list the mixer plugins found and the search path\n"
            "  devices                     list the devices (cpu, cuda[:N]) and whether each can "
            "be used\n"
            "  repl                        the interactive Lua prompt with hyb loaded (also `hyb`\n"
            "                              alone on a terminal): =expr prints, Tab completes\n"
            "  version                     print the version\n"
            "  help                        this text\n"
            "  --verbose <command> ...     show the Lua traceback with an error (also\n"
            "                              HYB_VERBOSE=1); every command takes --help\n"
            "  <name> [args...]            run the shipped script <name>.lua (e.g. generate, "
            "distill)\n",
            progname);
    list_scripts(out);
}

static int cmd_plugins(void) {
    char path[8192];
    path[0] = 0;
    int n = hyb_plugin_scan();
    printf("plugin search path: %s\n", hyb_plugin_search_path(path, sizeof path));
    if (n < 0) {
        fprintf(stderr, "%s: %s\n", progname, hyb_error());
        return 1;
    }
    int count = hyb_plugin_count();
    if (count == 0) {
        printf("no plugins found\n");
        return 0;
    }
    int w = 4; /* name column fits the longest name */
    for (int i = 0; i < count; i++) {
        const hyb_mixer_desc *d = hyb_plugin_get(i, NULL);
        int len = d && d->name ? (int)strlen(d->name) : 1;
        if (len > w) w = len;
    }
    printf("%-*s %-10s %-9s %s\n", w, "NAME", "VERSION", "DEVICES", "PATH");
    for (int i = 0; i < count; i++) {
        const char *p = NULL;
        const hyb_mixer_desc *d = hyb_plugin_get(i, &p);
        if (!d) continue;
        char dev[64] = "";
        for (int k = 0; k < HYB_DEV_COUNT; k++)
            if (d->kernels[k].forward) {
                if (dev[0]) strcat(dev, ",");
                strcat(dev, hyb_device_name((hyb_device)k));
            }
        printf("%-*s %-10s %-9s %s\n", w, d->name ? d->name : "?", d->version ? d->version : "?",
               dev[0] ? dev : "-", p ? p : "?");
        if (d->description && *d->description) printf("%*s %s\n", w, "", d->description);
    }
    return 0;
}

/* hyb devices: every device kind this build knows, and whether it can be used here. */
static int cmd_devices(void) {
    printf("%-8s %s\n", "DEVICE", "STATUS");
    char name[64], status[512];
    for (int i = 0; hyb_backend_describe(i, name, sizeof name, status, sizeof status) == HYB_OK;
         i++)
        printf("%-8s %s\n", name, status);
    return 0;
}

/* A shipped-script name: letters, digits, '_' and '-' only (no paths). */
static int valid_script_name(const char *s) {
    if (!*s || *s == '-') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* OpenMP's default wait policy spins on idle cores; on a machine shared with other work (CI, a
 * laptop, several jobs) spinning threads steal the cores the others need and a tiny model trains
 * several times slower (measured 7x on 2 busy cores). libgomp reads OMP_WAIT_POLICY once, while
 * the program loads, so choose "passive" by re-executing ourselves with it set, unless the user
 * chose a policy. Decode does not depend on it: its products and attention run on hyb's own pool
 * (core/backend/cpu/cpu_pool.c: workers spin up to HYB_POOL_SPIN_US, then sleep), and OpenMP is
 * left with the large regions of prefill and training, whose wake-up cost passive waiting does
 * not notice. */
static void ensure_omp_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 0) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: carry on with the default policy */
}

int main(int argc, char **argv) {
    ensure_omp_wait_policy(argv);
    const char *ev = getenv("HYB_VERBOSE");
    g_verbose = ev && *ev && strcmp(ev, "0") != 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--verbose") == 0) g_verbose = 1;
    if (argc >= 2 && strcmp(argv[1], "--verbose") == 0) { /* hyb --verbose <command> ... */
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    if (argc < 2) {
        if (isatty(0) && isatty(1)) return run_repl(); /* `hyb` on a terminal: the prompt */
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "repl") == 0) return run_repl();
    if (strcmp(cmd, "run") == 0) {
        if (argc < 3) {
            fprintf(stderr, "%s run: missing the script to run\n\n", progname);
            usage(stderr);
            return 2;
        }
        if (strcmp(argv[2], "-e") == 0) {
            if (argc < 4) {
                fprintf(stderr, "%s run -e: missing the Lua code\n", progname);
                return 2;
            }
            return run_lua(argv[3], 1, argv + 4, argc - 4);
        }
        return run_lua(argv[2], 0, argv + 3, argc - 3);
    }
    if (strcmp(cmd, "plugins") == 0) return cmd_plugins();
    if (strcmp(cmd, "devices") == 0) return cmd_devices();
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
#ifdef HYB_HAVE_CUDA
        const char *cuda = "CUDA backend compiled in";
#else
        const char *cuda = "CPU only";
#endif
        printf("hyb %s (%s, plugin ABI %u, %s)\n", HYB_VERSION, LUA_RELEASE,
               (unsigned)HYB_PLUGIN_ABI_VERSION, cuda);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    /* hyb <name> args: a shipped script */
    char sd[PATH_MAX], script[PATH_MAX + 300];
    if (valid_script_name(cmd) && scripts_dir(sd, sizeof sd)) {
        snprintf(script, sizeof script, "%s/%s.lua", sd, cmd);
        if (is_file(script)) return run_lua(script, 0, argv + 2, argc - 2);
    }
    fprintf(stderr, "%s: unknown command '%s'\n\n", progname, cmd);
    usage(stderr);
    return 2;
}
