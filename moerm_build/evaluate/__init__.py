"""Evaluation: featurizers and metrics, the real-text suite, bad replies and reward hacking, parity, the report."""
