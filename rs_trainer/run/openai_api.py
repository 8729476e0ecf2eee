"""The one way this project builds an `openai` client, for the generators (`generators.openai_client`) and the LLM
judge (`rewards.judge`) alike: a base URL, the API key from an environment variable (or none, for a local server),
and the client's own timeout and retries (connection errors, 408/409/429/5xx, with exponential backoff)."""

from __future__ import annotations

import os


def openai_client(base_url: str, api_key_env: str | None, timeout: float, max_retries: int):
    """An `openai.OpenAI` for `base_url`; a `ValueError` when `api_key_env` names a variable that is not set."""
    from openai import OpenAI

    key = os.environ.get(api_key_env, "") if api_key_env else ""
    if api_key_env and not key:
        raise ValueError(f"the environment variable {api_key_env} (`api_key_env`) is not set.")
    return OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=max_retries)
