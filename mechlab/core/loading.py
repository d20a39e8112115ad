"""Load models as TransformerLens 4 ``TransformerBridge`` objects: hub names, local folders, the shipped
organism, and random-init models of the real architectures.

Names ``load_model`` understands:

    ``gpt2``, ``google/gemma-2b``, ... any Hugging Face hub name (needs the internet, or a pre-download)
    ``/path/to/folder``                a local HF-format folder (config.json + weights + tokenizer)
    ``organism``                       the tiny GPT-2-style model mechlab trains and ships (offline)
    ``offline``                        the offline default: the organism if shipped, else ``tiny-gpt2``
    ``tiny-gpt2`` / ``tiny-gemma``     2-layer random-init models of both families (tests, checkers)
    ``random-gpt2-small``              GPT-2 small's shape, random weights (speed and shape checks)
    ``random-gemma-2b``                Gemma-2b's shape (RMSNorm, rotary, multi-query), random weights

A hub name found in the local Hugging Face cache loads offline. A cached folder whose ``config.json`` carries
``"mechlab_standin": true`` (built by ``python -m mechlab.models.standins build``: random weights under the names
``gpt2`` and ``google/gemma-2b``, for CI's GPT-2 / Gemma code-path mode) loads with ``ModelInfo.standin=True`` and
is printed as a STAND-IN, never as the real model.

Random-init models use the organism's tokenizer when it is shipped, else a byte-level tokenizer; their
vocabulary size is the real architecture's, so token ids from the small tokenizer are all valid.

Example::

    from mechlab.core.loading import load_model
    model = load_model("tiny-gpt2")          # prints what it loaded
    logits = model(model.to_tokens("Hello"))
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import get_token, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer, GemmaConfig, GPT2Config, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from mechlab.core.cpu_math import warm_up_vector_math

try:  # only inside Google Colab
    from google.colab import userdata  # type: ignore[import-not-found]
except ImportError:
    userdata = None

OFFLINE_ENV = "MECHLAB_MODEL"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
# the shipped checkpoint (mechlab/models/organism/checkpoint); a path, not an import: core sits below models
ORGANISM_CHECKPOINT = PACKAGE_DIR / "models" / "organism" / "checkpoint"
HUB_HOST = "huggingface.co"
GATED_PREFIXES = ("google/gemma", "meta-llama/", "mistralai/")
# a key in a model's config.json marking random weights served under a real name (mechlab.models.standins)
STANDIN_KEY = "mechlab_standin"


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded here (no network, no local copy); the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """What a notebook ran on, printed at load time and kept on ``model.mechlab_info``."""

    name: str  # the name that was loaded (after resolving ``offline``)
    requested: str  # what the caller or notebook asked for
    source: str  # "hub", "local folder", "shipped organism", "random init"
    device: str
    dtype: str
    weights: str  # e.g. "raw HF weights (no folding)" or "LayerNorm folded, weights centred"
    standin: bool = False  # random weights served under a real model's name (CI's GPT-2 / Gemma code-path mode)

    def __str__(self) -> str:
        sub = "" if self.name == self.requested else f" (substituted for {self.requested!r})"
        stand = "; STAND-IN: random weights under this name, so learned behaviour is absent" if self.standin else ""
        return f"{self.name}{sub} [{self.source}; {self.device}, {self.dtype}; {self.weights}{stand}]"


# ---------------------------------------------------------------------------------------------------------
# devices


def default_device() -> str:
    """CUDA if available, else CPU. MPS is never chosen silently (it has given wrong logits)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device: str | None) -> str:
    if device is None:
        return default_device()
    device = str(device)
    kind = device.split(":")[0]
    if kind not in {"cpu", "cuda", "mps"}:
        raise ValueError(f"device={device!r} is not one of 'cpu', 'cuda', 'cuda:N', 'mps'. Pass one of those.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but torch sees no CUDA GPU. Pass device='cpu'.")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("device='mps' was asked for, but MPS is not available. Pass device='cpu'.")
    return device


def _mps_agrees_with_cpu(model, atol: float = 1e-3) -> bool:
    """Run one short prompt on MPS and on CPU; True when the logits agree within ``atol``."""
    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog.")
    with torch.no_grad():
        mps_logits = model(tokens.to("mps")).float().cpu()
        model.to("cpu")
        cpu_logits = model(tokens.cpu()).float()
        model.to("mps")
    return bool(torch.allclose(mps_logits, cpu_logits, atol=atol, rtol=0))


