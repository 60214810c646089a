"""Integrations with federated-learning frameworks: capture what a real run shares, then audit it."""
