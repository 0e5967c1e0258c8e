"""The thin LLP trainer: ``python -m llp.train``. Uses only the public ``llp_kernels`` API."""