# ---------------------------------------------------------------------------------------------------------
# names


def organism_available() -> bool:
    """True when the trained organism checkpoint is shipped inside the package."""
    return (ORGANISM_CHECKPOINT / "config.json").is_file()


def resolve_model_name(name: str) -> str:
    """Resolve ``offline`` to the offline default; every other name is returned unchanged."""
    if name == "offline":
        return "organism" if organism_available() else "tiny-gpt2"
    return name


RANDOM_ARCHS = ("tiny-gpt2", "tiny-gemma", "random-gpt2-small", "random-gemma-2b")


def _random_hf_config(arch: str, vocab_size: int, bos: int, eos: int):
    if arch == "tiny-gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                          bos_token_id=bos, eos_token_id=eos)
    if arch == "random-gpt2-small":  # GPT-2 small: 12 layers, 12 heads, d_model 768, vocab 50257
        return GPT2Config(vocab_size=max(vocab_size, 50257), n_positions=1024, n_embd=768, n_layer=12,
                          n_head=12, bos_token_id=bos, eos_token_id=eos)
    gemma_common = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_act="gelu_pytorch_tanh",
                        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0)
    if arch == "tiny-gemma":  # the Gemma family in miniature: RMSNorm, rotary, one K/V head (MQA)
        return GemmaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                           max_position_embeddings=256, **gemma_common)
    if arch == "random-gemma-2b":  # Gemma-2b's public config: 18 layers, 8 query heads, 1 K/V head
        return GemmaConfig(vocab_size=max(vocab_size, 256000), hidden_size=2048, intermediate_size=16384,
                           num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                           max_position_embeddings=8192, **gemma_common)
    raise ValueError(f"unknown random architecture {arch!r}; expected one of {RANDOM_ARCHS}.")


def cache_dir() -> Path:
    """The mechlab cache folder: ``$MECHLAB_CACHE``, else ``~/.cache/mechlab`` (a temp folder if unwritable)."""
    root = os.environ.get("MECHLAB_CACHE") or os.path.join(Path.home(), ".cache", "mechlab")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        path = Path(tempfile.gettempdir()) / "mechlab-cache"
        path.mkdir(parents=True, exist_ok=True)
    return path


def fallback_tokenizer_dir() -> Path:
    """A byte-level BPE tokenizer (256 byte symbols, no merges) saved once in the mechlab cache.

    Used by random-init models when the organism's tokenizer is not shipped. A tokenizer built in memory
    cannot boot a ``TransformerBridge`` (it lacks ``name_or_path``), so it is saved and reloaded.
    """
    out = cache_dir() / "byte-tokenizer"
    if (out / "tokenizer.json").is_file():
        return out

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=257, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["a"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
    fast.save_pretrained(tmp)
    if not out.exists():  # another process may have won the race; its copy is identical
        tmp.replace(out)
    return out


def _random_tokenizer_dir() -> Path:
    return ORGANISM_CHECKPOINT if organism_available() else fallback_tokenizer_dir()


# ---------------------------------------------------------------------------------------------------------
# the hub


def hf_token() -> str | None:
    """The Hugging Face token from ``HF_TOKEN``, Colab secrets, or the local login, else None."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return os.environ[var]
    if userdata is not None:
        try:
            return userdata.get("HF_TOKEN")
        except Exception as err:  # Colab raises its own SecretNotFoundError / NotebookAccessError
            if type(err).__name__ not in {"SecretNotFoundError", "NotebookAccessError"}:
                raise
    return get_token()


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick TCP probe of the Hugging Face hub (False at once when ``HF_HUB_OFFLINE`` is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0", "false", "False"}:
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_path(name: str) -> bool:
    """True for names written as file paths (``./x``, ``~/x``, ``/x``, ``x/y/z``, ``C:\\x``), not hub ids."""
    return name.startswith((".", "~", "/", "\\")) or "\\" in name or name.count("/") > 1


def in_local_hf_cache(name: str) -> bool:
    """Whether the hub model ``name`` has its config in the local Hugging Face cache (no network is asked)."""
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError as err:
        raise ValueError(f"{name!r} is neither a folder that exists nor a Hugging Face model id ({err}). Check the "
                         "path for typos (it is read relative to the current folder), or pass a hub name such as "
                         "'gpt2'.") from None


def _unavailable_message(name: str) -> str:
    return (
        f"Cannot load {name!r}: the Hugging Face hub is not reachable from here and no local copy was found.\n"
        "What you can do:\n"
        "  - run offline on the model organism: load_model('organism'), or set MECHLAB_MODEL=offline for the "
        "whole course;\n"
        "  - for a gated model (Gemma, Llama): set HF_TOKEN (or a Colab secret named HF_TOKEN) and accept the "
        f"licence at https://huggingface.co/{name};\n"
        "  - for a workshop without Wi-Fi: download beforehand with "
        f"`huggingface-cli download {name}` and load the folder it prints."
    )


def standin_marked(name: str) -> bool:
    """True when the config.json that ``name`` (a local folder or a cached hub id) loads from carries
    ``"mechlab_standin": true``: random weights under a real name, built by ``mechlab.models.standins``."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        path = folder / "config.json"
    else:
        try:
            found = try_to_load_from_cache(name, "config.json")
        except HFValidationError:
            return False
        if not isinstance(found, str):
            return False
        path = Path(found)
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text()).get(STANDIN_KEY, False))


