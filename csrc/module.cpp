// The Python module `pretrain_mm._C`: importing it registers the torch.ops.pretrain_mm ops.
//
// The ops are registered by static initialisers (TORCH_LIBRARY); the module itself is empty,
// so it needs no pybind11 and works with the limited Python API.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "pretrain_mm's compiled ops", -1, nullptr};
  return PyModule_Create(&module);
}
