"""`inflightd quantize`: a checkpoint rewritten with quantized linear layers, in layouts that
inflightd and other engines read (GPTQ, AutoAWQ's GEMM, compressed-tensors)."""
