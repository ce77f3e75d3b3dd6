// The one TORCH_LIBRARY block: every probreg operator schema lives here. Device files
// (cpu/*.cpp, cuda/*_cuda.cpp) only register kernels with TORCH_LIBRARY_IMPL.
// Fake (meta) kernels and autograd formulas are registered from Python (probreg/_ops.py).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import probreg._C` loads this shared library, which runs the static registrations
// below and in the device files. The module itself has no Python functions.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(probreg, m) {
  // ---- spectral SPD map (csrc/include/probreg/{symeig,spectral,packed}.h) ----
  // symeig: B (..., d, d) -> (eigenvalues (..., d) ascending, eigenvectors (..., d, d) columns)
  m.def("symeig(Tensor B) -> (Tensor, Tensor)");
  m.def(
      "_symeig_backward(Tensor grad_eigenvalues, Tensor grad_eigenvectors, Tensor eigenvalues, "
      "Tensor eigenvectors) -> Tensor");
  // spd_remap: B (..., d, d) -> A (..., d, d) = V diag(g(l)) V^T
  m.def("spd_remap(Tensor B, float theta) -> Tensor");
  m.def("_spd_remap_backward(Tensor grad_A, Tensor B, float theta) -> Tensor");
  // spd_from_raw: raw (..., P) packed -> A (..., d, d)
  m.def("spd_from_raw(Tensor raw, float theta) -> Tensor");
  m.def("_spd_from_raw_backward(Tensor grad_A, Tensor raw, float theta) -> Tensor");
  // ---- negative log-likelihood (csrc/include/probreg/huber.h) ----
  // huber_nll: pred (..., W), target (..., d) -> per-target loss (...) WITHOUT the constant
  // log c_d(delta). family: 0 huber, 1 gauss, 2 laplace, 3 charbonnier; covariance:
  // 0 identity (W = d), 1 diagonal (W = 2d), 2 full (W = d + d(d+1)/2). The loss is float32
  // for float16/bfloat16 inputs, the input dtype otherwise.
  m.def(
      "huber_nll(Tensor pred, Tensor target, float delta, float theta, int family, int covariance, "
      "bool mu_parameterization) -> Tensor");
  // -> (grad_pred (..., W) in pred's dtype, grad_target (..., d) in target's dtype, or an
  // empty (0,) tensor when need_grad_target is false).
  m.def(
      "_huber_nll_backward(Tensor grad_loss, Tensor pred, Tensor target, float delta, float theta, "
      "int family, int covariance, bool mu_parameterization, bool need_grad_target) -> (Tensor, Tensor)");
  // _huber_nll_and_grad: huber_nll and _huber_nll_backward in one pass (one decomposition per
  // target), the backward for the upstream gradient grad_loss of every target (one value,
  // rounded to the loss dtype as a grad_loss tensor would be) -> (loss (...), grad_pred
  // (..., W), grad_target (..., d) or an empty (0,) tensor when need_grad_target is false),
  // each equal bit for bit to huber_nll's and to _huber_nll_backward's with that value
  // broadcast. Not differentiable (its Autograd kernel raises): huber_nll's autograd rule
  // calls it on the CPU when nothing but a first-order backward is to be recorded
  // (grad_loss = 1), probreg.huber_nll's mean reduction with grad_loss = 1/n.
  m.def(
      "_huber_nll_and_grad(Tensor pred, Tensor target, float delta, float theta, int family, int covariance, "
      "bool mu_parameterization, bool need_grad_target, float grad_loss=1.) -> (Tensor, Tensor, Tensor)");
  // _log_normalizer: log c of the family's density in R^d, a 0-d float64 CPU tensor.
  // Implemented in Python (probreg/normalizer.py, registered in probreg/_ops.py); an op so
  // that torch.compile can evaluate it when delta is a symbolic (changing) float.
  m.def("_log_normalizer(int d, str family, float delta) -> Tensor");

  // ---- fusion of Huber estimates (csrc/include/probreg/fuse.h) ----
  // huber_fuse: v (..., n, d), A (..., n, d, d), weight (..., n), init (..., d)?
  //   -> (y (..., d), hessian (..., d, d), iterations int32 (...), converged bool (...)).
  // damping only enters the backward; it is a forward argument so autograd keeps it.
  m.def(
      "huber_fuse(Tensor v, Tensor A, Tensor weight, Tensor? init, float delta, int max_iter, "
      "float tol, float damping) -> (Tensor, Tensor, Tensor, Tensor)");
  // _huber_fuse_backward: implicit gradient at y* -> (grad_v, grad_A, grad_weight)
  m.def(
      "_huber_fuse_backward(Tensor grad_y, Tensor y, Tensor v, Tensor A, Tensor weight, float delta, "
      "float damping) -> (Tensor, Tensor, Tensor)");

  // ---- d > 3: pure-PyTorch kernels (probreg/_fallback.py, any device), same arguments and
  // results as the fused ops above, for any d >= 1. Operators rather than Python functions so
  // that torch.compile(fullgraph=True) keeps them opaque and their autograd (probreg/_autograd.py)
  // is the fused ops' own.
  m.def("_symeig_fallback(Tensor B) -> (Tensor, Tensor)");
  m.def(
      "_symeig_fallback_backward(Tensor grad_eigenvalues, Tensor grad_eigenvectors, Tensor eigenvalues, "
      "Tensor eigenvectors) -> Tensor");
  m.def("_spd_remap_fallback(Tensor B, float theta) -> Tensor");
  m.def("_spd_remap_fallback_backward(Tensor grad_A, Tensor B, float theta) -> Tensor");
  m.def(
      "_huber_nll_fallback(Tensor pred, Tensor target, float delta, float theta, int family, int covariance, "
      "bool mu_parameterization) -> Tensor");
  m.def(
      "_huber_nll_fallback_backward(Tensor grad_loss, Tensor pred, Tensor target, float delta, float theta, "
      "int family, int covariance, bool mu_parameterization, bool need_grad_target) -> (Tensor, Tensor)");
  m.def(
      "_huber_fuse_fallback(Tensor v, Tensor A, Tensor weight, Tensor? init, float delta, int max_iter, "
      "float tol, float damping) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_huber_fuse_fallback_backward(Tensor grad_y, Tensor y, Tensor v, Tensor A, Tensor weight, float delta, "
      "float damping) -> (Tensor, Tensor, Tensor)");

  // ---- second-order rules (probreg/_second_order.py, plain torch ops, any d): derivatives of the
  // backward operators above. Their own derivatives raise (third order is not supported).
  // _spd_remap_second: d2F_B[G, E] (..., d, d), the second-order Daleckii-Krein form of
  // F(B) = V diag(g(l)) V^T (symmetric in G and E; only their symmetric parts matter).
  m.def("_spd_remap_second(Tensor B, Tensor G, Tensor E, float theta) -> Tensor");
  // _huber_nll_hvp: grad_loss * Hess(loss) . (dpred, dtarget) per target -> (pred part (..., W),
  // target part (..., d), or an empty (0,) tensor when need_grad_target is false).
  m.def(
      "_huber_nll_hvp(Tensor grad_loss, Tensor pred, Tensor target, Tensor dpred, Tensor dtarget, float delta, "
      "float theta, int family, int covariance, bool mu_parameterization, bool need_grad_target) -> (Tensor, Tensor)");
}
