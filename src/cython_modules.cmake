# Cython extension modules of the evaluation package (included by the root CMakeLists.txt).
# pdl_add_cython_module(<name>) compiles src/<name>.pyx into pdl_post.<name> (C++ mode).
# Both include src/_counting.pxi (the pair-count table), listed so edits to it rebuild them.
pdl_add_cython_module(_png "${CMAKE_CURRENT_SOURCE_DIR}/src/_counting.pxi")
pdl_add_cython_module(_eval_kernels "${CMAKE_CURRENT_SOURCE_DIR}/src/_counting.pxi")
