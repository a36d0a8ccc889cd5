/* runtime/serve.h: `hyb serve`, an OpenAI-compatible HTTP server over one hyb_engine
 * (internal to the hyb executable; docs/SERVE.md is the user's page).
 *
 *   hyb_serve_config c = hyb_serve_defaults();
 *   c.model_path = "SmolLM2-135M-Instruct.Q4_1.gguf"; c.port = 8080;
 *   int rc = hyb_serve_run(&c);   // blocks until SIGTERM/SIGINT; 0 after a clean shutdown
 *
 * Threads: libmicrohttpd runs one thread per connection (plus its listening thread); one engine
 * thread owns the model and the hyb_engine. A connection thread parses and checks a request,
 * tokenizes it, puts it on the server's queue (bounded: a full queue is answered 429 at once) and
 * waits on the request's condition variable; the engine thread moves queued requests into the
 * engine while it has free slots, steps it, and hands each sampled token (text, logprobs) and
 * each finish to the waiting connection. A connection whose client went away marks its request
 * cancelled: the engine thread drops it from the queue, or stops it at its next token
 * (on_token returning 1), which frees its slot.
 */
#ifndef HYB_RUNTIME_SERVE_H
#define HYB_RUNTIME_SERVE_H

#include <stddef.h>

typedef struct hyb_serve_config {
    const char *model_path; /* .gguf file or HF checkpoint directory */
    const char *tokenizer;  /* tokenizer.json overriding the model's (NULL: the model's) */
    const char *name;       /* the model id clients use (NULL: the file/dir name) */
    const char *host;       /* address to bind (default 127.0.0.1) */
    int port;               /* 0: any free port (printed on startup) */
    int slots;              /* sequences decoded together */
    int max_ctx;            /* tokens per slot (0: min(model max_seq, 2048)) */
    int max_queue;          /* requests waiting for a slot before 429 */
    size_t max_body;        /* request body bytes before 413 */
    int threads;            /* OpenMP threads of the engine (0: OpenMP's default) */
    int prefill_chunk;      /* engine prefill chunk (0: no limit) */
    int prefix_block;       /* engine automatic prefix caching block (0: off) */
    int kv_cache;           /* hyb_kv_dtype of the KV caches (HYB_KV_F16 by default) */
    const char *device;     /* NULL/"cpu", "cuda", "cuda:N" */
    int quant;              /* a .gguf: 1 keeps its frozen weights in blocks (hyb/hf.h
                               hyb_model_load_gguf_ex), 0 loads f32 */
    const char *api_key;    /* NULL: no authentication */
    int quiet;              /* no startup/shutdown lines */
} hyb_serve_config;

hyb_serve_config hyb_serve_defaults(void);
/* Runs the server until SIGTERM or SIGINT (a second one cancels running requests). Returns 0
 * after a clean shutdown, or a negative hyb_status with hyb_error() set when it could not start
 * (model, tokenizer, device, address in use). */
int hyb_serve_run(const hyb_serve_config *c);

#endif
