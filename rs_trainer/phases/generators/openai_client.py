from rs_trainer.errors import GeneratorError  # noqa: F401  (re-export for trainer.py)
from rs_trainer.generators.openai_client import OpenAIGenerator, check_endpoint, post_adapter  # noqa: F401  (same)
