"""Generated gRPC and protobuf code; regenerate with `make proto`, never edit."""
