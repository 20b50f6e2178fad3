#!/usr/bin/env bash
# Regenerates server/triton/proto/*_pb2*.py from the vendored KServe v2 / Triton .proto files
# (needs grpcio-tools: pip install grpcio-tools). The generated modules are checked in, so
# installing inflightd needs no code generation; rerun this after updating the .proto files.
set -euo pipefail
cd "$(dirname "$0")/../server/triton/proto"
python -m grpc_tools.protoc -I . --python_out=. model_config.proto
python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. grpc_service.proto
# protoc writes the imports between the generated modules as top-level ones; inside the
# package they must be relative.
sed -i 's/^import model_config_pb2 as/from . import model_config_pb2 as/' grpc_service_pb2.py
sed -i 's/^import grpc_service_pb2 as/from . import grpc_service_pb2 as/' grpc_service_pb2_grpc.py
