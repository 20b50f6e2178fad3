// The two GELUs of the LayerNorm families and Gemma, in float32 as torch's F.gelu computes
// them; shared by the activation kernels (gelu.cu) and the GEMV's fused epilogue (gemv.cu).
// Modules that include this are built without fast math: erff and tanhf as torch has them.
#pragma once

namespace inflightd {

// The exact GELU, x / 2 * (1 + erf(x / sqrt 2)).
__device__ __forceinline__ float gelu_erf(float x) {
  return x * 0.5f * (1.f + erff(x * 0.70710678118654752440f));
}

// The tanh approximation, x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu_tanh(float x) {
  const float beta = 0.79788456080286535588f;  // sqrt(2) * (2 / sqrt(pi)) / 2
  const float inner = beta * (x + 0.044715f * (x * x * x));
  return 0.5f * x * (1.f + tanhf(inner));
}

// No activation: the GEMV's plain epilogue.
__device__ __forceinline__ float identity(float x) { return x; }

}  // namespace inflightd
