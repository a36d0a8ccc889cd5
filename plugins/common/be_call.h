/* plugins/common/be_call.h: checking the status of backend calls in a mixer's kernels.
 *
 * A plugin computes only through the backend of its call (a->be, hyb/backend.h), and every entry
 * returns a hyb_status: pass a failure up, with the backend's message (it names the op and the
 * sizes) left in place.
 *
 *   HYB_BE_TRY(be->sgemm(be, 0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, y, N));   // returns on error
 *
 * Inside an OpenMP region a task cannot return: HYB_BE_TRY_PAR records the first failure in a
 * shared int, which the caller returns after the region. */
#ifndef HYB_PLUGIN_BE_CALL_H
#define HYB_PLUGIN_BE_CALL_H

#define HYB_BE_TRY(call)                                                                           \
    do {                                                                                           \
        int hyb_be_rc_ = (call);                                                                   \
        if (hyb_be_rc_ != 0) return hyb_be_rc_;                                                    \
    } while (0)

#define HYB_BE_TRY_PAR(err, call)                                                                  \
    do {                                                                                           \
        int hyb_be_rc_ = (call);                                                                   \
        if (hyb_be_rc_ != 0) {                                                                     \
            _Pragma("omp atomic write")(err) = hyb_be_rc_;                                         \
        }                                                                                          \
    } while (0)

#endif
