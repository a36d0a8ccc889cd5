/* tests/test_chat_template.c: hyb's chat-template interpreter (core/tokenizer/chat_template.c)
 * against jinja2 itself. tests/data/chat_template/golden.json holds 103 renderings made by
 * tests/reference/chat_template_ref.py with jinja2 set up as HF's apply_chat_template sets it
 * up: eight templates in the style of the model families' own (SmolLM2's from its GGUF, ChatML
 * with tools, Llama 3, Mistral, Gemma, Phi-3, DeepSeek-R1, and one exercising every construct)
 * over six conversations, with and without the generation prompt, plus templates jinja2 refuses.
 * Each must be byte-identical, or fail where jinja2 fails (raise_exception's message carried).
 * Then what jinja2 cannot tell us: errors name line and column, and hostile templates (deep
 * nesting, endless loops, exploding strings) end in an error, not a crash or a hang. */
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "hyb/common.h"
#include "hyb/tokenizer.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = 0;
    fclose(f);
    return b;
}

static void show_diff(const char *name, const char *want, const char *got) {
    size_t i = 0;
    while (want[i] && want[i] == got[i]) i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "  %s: first difference at byte %zu\n    want: %.80s\n    got:  %.80s\n", name, i,
            want + from, got + from);
}

static void test_golden(void) {
    char *text = slurp(harness_data_file("chat_template", "golden.json"));
    CHECK(text != NULL);
    if (!text) return;
    cJSON *root = cJSON_Parse(text);
    const cJSON *cases = cJSON_GetObjectItem(root, "cases");
    CHECK(cJSON_GetArraySize(cases) >= 100);
    int n = 0, ok = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cases) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        const char *tmpl = cJSON_GetObjectItem(c, "template")->valuestring;
        char *ctx = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "context"));
        const cJSON *want = cJSON_GetObjectItem(c, "expect");
        const cJSON *err = cJSON_GetObjectItem(c, "error");
        char *out = NULL;
        int rc = hyb_chat_template_render(tmpl, ctx, &out);
        n++;
        if (want) {
            if (rc != HYB_OK) {
                fprintf(stderr, "  %s: failed: %s\n", name, hyb_error());
            } else if (strcmp(out, want->valuestring) != 0) {
                show_diff(name, want->valuestring, out);
            } else {
                ok++;
            }
        } else {
            const char *msg = rc == HYB_OK ? "" : hyb_error();
            if (rc == HYB_OK)
                fprintf(stderr, "  %s: rendered, but jinja2 fails here\n", name);
            else if (!strstr(msg, err->valuestring))
                fprintf(stderr, "  %s: error '%s' lacks '%s'\n", name, msg, err->valuestring);
            else
                ok++;
        }
        hyb_error_clear();
        free(out);
        free(ctx);
    }
    printf("  %d/%d golden cases equal to jinja2's\n", ok, n);
    CHECK(ok == n);
    cJSON_Delete(root);
    free(text);
}

/* render with a one-message context; returns the rc, *out set on success */
static int render(const char *tmpl, char **out) {
    *out = NULL;
    return hyb_chat_template_render(
        tmpl, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"bos_token\":\"<s>\"}", out);
}

static void expect_error(const char *tmpl, const char *part) {
    char *out = NULL;
    int rc = render(tmpl, &out);
    CHECK(rc == HYB_ERR_ARG);
    if (rc != HYB_OK && !strstr(hyb_error(), part))
        fprintf(stderr, "  '%.60s': message '%s' lacks '%s'\n", tmpl, hyb_error(), part);
    CHECK(rc != HYB_OK && strstr(hyb_error(), part) != NULL);
    free(out);
    hyb_error_clear();
}

