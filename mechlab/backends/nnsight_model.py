"""nnsight models for mechlab: wrap a Hugging Face model, name its sites, and route traces locally or to NDIF.

nnsight (``pip install mechlab[nnsight]``) wraps an ordinary Hugging Face model and lets a ``with model.trace(...)``
block read and overwrite any module's inputs and outputs. The same block runs in-process or, with ``remote=True``,
on NDIF (the National Deep Inference Fabric), which holds the weights of models no single GPU here could load.

This module holds what every method of :mod:`mechlab.backends.nnsight_methods` shares:

    language_model(hf_model, tokenizer)   an ``nnsight.TransformersModel`` (a causal LM) around a model in memory
    twin_of_bridge(bridge)                a fresh HF model with a TransformerBridge's exact weights, wrapped
    organism_language_model()             the shipped organism, loaded straight from its checkpoint
    remote_language_model(repo_id)        a hub model on the meta device (no weights here), for remote=True
    Sites / sites(lm)                     the architecture's shape and where each activation kind lives
    trace_kwargs(lm, remote, api_key)     what ``lm.trace`` gets: nothing, ``remote="local"`` or an NDIF backend
    ndif_api_key(), ndif_reachable()      the NDIF key (never printed, written or put in os.environ) and a probe
    describe_remote_call(...)             the text a notebook prints offline instead of sending a request

Which activation kind is which module (``L`` a layer; GPT-2 names first, then Llama / Gemma names):

    resid_pre  the block's first input        transformer.h[L]        model.layers[L]
    attn_out   the attention module's output  h[L].attn .output[0]    layers[L].self_attn .output[0]
    mlp_out    the MLP's output               h[L].mlp                layers[L].mlp
    z          the output projection's input  h[L].attn.c_proj        layers[L].self_attn.o_proj
               ([batch, pos, head * d_head], viewed as [batch, pos, head, d_head])

These are the activations TransformerLens's bridge calls ``blocks.L.hook_resid_pre``, ``hook_attn_out``,
``hook_mlp_out`` and ``attn.hook_z``; ``tests/test_nnsight_backend.py`` checks both give the same numbers.

Example::

    from mechlab.backends.nnsight_model import organism_language_model, sites
    lm = organism_language_model()
    sites(lm).n_layers          # 3
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import torch

from mechlab.core.cpu_math import warm_up_vector_math
from mechlab.core.loading import ORGANISM_CHECKPOINT, looks_like_path, organism_available

try:  # optional dependency: pip install mechlab[nnsight]
    import nnsight
    from nnsight import CONFIG as NNSIGHT_CONFIG
    from nnsight import TransformersModel
    from nnsight.intervention.backends.remote import RemoteBackend
except ImportError:
    nnsight = None
    NNSIGHT_CONFIG = None
    TransformersModel = None
    RemoteBackend = None

try:  # only inside Google Colab
    from google.colab import userdata  # type: ignore[import-not-found]
except ImportError:
    userdata = None

from transformers import AutoModelForCausalLM, AutoTokenizer

INSTALL_HINT = "pip install mechlab[nnsight]"
NDIF_KEY_ENV = "NDIF_API_KEY"
NDIF_DEFAULT_HOST = "https://api.ndif.us"
NDIF_KEY_PAGE = "https://login.ndif.us"
SUPPORTED_FAMILIES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama", "gemma": "llama"}


class NDIFUnavailableError(RuntimeError):
    """NDIF cannot be reached from here (no network, or the host is down); the message says what to do."""


def nnsight_available() -> bool:
    """True when nnsight is importable (the ``nnsight`` extra is installed)."""
    return nnsight is not None


def require_nnsight() -> None:
    """An ``ImportError`` naming the install command when nnsight is missing."""
    if nnsight is None:
        raise ImportError(f"mechlab's nnsight backend needs the nnsight package, which is not installed. Install "
                          f"it with `{INSTALL_HINT}` (or `pip install nnsight`), then restart the kernel.")


# ---------------------------------------------------------------------------------------------------------
# building the nnsight model


def language_model(hf_model, tokenizer):
    """``nnsight.TransformersModel`` (task "text-generation"; ``LanguageModel`` is its deprecated name) around
    ``hf_model`` (an HF ``*ForCausalLM`` in memory) and its tokenizer."""
    require_nnsight()
    if not isinstance(hf_model, torch.nn.Module) or not hasattr(hf_model, "config"):
        raise ValueError(f"hf_model is a {type(hf_model).__name__}; expected a Hugging Face causal LM module (e.g. "
                         "AutoModelForCausalLM.from_pretrained(path)). To wrap a TransformerBridge, use "
                         "twin_of_bridge(bridge).")
    sites_of_config(hf_model.config)  # refuse unsupported architectures now, not mid-trace
    return TransformersModel(hf_model.eval(), task="text-generation", tokenizer=tokenizer)


def organism_language_model(*, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped organism, loaded from its HF checkpoint and wrapped by nnsight (eager attention)."""
    require_nnsight()
    if not organism_available():
        raise ValueError(f"the organism checkpoint is not shipped in {ORGANISM_CHECKPOINT}; train it with "
                         "`python -m mechlab.models.organism.train`, or wrap another model with language_model().")
    warm_up_vector_math()  # MKL's first-call race (mechlab.core.cpu_math), as load_model does
    hf = AutoModelForCausalLM.from_pretrained(str(ORGANISM_CHECKPOINT), attn_implementation="eager", dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(ORGANISM_CHECKPOINT))
    return language_model(hf.to(device), tokenizer)


