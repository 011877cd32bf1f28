"""kubetune: LLM post-training as a Kubeflow pipeline, configured in LLaMA-Factory's vocabulary."""

__version__ = "0.1.0"

from kubetune.dependency_noise import install_filters as _install_filters

_install_filters()  # before any module of ours imports transformers or peft (which import torchao)
