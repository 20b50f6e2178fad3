"""Triton Inference Server / KServe v2 front door (HTTP and gRPC) to the engine of the OpenAI
API, answering as TensorRT-LLM's ensemble model does."""
