"""Churn, recovery and retention-uplift models: training, evaluation, explanations, registry."""
