# Cython extension modules of the evaluation package (included by the root CMakeLists.txt).
# pdl_add_cython_module(<name>) compiles src/<name>.pyx into pdl_post.<name> (C++ mode).
pdl_add_cython_module(_png)
pdl_add_cython_module(_eval_kernels)
