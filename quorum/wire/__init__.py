"""Wire formats: safetensors blobs addressed by SHA-256, their transfer digests, and their
chunking into hand-written protobuf frames."""