def remote_language_model(repo_id: str):
    """An nnsight model of hub model ``repo_id`` on the meta device (no weights here), for ``remote=True`` on NDIF.

    Needs the hub for the config and tokenizer (Colab); offline it raises transformers' own error.
    """
    require_nnsight()
    if not isinstance(repo_id, str) or "/" not in repo_id:
        raise ValueError(f"repo_id={repo_id!r}; expected a hub id such as 'meta-llama/Llama-3.1-70B'.")
    return TransformersModel(repo_id, task="text-generation")


def twin_of_bridge(bridge, *, dtype: torch.dtype | None = None):
    """A fresh HF model with exactly the weights of ``bridge`` (a TransformerBridge), wrapped by nnsight.

    The bridge rewrites its HF model's module tree in place, so nnsight cannot wrap that one; the twin is rebuilt
    from the bridge's config and every parameter copied by name (``._original_component`` removed). Tests use it
    to run one set of weights through both backends.
    """
    require_nnsight()
    original = getattr(bridge, "original_model", None)
    if original is None or not hasattr(original, "config"):
        raise ValueError(f"{type(bridge).__name__} has no original_model with a config; pass a TransformerBridge "
                         "from mechlab.core.loading.load_model.")
    by_name: dict[str, torch.Tensor] = {}
    for name, param in original.named_parameters(remove_duplicate=False):
        by_name.setdefault(name.replace("._original_component", ""), param)
    param = next(original.parameters())
    twin = AutoModelForCausalLM.from_config(original.config, attn_implementation="eager")
    missing = [name for name, _ in twin.named_parameters() if name not in by_name]
    if missing:
        raise ValueError(f"the bridge has no weights for {missing[:3]}; twin_of_bridge supports the families "
                         f"{sorted(SUPPORTED_FAMILIES)} as loaded by mechlab.core.loading.load_model.")
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(by_name[name])
    twin = twin.to(device=param.device, dtype=dtype or param.dtype)
    return language_model(twin, bridge.tokenizer)


# ---------------------------------------------------------------------------------------------------------
# the architecture


@dataclass(frozen=True)
class Sites:
    """The shape of a wrapped model and how its final norm acts (from its HF config)."""

    family: str  # "gpt2" (LayerNorm, learned positions) or "llama" (RMSNorm, rotary: Llama, Mistral, Qwen2, Gemma)
    n_layers: int
    n_heads: int  # query heads
    d_head: int
    d_model: int
    norm_centres: bool  # LayerNorm subtracts the mean; RMSNorm does not
    norm_offset: bool  # Gemma's RMSNorm multiplies by (1 + weight)
    norm_eps: float
    has_pos_embed: bool  # a learned positional embedding writes into the residual stream


