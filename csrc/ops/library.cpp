// The torchcam_ops operator library and the Python module that loads it.
//
// Importing torchcam_ops._C runs the static registrations of every op in this extension.
// The module carries the facts the Python package checks at import time to detect a stale build.

#include <Python.h>
#include <torch/library.h>

#ifndef TORCHCAM_OPS_VERSION
#define TORCHCAM_OPS_VERSION "unknown"
#endif
#ifndef TORCHCAM_OPS_SOURCE_HASH
#define TORCHCAM_OPS_SOURCE_HASH "unknown"
#endif
#ifndef TORCHCAM_OPS_TORCH_VERSION
#define TORCHCAM_OPS_TORCH_VERSION "unknown"
#endif
#ifndef TORCHCAM_OPS_CPU_CAPABILITY
#define TORCHCAM_OPS_CPU_CAPABILITY "DEFAULT"
#endif

TORCH_LIBRARY(torchcam_ops, m) {
  // Fake kernels and autograd formulas live in this Python module.
  m.set_python_module("torchcam_ops.ops");
}

extern "C" {

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "torchcam_ops native extension: loading it registers torch.ops.torchcam_ops.*",
      -1,
      nullptr,
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef TORCHCAM_OPS_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddStringConstant(module, "build_version", TORCHCAM_OPS_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "source_hash", TORCHCAM_OPS_SOURCE_HASH) < 0 ||
      PyModule_AddStringConstant(module, "torch_version", TORCHCAM_OPS_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "cpu_capability", TORCHCAM_OPS_CPU_CAPABILITY) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

} // extern "C"
