"""Generated KServe v2 / Triton gRPC messages and service stubs (see README.md)."""
