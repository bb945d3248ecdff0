"""Models available offline: those in the local Hugging Face cache (no torch needed to list them)."""

from __future__ import annotations


def cached_hub_models() -> list[str]:
    """Hub ids of the models in the local Hugging Face cache (usable offline)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir().repos
    except (CacheNotFound, OSError):
        return []
    return sorted(r.repo_id for r in repos if r.repo_type == "model")
