# Helpers shared by moec's CMakeLists.

# Flags for moec's own code (not for LLVM/MLIR headers, which are included as SYSTEM).
function(moec_target_flags target)
  # Debian's LLVM/MLIR are built without exceptions; RTTI stays on.
  target_compile_options(${target} PRIVATE -fno-exceptions -Wall -Wextra -Wno-unused-parameter)
  if(MOEC_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(MOEC_ENABLE_ASSERTIONS)
    target_compile_options(${target} PRIVATE -UNDEBUG)
  endif()
endfunction()

# A C++ library of moec's own that uses MLIR. Links the shared libMLIR/libLLVM for fast links and so that
# plugins loaded into our tools share one copy of MLIR's globals.
#   moec_add_library(name SRCS a.cpp ... [DEPENDS tblgen-targets ...] [LINK libs ...])
function(moec_add_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPENDS;LINK" ${ARGN})
  add_library(${name} STATIC ${ARG_SRCS})
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  if(ARG_DEPENDS)
    add_dependencies(${name} ${ARG_DEPENDS})
  endif()
  target_link_libraries(${name} PUBLIC ${ARG_LINK} MLIR LLVM)
  moec_target_flags(${name})
endfunction()

# A gtest unit test, registered with ctest under the `unit` label (one ctest entry per TEST()).
function(moec_add_unittest name)
  cmake_parse_arguments(ARG "" "" "SRCS;LINK" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_link_libraries(${name} PRIVATE ${ARG_LINK} GTest::gtest GTest::gtest_main)
  moec_target_flags(${name})
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests/unit)
  gtest_discover_tests(${name} PROPERTIES LABELS unit DISCOVERY_TIMEOUT 60)
  if(MOEC_SANITIZE)
    # In a sanitizer build the discovered tests run with the sanitizers' test options like every other test
    # (cmake/MoecSanitize.cmake). gtest_discover_tests cannot pass a list-valued ENVIRONMENT through, so a
    # file ctest reads after the one listing the discovered tests (${name}_TESTS) sets it on each of them.
    set(env_file ${CMAKE_CURRENT_BINARY_DIR}/${name}_sanitizer_env.cmake)
    set(quoted "")
    foreach(e IN LISTS MOEC_SANITIZE_TEST_ENV)
      string(APPEND quoted " [==[${e}]==]")
    endforeach()
    file(WRITE ${env_file} "set(_moec_env${quoted})\nif(DEFINED ${name}_TESTS)\n"
                           "  set_tests_properties(\${${name}_TESTS} PROPERTIES ENVIRONMENT \"\${_moec_env}\")\n"
                           "endif()\n")
    set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${env_file})
  endif()
endfunction()

# A test that needs a GPU: labelled `gpu`; the command exits 77 when no usable device exists, which ctest
# reports as skipped rather than failed.
function(moec_add_gpu_test name)
  add_test(NAME ${name} COMMAND ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS gpu SKIP_RETURN_CODE 77)
endfunction()
