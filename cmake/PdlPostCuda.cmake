# Whether and for which GPU architectures the CUDA path is built, decided before
# enable_language(CUDA): with PDL_POST_CUDA=AUTO an nvcc that is too old or that cannot build any
# requested architecture gives a CPU-only build (the reason goes to build_info()["cuda"]) instead
# of a failed install; with PDL_POST_CUDA=ON the same finding is an error that says what to change.
# The decision is pure logic on the compilers' --version and --list-gpu-arch output, so
# tests/test_build_cuda.py runs it with `cmake -P` against stand-in compilers.

# The oldest CUDA release the CUDA path is built with (C++17 cub, stream-ordered memory pools).
set(PDL_POST_MIN_CUDA_VERSION 12.0)

# The release of the nvcc at `compiler` ("13.0"), or "" when its --version names none.
function(pdl_post_nvcc_version compiler out_var)
  execute_process(COMMAND "${compiler}" --version
    OUTPUT_VARIABLE text ERROR_QUIET RESULT_VARIABLE status)
  set(version "")
  if(status EQUAL 0 AND text MATCHES "release ([0-9]+\\.[0-9]+)")
    set(version "${CMAKE_MATCH_1}")
  endif()
  set(${out_var} "${version}" PARENT_SCOPE)
endfunction()

# Splits `requested` (a CMAKE_CUDA_ARCHITECTURES list: 90, 90-real, 90a-virtual, ...) into the
# entries whose compute_NN the nvcc at `compiler` lists (--list-gpu-arch) and the others. CMake's
# special values (all, all-major, native) and a compiler that lists nothing are left to nvcc.
function(pdl_post_split_architectures compiler requested kept_var dropped_var)
  execute_process(COMMAND "${compiler}" --list-gpu-arch
    OUTPUT_VARIABLE text ERROR_QUIET RESULT_VARIABLE status)
  string(REGEX MATCHALL "compute_[0-9]+" listed "${text}")
  set(kept "")
  set(dropped "")
  foreach(arch IN LISTS requested)
    set(known TRUE)
    # Two ifs: ${CMAKE_MATCH_1} is expanded before the if that would set it runs.
    if(status EQUAL 0 AND listed AND arch MATCHES "^([0-9]+)[a-z]?(-real|-virtual)?$")
      if(NOT "compute_${CMAKE_MATCH_1}" IN_LIST listed)
        set(known FALSE)
      endif()
    endif()
    if(known)
      list(APPEND kept "${arch}")
    else()
      list(APPEND dropped "${arch}")
    endif()
  endforeach()
  set(${kept_var} "${kept}" PARENT_SCOPE)
  set(${dropped_var} "${dropped}" PARENT_SCOPE)
endfunction()

# The CUDA compiler CMake's check_language(CUDA) would have tried when it found none that works:
# $ENV{CUDACXX} (its first word), else an nvcc on PATH or in CUDA's usual places; "" if none.
# Such a compiler exists but failed CMake's test build, e.g. an old nvcc beside a newer gcc.
function(pdl_post_rejected_cuda_compiler out_var)
  set(candidate "")
  if(NOT "$ENV{CUDACXX}" STREQUAL "")
    separate_arguments(words UNIX_COMMAND "$ENV{CUDACXX}")
    list(GET words 0 candidate)
  else()
    find_program(PDL_POST_REJECTED_NVCC nvcc PATHS "$ENV{CUDA_PATH}/bin" /usr/local/cuda/bin)
    if(PDL_POST_REJECTED_NVCC)
      set(candidate "${PDL_POST_REJECTED_NVCC}")
    endif()
    unset(PDL_POST_REJECTED_NVCC CACHE)  # looked up afresh at each configure
  endif()
  set(${out_var} "${candidate}" PARENT_SCOPE)
endfunction()

# mode: AUTO or ON; compiler: the nvcc found (empty or *-NOTFOUND: none); rejected: when none was
# found, a CUDA compiler that is there but failed CMake's check (pdl_post_rejected_cuda_compiler;
# "" if none); requested: the architectures. Sets enabled_var (ON/OFF), architectures_var (what
# to build) and why_var (why not, for build_info()). With ON every finding that stops the build
# is a FATAL_ERROR.
function(pdl_post_decide_cuda mode compiler rejected requested enabled_var architectures_var
         why_var)
  set(why "")
  set(kept "${requested}")
  if(compiler)
    set(nvcc "${compiler}")
  else()
    set(nvcc "${rejected}")
  endif()
  if(NOT nvcc)
    set(why "no CUDA compiler found (set CUDACXX or put nvcc on PATH)")
  else()
    pdl_post_nvcc_version("${nvcc}" version)
    if(version AND version VERSION_LESS PDL_POST_MIN_CUDA_VERSION)
      set(why "nvcc ${version} (${nvcc}) is older than CUDA ${PDL_POST_MIN_CUDA_VERSION}")
    elseif(NOT compiler)  # there, but CMake's test build with it failed
      if(version)
        set(name "nvcc ${version} (${nvcc})")
      else()
        set(name "the CUDA compiler ${nvcc}")
      endif()
      string(CONCAT why "${name} failed CMake's test build of a CUDA program (often a host C++ "
                    "compiler newer than this CUDA release supports: set CUDAHOSTCXX to one it "
                    "supports; the build folder's CMakeFiles/ has the compiler's output)")
    else()
      pdl_post_split_architectures("${compiler}" "${requested}" kept dropped)
      if(dropped)
        string(REPLACE ";" ", " dropped_text "${dropped}")
        set(fix "set PDL_POST_CUDA_ARCHITECTURES (or CMAKE_CUDA_ARCHITECTURES) to ones it builds")
        if(mode STREQUAL "ON")
          message(FATAL_ERROR "PDL_POST_CUDA=ON but nvcc ${version} (${compiler}) cannot build "
                              "the CUDA architectures ${dropped_text}: ${fix}")
        elseif(NOT kept)
          string(CONCAT why "nvcc ${version} (${compiler}) builds none of the CUDA "
                        "architectures ${dropped_text}")
        else()
          message(WARNING "pdl_post: nvcc ${version} cannot build the CUDA architectures "
                          "${dropped_text}; building ${kept} only (a GPU none of these covers "
                          "gets a clear error at its first call; ${fix})")
        endif()
      endif()
    endif()
  endif()
  if(why STREQUAL "")
    set(${enabled_var} ON PARENT_SCOPE)
  elseif(mode STREQUAL "ON")
    message(FATAL_ERROR "PDL_POST_CUDA=ON but ${why}")
  else()
    message(STATUS "pdl_post: ${why}; building the CPU path only")
    set(${enabled_var} OFF PARENT_SCOPE)
  endif()
  set(${architectures_var} "${kept}" PARENT_SCOPE)
  set(${why_var} "${why}" PARENT_SCOPE)
endfunction()
