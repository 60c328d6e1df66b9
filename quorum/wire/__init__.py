"""Wire formats: safetensors blobs addressed by SHA-256, and their chunking."""