def sites_of_config(config) -> Sites:
    """:class:`Sites` from an HF config, or a ValueError for an architecture the backend does not know."""
    model_type = getattr(config, "model_type", None)
    family = SUPPORTED_FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"the nnsight backend does not know the architecture {model_type!r}; it supports "
                         f"{sorted(SUPPORTED_FAMILIES)} (Gemma-2/3 add norms after attention and MLP, which breaks "
                         "per-head DLA). Use the TransformerBridge path (mechlab.methods) for this model.")
    if family == "gpt2":
        return Sites("gpt2", config.n_layer, config.n_head, config.n_embd // config.n_head, config.n_embd, True,
                     False, config.layer_norm_epsilon, True)
    d_head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return Sites("llama", config.num_hidden_layers, config.num_attention_heads, d_head, config.hidden_size, False,
                 model_type == "gemma", config.rms_norm_eps, False)


def sites(lm) -> Sites:
    """:class:`Sites` of a wrapped ``nnsight.TransformersModel``."""
    require_nnsight()
    if TransformersModel is None or not isinstance(lm, TransformersModel):
        raise ValueError(f"expected an nnsight.TransformersModel (from language_model(...), "
                         f"organism_language_model() or twin_of_bridge(...)); got {type(lm).__name__}. The "
                         "TransformerBridge path is mechlab.methods.")
    return sites_of_config(lm.config)


def blocks(lm):
    """The list of transformer blocks (envoys)."""
    return lm.transformer.h if sites(lm).family == "gpt2" else lm.model.layers


def attention(block, family: str):
    return block.attn if family == "gpt2" else block.self_attn


def out_projection(block, family: str):
    """The module whose input is every head's z, concatenated: [batch, pos, head * d_head]."""
    return block.attn.c_proj if family == "gpt2" else block.self_attn.o_proj


def final_norm(lm):
    return lm.transformer.ln_f if sites(lm).family == "gpt2" else lm.model.norm


def token_embedding(lm):
    return lm.transformer.wte if sites(lm).family == "gpt2" else lm.model.embed_tokens


def o_proj_weight(lm, layer: int) -> torch.Tensor:
    """W_O of ``layer`` as [head, d_head, d_model] (GPT-2's Conv1D stores [in, out]; nn.Linear stores [out, in])."""
    s = sites(lm)
    if s.family == "gpt2":
        w = lm._module.transformer.h[layer].attn.c_proj.weight
    else:
        w = lm._module.model.layers[layer].self_attn.o_proj.weight.T
    return w.detach().float().reshape(s.n_heads, s.d_head, s.d_model)


def o_proj_bias(lm, layer: int) -> torch.Tensor | None:
    s = sites(lm)
    proj = (lm._module.transformer.h[layer].attn.c_proj if s.family == "gpt2"
            else lm._module.model.layers[layer].self_attn.o_proj)
    return None if proj.bias is None else proj.bias.detach().float()


def final_norm_affine(lm) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight as it multiplies, bias or zeros) of the final norm, fp32."""
    s = sites(lm)
    norm = lm._module.transformer.ln_f if s.family == "gpt2" else lm._module.model.norm
    weight = norm.weight.detach().float() + (1.0 if s.norm_offset else 0.0)
    bias = getattr(norm, "bias", None)
    return weight, torch.zeros_like(weight) if bias is None else bias.detach().float()


def unembedding(lm) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W_U as [d_vocab, d_model], b_U or None), fp32."""
    head = lm._module.lm_head
    return head.weight.detach().float(), None if head.bias is None else head.bias.detach().float()


def lm_device(lm) -> torch.device:
    return next(lm._module.parameters()).device


# ---------------------------------------------------------------------------------------------------------
# remote execution on NDIF


def ndif_api_key() -> str | None:
    """The NDIF API key from ``NDIF_API_KEY`` or a Colab secret of that name, else None. Never printed."""
    if os.environ.get(NDIF_KEY_ENV):
        return os.environ[NDIF_KEY_ENV]
    if userdata is not None:
        try:
            return userdata.get(NDIF_KEY_ENV) or None
        except Exception as err:  # Colab raises its own SecretNotFoundError / NotebookAccessError
            if type(err).__name__ not in {"SecretNotFoundError", "NotebookAccessError"}:
                raise
    return None


def ndif_host() -> str:
    host = getattr(getattr(NNSIGHT_CONFIG, "API", None), "HOST", None)
    return os.environ.get("NDIF_HOST") or host or NDIF_DEFAULT_HOST


