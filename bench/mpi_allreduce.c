/* bench/mpi_allreduce.c: the reference for bench/distill_dp.sh's all-reduce column: OpenMPI alone
 * (no hyb) summing the gradient bytes of SmolLM2-135M (134,515,008 floats) in buckets of the given
 * MB with MPI_Iallreduce, one or two in flight, polled with MPI_Test + sched_yield as hyb's MPI
 * comm does.
 *   mpicc -O2 bench/mpi_allreduce.c -o /tmp/mpi_allreduce && mpirun -np 2 /tmp/mpi_allreduce 25 */
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

static void wait_req(MPI_Request *q) {
    int d = 0;
    while (!d) {
        MPI_Test(q, &d, MPI_STATUS_IGNORE);
        sched_yield();
    }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int r;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    const size_t n = 134515008;
    const size_t b = (size_t)(argc > 1 ? atof(argv[1]) : 25) * 262144;
    float *x = malloc(n * sizeof(float));
    if (!x || b == 0) MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < n; i++)
        x[i] = 1;
    for (int rep = 0; rep < 2; rep++)
        for (int fly = 1; fly <= 2; fly++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Request q[2];
            int nf = 0;
            for (size_t o = 0; o < n; o += b) {
                size_t k = n - o < b ? n - o : b;
                if (nf == fly) {
                    wait_req(&q[0]);
                    q[0] = q[1];
                    nf--;
                }
                MPI_Iallreduce(MPI_IN_PLACE, x + o, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                               &q[nf++]);
            }
            for (int i = 0; i < nf; i++)
                wait_req(&q[i]);
            double t1 = MPI_Wtime();
            if (r == 0)
                printf("%zu bytes, buckets of %s MB, %d in flight: %.3f s (%.2f GB/s)\n",
                       n * sizeof(float), argc > 1 ? argv[1] : "25", fly, t1 - t0,
                       n * sizeof(float) / (t1 - t0) / 1e9);
        }
    free(x);
    MPI_Finalize();
    return 0;
}
