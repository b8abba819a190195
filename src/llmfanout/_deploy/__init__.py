"""Deployments: many providers used as one (``llmfanout.Pool``): routing, failover, fallbacks, hedging."""
