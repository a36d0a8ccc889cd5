/* hyb/atomic.h: crash-safe file writing (DESIGN.md, "Files and formats").
 *
 *   hyb_atomic_file *f;
 *   if (hyb_atomic_open("out/ckpt/model.safetensors", &f) != HYB_OK) return ...;
 *   if (hyb_atomic_write(f, header, n) != HYB_OK) { hyb_atomic_abort(f); return ...; }
 *   return hyb_atomic_commit(f);      // fsync, rename over the target, fsync the directory
 *
 * Data goes to a temporary file beside the target ("<path>.tmp.<pid>.<n>"), which is fsync'ed,
 * closed and renamed over the target, and then the directory is fsync'ed. A reader therefore sees
 * either the old file or the complete new one; a killed or failed run leaves no half-written
 * target behind (at worst a stale "*.tmp.*" file after a kill -9, never under the target's name).
 * On any failure, hyb_atomic_abort / a failing hyb_atomic_commit remove the temporary file. What a
 * kill -9 leaves is removed by the next hyb_atomic_open in that directory (and by a resume,
 * hyb_trainer_load): hyb_atomic_clean_stale.
 */
#ifndef HYB_ATOMIC_H
#define HYB_ATOMIC_H

#include "hyb/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_atomic_file hyb_atomic_file;

/* Create the temporary file for `path` (its directory must exist). HYB_ERR_IO naming the path. */
int hyb_atomic_open(const char *path, hyb_atomic_file **out);
/* Append n bytes (retries short writes). HYB_ERR_IO naming the path on failure; the file stays
 * open: the caller must still call hyb_atomic_abort. */
int hyb_atomic_write(hyb_atomic_file *f, const void *data, size_t n);
/* Bytes written so far. */
uint64_t hyb_atomic_size(const hyb_atomic_file *f);
/* fsync + close + rename over the target + fsync the directory. Frees f in every case; on
 * failure the temporary file is removed and the old target (if any) is untouched. */
int hyb_atomic_commit(hyb_atomic_file *f);
/* Close and remove the temporary file; frees f. NULL is a no-op. */
void hyb_atomic_abort(hyb_atomic_file *f);
/* Remove the temporaries "<name>.tmp.<pid>.<n>" (regular files) in dir whose process no longer
 * exists (kill(pid, 0) fails with ESRCH); never this process's nor a live one's. Returns how many
 * were removed, or HYB_ERR_IO when dir cannot be listed. Called by hyb_atomic_open for the
 * target's directory and by hyb_trainer_load for the checkpoint's. */
int hyb_atomic_clean_stale(const char *dir);

/* Whole-file helpers. fn writes the content through hyb_atomic_write and returns HYB_OK or a
 * negative status; on a negative status nothing is renamed and the temporary file is removed. */
typedef int (*hyb_atomic_write_fn)(hyb_atomic_file *f, void *ctx);
int hyb_atomic_write_file(const char *path, hyb_atomic_write_fn fn, void *ctx);
int hyb_atomic_write_buf(const char *path, const void *data, size_t n);

/* mkdir -p (mode 0755). HYB_ERR_IO naming the component that failed. */
int hyb_mkdir_p(const char *dir);

#ifdef __cplusplus
}
#endif
#endif
