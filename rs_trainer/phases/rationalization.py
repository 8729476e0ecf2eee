"""STaR's rationalization, the pure part: a prompt no sample solved is asked again with its ground truth as a hint.

>>> prompt = {"prompt_id": "p1", "answer": "7", "prompt": [{"role": "user", "content": "3 + 4?"}]}
>>> hinted_prompts([prompt], " (Hint: {answer}.)")[0]["prompt"]
[{'role': 'user', 'content': '3 + 4? (Hint: 7.)'}]
>>> prompt["prompt"][0]["content"]  # the original is left as it was: rows are trained without the hint
'3 + 4?'
"""

from __future__ import annotations


def hinted_prompts(prompts: list[dict], hint: str) -> list[dict]:
    """Each prompt with `hint`, formatted with the prompt's own columns (`{answer}`), appended to its last user
    message; the prompts themselves are not changed."""
    hinted = []
    for prompt in prompts:
        messages = [dict(m) for m in prompt["prompt"]]
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last]["content"] += hint.format(**prompt)
        hinted.append({**prompt, "prompt": messages})
    return hinted