def ndif_reachable(host: str | None = None, timeout: float = 2.0) -> bool:
    """A quick TCP probe of the NDIF host (False at once when ``MECHLAB_OFFLINE`` or ``HF_HUB_OFFLINE`` is set)."""
    for var in ("MECHLAB_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "0") not in {"", "0", "false", "False"}:
            return False
    url = urlparse(host or ndif_host())
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _no_key_message() -> str:
    return (f"remote=True runs the trace on NDIF, which needs an API key, and none was found. Get one at "
            f"{NDIF_KEY_PAGE}, then either store it as a Colab secret named {NDIF_KEY_ENV} (key icon in the left "
            f"bar; grant this notebook access) or set the environment variable {NDIF_KEY_ENV} before starting "
            "Python, or pass api_key=... read from a file you keep out of the repository. Never paste the key into "
            "a cell: it would be saved with the notebook. Nothing was sent.")


def trace_kwargs(lm, remote: bool | str = False, api_key: str | None = None) -> dict:
    """The keyword arguments for ``lm.trace`` that route a run: local, ``remote="local"`` or NDIF.

    ``remote=False`` runs in-process. ``remote="local"`` is nnsight's offline dry run of the remote path
    (serialise, deserialise, run here). ``remote=True`` needs a key (``api_key``, else ``NDIF_API_KEY`` from the
    environment or a Colab secret) and a reachable host; without either it raises before anything is traced.
    The key goes to nnsight's ``RemoteBackend`` for this call only: it is never printed, never saved to nnsight's
    config file and never put in ``os.environ``.
    """
    require_nnsight()
    if remote is False or remote is None:
        return {}
    if remote == "local":
        _ship_mechlab()
        return {"remote": "local"}
    if remote is not True:
        raise ValueError(f"remote={remote!r}; expected False (run here), True (run on NDIF) or 'local' (nnsight's "
                         "offline dry run of the remote path).")
    repo_id = getattr(lm, "repo_id", None)
    if not isinstance(repo_id, str) or not repo_id or looks_like_path(repo_id) or os.path.exists(repo_id):
        raise ValueError(f"remote=True needs a model NDIF serves, named by its hub id: build it with "
                         f"remote_language_model('meta-llama/Llama-3.1-70B') (weights stay on the meta device). This "
                         f"model was built from a module in memory or a local folder ({repo_id!r}), which no server "
                         "has. Nothing was sent.")
    key = api_key or ndif_api_key()
    if not key:
        raise ValueError(_no_key_message())
    host = ndif_host()
    if not ndif_reachable(host):
        raise NDIFUnavailableError(f"remote=True, but the NDIF host {host} cannot be reached from here (no network, "
                                   "or offline mode is set). Run the same call with remote=False on a model that "
                                   "fits here (the organism), or retry from a machine with internet access (Colab). "
                                   "Nothing was sent.")
    _ship_mechlab()
    return {"backend": RemoteBackend(lm.to_model_key(), host=host, api_key=key)}


# what a trace body calls from mechlab; NDIF has no mechlab, so these travel by value (their source, in the request)
REMOTE_MODULES = ("mechlab.core.activations", "mechlab.core.tokens", "mechlab.core.runs",
                  "mechlab.backends.nnsight_model", "mechlab.backends.nnsight_methods")


def _ship_mechlab() -> None:
    for name in REMOTE_MODULES:
        nnsight.register(name)


def describe_remote_call(model_id: str, method: str, batch: int, n_pos: int, saved: list[str],
                         *, n_traces: int = 1) -> str:
    """What a remote call would send and receive, as text (printed offline instead of sending it)."""
    lines = [f"would send to NDIF ({ndif_host()}): {n_traces} trace(s) of {method} on {model_id!r}",
             f"  inputs: token ids [{batch}, {n_pos}] and the intervention code (a few kB); no weights travel",
             "  returned (only what the trace saves):"]
    lines += [f"    - {item}" for item in saved]
    return "\n".join(lines)


__all__ = ["INSTALL_HINT", "NDIFUnavailableError", "NDIF_KEY_ENV", "REMOTE_MODULES", "Sites", "attention", "blocks",
           "describe_remote_call", "final_norm", "final_norm_affine", "language_model", "lm_device",
           "ndif_api_key", "ndif_host", "ndif_reachable", "nnsight_available", "o_proj_bias", "o_proj_weight",
           "organism_language_model", "out_projection", "remote_language_model", "require_nnsight", "sites",
           "sites_of_config", "token_embedding", "trace_kwargs", "twin_of_bridge", "unembedding"]
