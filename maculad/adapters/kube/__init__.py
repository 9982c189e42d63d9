"""Talking to a Kubernetes API server: client construction shared by the
Ingress provider and the kind cluster supervisor."""
