"""Deployments: many providers as one (``llmfanout.Pool``): routing, failover, fallbacks."""
