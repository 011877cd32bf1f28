"""kubetune: LLM post-training as a Kubeflow pipeline, configured in LLaMA-Factory's vocabulary."""

__version__ = "0.1.0"
