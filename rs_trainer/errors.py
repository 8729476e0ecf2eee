"""The project's error types, at the bottom of the import graph so that every layer can raise them.

- `ConfigError`: a recipe value that cannot work; `rs_trainer.cli` prints it as one line and exits with 2.
- `GeneratorError`: a generator failed mid-run (an endpoint, a managed server); exit code 1, the run resumes.
- `ScorerError`: a scorer raised, or returned a value that cannot be used; a bug in the scorer, with its traceback.
- `UploadError`: the Hub refused or could not be reached at the end of a finished run; exit code 1, the files stay.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe value that cannot work; the message names the key and what to change."""


class GeneratorError(RuntimeError):
    """A generator could not produce its samples; the message names the endpoint, the model and the fix."""


class ScorerError(RuntimeError):
    """A scorer raised, or returned a value that cannot be used; the message names the scorer and sample."""


class UploadError(RuntimeError):
    """`push_to_hub` could not upload a finished run's model; the message names the folder and how to upload it."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (or its type), to quote inside a one-line error.

    >>> first_line(ValueError("no such file\\nmore detail")), first_line(KeyError())
    ('no such file', 'KeyError')
    """
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
