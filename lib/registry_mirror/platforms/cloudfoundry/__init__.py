"""Cloud Foundry through the CC v3 API, organised as the cf CLI organises its actor (see platform.py)."""
from .platform import CloudFoundryPlatform

__all__ = ["CloudFoundryPlatform"]