# ---------------------------------------------------------------------------------------------------------
# loading


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and info logs for the duration of a load (restored after)."""

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype={dtype!r} is not understood; pass one of {sorted(table)} or a torch.dtype.")
    return table[dtype]


def load_model(
    name: str,
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    fold_weights: bool = False,
    seed: int = 0,
    token: str | None = None,
    verbose: bool = True,
):
    """Load ``name`` as a ``TransformerBridge`` (see the module docstring for the names understood).

    Args:
        name: hub name, local folder, ``organism``, ``offline`` or a random architecture.
        device: ``cpu``, ``cuda`` or ``mps``; default CUDA when present, else CPU. MPS only when asked, and
            then checked against the CPU first (falls back to CPU, saying so, when the logits disagree).
        dtype: float32 by default; ``bfloat16`` for Gemma-2b on a small GPU.
        fold_weights: False keeps the raw HF weights (mechlab's methods read the norm scales from the cache).
            True calls ``enable_compatibility_mode()``: LayerNorm folded and weights centred, as
            HookedTransformer did. Either way the choice is printed.
        seed: the seed of random-init architectures.
        token: Hugging Face token for gated models; default ``HF_TOKEN`` / Colab secret / local login.
        verbose: print one line saying what was loaded.

    Returns:
        the model, with ``model.mechlab_info`` (a :class:`ModelInfo`) saying what it is.
    """

    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}: expected a model name such as 'gpt2', 'organism' or 'tiny-gpt2'.")
    warm_up_vector_math()  # before any multi-threaded torch math: MKL's first-call race (see mechlab.core.cpu_math)
    requested = name
    name = resolve_model_name(name)
    dev = _check_device(device)
    torch_dtype = _parse_dtype(dtype)
    load_dev = "cpu" if dev == "mps" else dev

    with quiet_transformers():
        if name in RANDOM_ARCHS:
            source = "random init"
            model = _boot_random(name, seed=seed, device=load_dev, dtype=torch_dtype)
        elif name == "organism":
            if not organism_available():
                raise ModelUnavailableError(
                    f"The organism checkpoint is not shipped in {ORGANISM_CHECKPOINT}. Train it with "
                    "`python -m mechlab.models.organism.train`, or use a random-init model such as 'tiny-gpt2'.")
            source = "shipped organism"
            model = TransformerBridge.boot_transformers(str(ORGANISM_CHECKPOINT), device=load_dev, dtype=torch_dtype)
        elif Path(name).expanduser().is_dir():
            source = "local folder"
            model = TransformerBridge.boot_transformers(str(Path(name).expanduser()), device=load_dev,
                                                        dtype=torch_dtype)
        elif looks_like_path(name):
            raise ValueError(f"name={name!r} looks like a folder, but no folder {Path(name).expanduser().resolve()} "
                             "exists. Check the path for typos, or pass a hub name such as 'gpt2' or 'organism'.")
        else:
            source = "hub"
            model = _boot_hub(name, token=token, device=load_dev, dtype=torch_dtype)

    model.eval()
    if source != "random init":
        _own_memory(model)
    if dev == "mps":
        model.to("mps")
        if not _mps_agrees_with_cpu(model):
            print("mechlab: MPS logits disagree with the CPU on a check prompt (a known MPS issue); "
                  "using the CPU instead.")
            model.to("cpu")
            dev = "cpu"
    weights = "raw HF weights (no folding; norm scales read from the cache)"
    if fold_weights:
        model.enable_compatibility_mode()
        weights = "LayerNorm folded into weights, writing weights and unembedding centred"
    standin = source in {"hub", "local folder"} and standin_marked(name)
    if standin:
        source += ", mechlab stand-in"
    info = ModelInfo(name=name, requested=requested, source=source, device=dev,
                     dtype=str(torch_dtype).replace("torch.", ""), weights=weights, standin=standin)
    model.mechlab_info = info
    if verbose:
        c = model.cfg
        print(f"mechlab: loaded {info}: {c.n_layers} layers, {c.n_heads} heads, d_model {c.d_model}, "
              f"d_vocab {c.d_vocab}")
    return model


def _own_memory(model) -> None:
    """Copy the CPU weights that still live in the checkpoint's memory-mapped file into the process's own memory.

    safetensors maps the checkpoint file, and transformers keeps the mapped pages as the CPU weights. A tool that
    rewrites that file in place (``cp`` over it, ``safetensors.torch.save_file``, ``torch.save`` to the same path)
    then changes a running model's weights under it, between two cells of a notebook. After this, a loaded model
    depends on no file. Tensors that share a storage (tied embeddings, views) still share one copy.
    """
    copies: dict[int, torch.UntypedStorage] = {}
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type != "cpu" or tensor.numel() == 0:
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in copies:
                copies[key] = storage.clone()
            tensor.data = torch.empty(0, dtype=tensor.dtype).set_(copies[key], tensor.storage_offset(),
                                                                  tensor.size(), tensor.stride())


def _boot_random(arch: str, *, seed: int, device: str, dtype: torch.dtype):
    tok_dir = _random_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    config = _random_hf_config(arch, len(tokenizer), bos, eos)
    # the bridge reads the config from a folder; weights never touch the disk
    cfg_dir = cache_dir() / f"config-{arch}-v{len(tokenizer)}"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(cfg_dir)
    tokenizer.save_pretrained(cfg_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    return TransformerBridge.boot_transformers(str(cfg_dir), hf_model=hf_model, tokenizer=tokenizer,
                                               device=device, dtype=dtype)


@contextlib.contextmanager
def _token_in_env(token: str | None) -> Iterator[None]:
    """``HF_TOKEN`` set to ``token`` for the duration of one load only (the bridge takes no token argument);
    whatever was there before is restored, so no secret outlives the call."""
    if not token or os.environ.get("HF_TOKEN") == token:
        yield
        return
    before = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = before


def _boot_hub(name: str, *, token: str | None, device: str, dtype: torch.dtype):
    token = token or hf_token()
    cached = in_local_hf_cache(name)
    if not cached and name.startswith(GATED_PREFIXES) and not token:
        raise ValueError(
            f"{name!r} is a gated model and no Hugging Face token was found (expected HF_TOKEN, a Colab secret "
            f"named HF_TOKEN, or `huggingface-cli login`). Accept the licence at https://huggingface.co/{name}, "
            "create a read token at https://huggingface.co/settings/tokens and set HF_TOKEN; or run offline "
            "with load_model('organism').")
    if not cached and not hub_reachable():
        raise ModelUnavailableError(_unavailable_message(name))
    try:
        with _token_in_env(token):
            return TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except OSError as err:
        text = str(err)
        if "gated" in text.lower() or "401" in text or "403" in text:
            raise ValueError(
                f"The hub refused {name!r} ({text.splitlines()[0]}). Accept the licence at "
                f"https://huggingface.co/{name} with the account whose token you set, then retry.") from err
        raise ModelUnavailableError(_unavailable_message(name) + f"\n(underlying error: {text.splitlines()[0]})") \
            from err


def course_model(default: str, *, env_var: str = OFFLINE_ENV, **kwargs):
    """The model a notebook runs on: ``default`` unless the environment variable ``env_var`` names another.

    ``make course`` and CI set ``MECHLAB_MODEL=offline`` so every notebook runs on the organism. The
    choice is always printed, and ``model.mechlab_info`` records it, so a substitution is never hidden.
    """
    override = os.environ.get(env_var)
    name = override or default
    if override and override != default:
        print(f"mechlab: {env_var}={override!r} overrides this notebook's default model {default!r}.")
    model = load_model(name, **kwargs)
    return model
