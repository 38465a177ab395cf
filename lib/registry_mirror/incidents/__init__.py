"""Incidents: diagnose the chain layer by layer (triage), remedy behind a gate, rehearse with faults."""
