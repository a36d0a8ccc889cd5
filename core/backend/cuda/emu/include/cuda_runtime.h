/* emulation shim for <cuda_runtime.h>: everything a kernel needs is in hyb_cuda_emu.h */
