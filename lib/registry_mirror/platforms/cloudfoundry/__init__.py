"""Cloud Foundry through the CC v3 API: deploy, health, capabilities, the session."""
