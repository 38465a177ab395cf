"""Runbook library for a protected Docker Hub pull-through mirror (registry + nginx security proxy)."""
__version__ = "0.1.0"
