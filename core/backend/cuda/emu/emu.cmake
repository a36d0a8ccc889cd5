# core/backend/cuda/emu/emu.cmake: libhyb_cuda_emu.so, the CUDA emulation for tests (a stand-in
# for libcuda.so.1, libnvrtc and libcublas that core/backend/cuda dlopens when HYB_CUDA_EMULATE=1;
# see docs/CUDA.md "Emulation"). Included from the top CMakeLists.txt when the CUDA headers exist.
set(HYB_EMU_DIR ${CMAKE_SOURCE_DIR}/core/backend/cuda/emu)
add_library(hyb_cuda_emu SHARED ${HYB_EMU_DIR}/runtime.c ${HYB_EMU_DIR}/driver.c
  ${HYB_EMU_DIR}/nvrtc_emu.c ${HYB_EMU_DIR}/cublas_emu.c)
target_include_directories(hyb_cuda_emu PRIVATE "${HYB_CUDA_HOME}/include")
target_link_libraries(hyb_cuda_emu PRIVATE PkgConfig::OPENBLAS ${CMAKE_DL_LIBS} m)
target_compile_definitions(hyb_cuda_emu PRIVATE
  HYB_CUDA_EMU_INCLUDE="${HYB_EMU_DIR}/include" HYB_CUDA_EMU_DEFAULT_CXX="${CMAKE_CXX_COMPILER}")
set_target_properties(hyb_cuda_emu PROPERTIES OUTPUT_NAME hyb_cuda_emu
  LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
# the runtime switches stacks by hand: no sanitizer instrumentation inside it (it finds the
# process's sanitizer with dlsym and announces fibers itself)
if(HYB_SANITIZE OR HYB_FUZZ)
  target_compile_options(hyb_cuda_emu PRIVATE -fno-sanitize=all)
endif()
# libhyb finds it here unless HYB_CUDA_EMU_LIB says otherwise
target_compile_definitions(hyb_core PRIVATE HYB_CUDA_EMU_LIB="$<TARGET_FILE:hyb_cuda_emu>")
add_dependencies(hyb_core hyb_cuda_emu)