static void test_errors_name_the_place(void) {
    expect_error("line one\n{% if messages %}\nx", "line 2 col 1: missing '{% endif %}'");
    expect_error("a\nb {{ messages[0].content + 1 }}", "line 2 col ");
    expect_error("a\nb {{ messages[0].content + 1 }}", "unsupported operand types for +: string and int");
    expect_error("{{ raise_exception('roles must alternate') }}",
                 "the template raised an error: roles must alternate");
    expect_error("{% for %}", "expected a name");
    expect_error("{{ 'abc }}", "line 1 col 1: unclosed '{{'");
    expect_error("{{ x | nosuch }}", "unknown filter 'nosuch'");
    expect_error("{% set x.y = 1 %}", "'x' is not a namespace");
    expect_error("{{ nothing.deeper }}", "'nothing' is undefined");
    expect_error("{% frobnicate %}", "unknown or misplaced statement 'frobnicate'");
    expect_error("{{ }}", "expected an expression");
    CHECK(hyb_chat_template_check("{% for m in messages %}{{ m }}{% endfor %}") == HYB_OK);
    CHECK(hyb_chat_template_check("{% for m in messages %}") == HYB_ERR_ARG);
    hyb_error_clear();
    char *out = NULL;
    CHECK(hyb_chat_template_render("x", "[1, 2]", &out) == HYB_ERR_ARG && out == NULL);
    CHECK(hyb_chat_template_render("x", "{not json", &out) == HYB_ERR_ARG && out == NULL);
    CHECK(hyb_chat_template_render(NULL, "{}", &out) == HYB_ERR_ARG);
    hyb_error_clear();
}

static void test_hostile_templates_end(void) {
    /* nesting: parentheses, filters, blocks and macro recursion past the limits */
    char deep[4096];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "{{ ");
    for (int i = 0; i < 1000; i++) deep[k++] = '(';
    deep[k++] = '1';
    for (int i = 0; i < 1000; i++) deep[k++] = ')';
    k += (size_t)snprintf(deep + k, sizeof deep - k, " }}");
    expect_error(deep, "nested too deeply");
    char blocks[8192] = "";
    for (int i = 0; i < 300; i++) strcat(blocks, "{% if 1 %}");
    expect_error(blocks, "nested too deeply");
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "nested too deeply");
    /* time: nested loops and string doubling stop at the limits, quickly */
    clock_t t0 = clock();
    expect_error("{% set r = range(1000000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
                 "runs too long");
    expect_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}",
                 "uses more than 256 MiB");
    expect_error("{% set ns = namespace(s='xx') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s "
                 "%}{% endfor %}{{ ns.s | length }}",
                 "grows past");
    expect_error("{{ 'ab' * 100000000 }}", "grows past");
    expect_error("{% for i in range(100000000) %}{% endfor %}", "range() of 100000000 elements");
    expect_error("{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}", "exceeds");
    double s = (double)(clock() - t0) / CLOCKS_PER_SEC;
    printf("  hostile templates refused in %.2f s of CPU\n", s);
    CHECK(s < 60); /* a hang would be the failure; the limits take seconds of CPU at most */
}

static void test_smollm2_gguf_template(void) {
    /* the default model's own template, read from its GGUF, gives the ChatML prompt hyb chat
     * and hyb serve wrote by hand before (scripts/genlib.lua chatml) */
    const char *model = getenv("HYB_MODEL");
    if (!model || !*model) {
        printf("  (HYB_MODEL unset: the GGUF template check is skipped)\n");
        return;
    }
    char *tmpl = hyb_tokenizer_chat_template(model);
    CHECK(tmpl != NULL);
    if (!tmpl) return;
    char *out = NULL;
    CHECK(hyb_chat_template_render(tmpl,
                                   "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
                                   "\"add_generation_prompt\":true}",
                                   &out) == HYB_OK);
    const char *want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                       "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                       "<|im_start|>assistant\n";
    CHECK(out && strcmp(out, want) == 0);
    free(out);
    /* hyb's fallback for models without a template is this one, character for character */
    CHECK(strcmp(hyb_chat_template_chatml(), tmpl) == 0);
    free(tmpl);
}

int main(void) {
    RUN(test_golden);
    RUN(test_errors_name_the_place);
    RUN(test_hostile_templates_end);
    RUN(test_smollm2_gguf_template);
    return harness_done();
}
