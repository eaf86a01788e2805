"""Clients of the adaptive_diffusion Triton model (HTTP and gRPC)."""
