"""Training-throughput benchmark: kubetune against plain TRL (and LLaMA-Factory when installed)."""
