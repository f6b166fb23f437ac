# Sanitizer builds.
#
# -DMOEC_SANITIZE=address,undefined (or thread; `make test SANITIZE=...`) instruments every target of ours
# (LLVM, MLIR, protobuf and libonnx are Debian's, uninstrumented), and that build's moec builds the kernels it
# generates with the same sanitizers unless told otherwise (moec compile --sanitize=, $MOEC_SANITIZE). Without
# it, the normal build still carries an ASan+UBSan libmoert, moert CLI and runtime test (tests/sanitize/, run by
# `make test` and so by CI), with the kernels of the artifacts those tests load instrumented too.
#
# moec_sanitizer_setup(<sanitizers> <prefix>) sets, for a comma-separated list of clang sanitizers:
#   <prefix>_COMPILE_FLAGS, <prefix>_LINK_FLAGS   the flags (the runtime linked shared, -shared-libsan, so that
#                                                 one copy serves moert, the kernels it loads and Python
#                                                 processes that load libmoert)
#   <prefix>_RUNTIME                              the shared runtime's path
#   <prefix>_TEST_ENV                             what a test whose processes are ours runs with
#   <prefix>_PRELOAD_ENV                          what a test whose Python process loads libmoert runs with
#                                                 (the runtime preloaded; Python's own leaks not judged)
function(moec_sanitizer_setup sanitizers prefix)
  string(REPLACE "," ";" list "${sanitizers}")
  foreach(s IN LISTS list)
    if(NOT s MATCHES "^(address|undefined|thread)$")
      message(FATAL_ERROR "sanitizers ${sanitizers}: '${s}' is not one of address, undefined, thread")
    endif()
  endforeach()
  if("address" IN_LIST list AND "thread" IN_LIST list)
    message(FATAL_ERROR "sanitizers ${sanitizers}: address and thread cannot be combined")
  endif()
  # The shared runtime: ASan's and TSan's include UBSan's handlers; UBSan alone has its standalone one.
  if("address" IN_LIST list)
    set(rt libclang_rt.asan-x86_64.so)
  elseif("thread" IN_LIST list)
    set(rt libclang_rt.tsan-x86_64.so)
  else()
    set(rt libclang_rt.ubsan_standalone-x86_64.so)
  endif()
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=${rt} OUTPUT_VARIABLE runtime
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT EXISTS "${runtime}")
    message(FATAL_ERROR "sanitizers ${sanitizers}: ${rt} not found (Debian: libclang-rt-19-dev)")
  endif()
  get_filename_component(dir "${runtime}" DIRECTORY)
  set(${prefix}_RUNTIME "${runtime}" PARENT_SCOPE)
  set(${prefix}_COMPILE_FLAGS -fsanitize=${sanitizers} -fno-sanitize-recover=all -fno-omit-frame-pointer
      -gline-tables-only PARENT_SCOPE)
  set(${prefix}_LINK_FLAGS -fsanitize=${sanitizers} -shared-libsan -Wl,-rpath,${dir} PARENT_SCOPE)
  # Every report fails the test that triggers it; leaks are reported at exit of our own processes. An
  # allocation that cannot be had returns null (moert reports "out of memory for ...": bad-artifacts checks).
  set(supp ${PROJECT_SOURCE_DIR}/tests/sanitize)
  # allow_user_poisoning=0: LLVM's BumpPtrAllocator poisons and unpoisons slab memory in inline header code,
  # which our instrumented code instantiates while Debian's uninstrumented libLLVM/libMLIR allocate from the
  # same slabs without unpoisoning: MLIR attribute storage then reads as "use-after-poison". Nothing of ours
  # poisons memory by hand, so heap, stack and global checks are unchanged.
  set(asan "allocator_may_return_null=1:allow_user_poisoning=0:strict_string_checks=1:suppressions=${supp}/asan.supp")
  set(${prefix}_TEST_ENV
      "ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1:${asan}"
      "LSAN_OPTIONS=suppressions=${supp}/lsan.supp"
      "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
      "TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:allocator_may_return_null=1:suppressions=${supp}/tsan.supp"
      PARENT_SCOPE)
  set(${prefix}_PRELOAD_ENV "LD_PRELOAD=${runtime}" "ASAN_OPTIONS=detect_leaks=0:${asan}"
      "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
      "TSAN_OPTIONS=halt_on_error=1:allocator_may_return_null=1:suppressions=${supp}/tsan.supp" PARENT_SCOPE)
endfunction()

if(MOEC_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "MOEC_SANITIZE needs clang (configure with clang-19)")
  endif()
  moec_sanitizer_setup("${MOEC_SANITIZE}" MOEC_SANITIZE)
  message(STATUS "moec: sanitizers ${MOEC_SANITIZE} (runtime ${MOEC_SANITIZE_RUNTIME})")
  add_compile_options(${MOEC_SANITIZE_COMPILE_FLAGS})
  add_link_options(${MOEC_SANITIZE_LINK_FLAGS})
endif()
