/* emulation shim for <cuda.h>: everything a kernel needs is in hyb_cuda_emu.h */
