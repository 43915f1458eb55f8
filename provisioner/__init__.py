"""provisioner: one YAML cluster spec to a verified Kubernetes cluster."""

__version__ = "0.1.0"
