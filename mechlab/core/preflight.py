"""Before loading Gemma: is there a token, was the licence accepted, does the GPU hold it, in which dtype?

``preflight`` answers all four, picks what to load (the model, its device and dtype, or the offline organism
when Gemma cannot run here) and prints the choice with its reasons. It never raises for a missing token, a
licence or a small GPU: it falls back and says why, so a notebook always runs.

Example::

    from mechlab.core.preflight import preflight
    from mechlab.core.loading import load_model
    plan = preflight("google/gemma-2b")     # prints e.g. "mechlab preflight: google/gemma-2b on cuda in bfloat16"
    model = load_model(plan.model, device=plan.device, dtype=plan.dtype)
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass

import torch
from huggingface_hub import auth_check, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from mechlab.core import loading

GEMMA = "google/gemma-2b"
# parameters, counting the (tied) embedding once: what the weights take in memory
KNOWN_PARAMS = {"google/gemma-2b": 2.51e9, "google/gemma-2b-it": 2.51e9, "google/gemma-2-2b": 2.61e9,
                "google/gemma-2-2b-it": 2.61e9, "gpt2": 124e6, "gpt2-medium": 355e6}
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2}
# VRAM over the weights' size that a unit needs for activations and gradients (AtP/IG on ~1100-token prompts:
# the seed's fp32 loop peaked at ~25 GiB for Gemma-2b, whose fp32 weights are ~9.4 GiB)
HEADROOM = {"float32": 2.5, "bfloat16": 1.5}
TOKEN_URL = "https://huggingface.co/settings/tokens"
DTYPE_ENV = "MECHLAB_DTYPE"  # forces the planned dtype (CI runs the Gemma stand-in in both float32 and bfloat16)
GIB = 2**30


@dataclass(frozen=True)
class GpuInfo:
    """The first CUDA device."""

    name: str  # e.g. "Tesla T4"
    total_gib: float  # its memory
    native_bf16: bool  # compute capability >= 8 (A100, L4, H100); a T4 (7.5) emulates bf16, more slowly


def gpu_info() -> GpuInfo | None:
    """The first CUDA GPU's name, memory and bf16 support; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return GpuInfo(name=props.name, total_gib=props.total_memory / GIB, native_bf16=props.major >= 8)


def needed_gib(n_params: float, dtype: str) -> float:
    """VRAM the course's analyses need for a model of ``n_params`` in ``dtype`` (weights x headroom)."""
    return n_params * BYTES_PER_PARAM[dtype] * HEADROOM[dtype] / GIB


def advise_dtype(n_params: float, gpu: GpuInfo) -> tuple[str | None, str]:
    """float32 when it fits with room for gradients, else bfloat16, else None; with the reason.

    float16 is never advised: Gemma's activations overflow it.
    """
    weights = n_params * BYTES_PER_PARAM["float32"] / GIB
    if gpu.total_gib >= needed_gib(n_params, "float32"):
        return "float32", (f"{gpu.name} has {gpu.total_gib:.0f} GiB: float32 fits ({weights:.1f} GiB of weights, "
                           f"~{needed_gib(n_params, 'float32'):.0f} GiB with activations and gradients)")
    if gpu.total_gib >= needed_gib(n_params, "bfloat16"):
        slow = "" if gpu.native_bf16 else f" ({gpu.name} has no native bf16 units: correct, but slower than an A100/L4)"
        return "bfloat16", (f"{gpu.name} has {gpu.total_gib:.0f} GiB: float32 would need "
                            f"~{needed_gib(n_params, 'float32'):.0f} GiB ({weights:.1f} GiB of weights alone), so "
                            f"bfloat16 (~{needed_gib(n_params, 'bfloat16'):.0f} GiB){slow}; not float16, which "
                            "overflows in Gemma")
    return None, (f"{gpu.name} has {gpu.total_gib:.1f} GiB, but even bfloat16 needs "
                  f"~{needed_gib(n_params, 'bfloat16'):.1f} GiB")


def check_access(name: str, token: str) -> tuple[bool, str]:
    """Ask the hub (authenticated) whether ``token`` may download ``name``: (ok, what the hub said)."""

    try:
        auth_check(name, token=token)
    except GatedRepoError:
        return False, (f"the licence of {name} is not accepted for this token's account: open "
                       f"https://huggingface.co/{name}, log in with that account, accept the licence (access is "
                       "usually granted at once), then rerun this cell")
    except RepositoryNotFoundError:
        return False, (f"the hub knows no model {name!r} that this token can see: check the name, and that the "
                       f"token ({TOKEN_URL}) is valid")
    except (HfHubHTTPError, OSError) as err:
        return False, f"the hub could not be asked about {name} ({type(err).__name__}: {str(err).splitlines()[0]})"
    return True, f"the hub grants this token access to {name} (licence accepted)"


def standin_params(name: str) -> float:
    """Parameters of a cached stand-in of ``name``, counted from its safetensors header (no weights loaded)."""
    path = try_to_load_from_cache(name, "model.safetensors")
    if not isinstance(path, str):
        raise ValueError(f"{name!r} is marked as a stand-in but its cache holds no model.safetensors; rebuild it with "
                         "`python -m mechlab.models.standins build`.")
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return float(sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__"))


@dataclass(frozen=True)
class Plan:
    """What to load, and why."""

    requested: str  # the model the notebook wanted
    model: str  # what to load: ``requested``, or the offline model when it cannot run here
    device: str
    dtype: str
    fallback: bool  # True when ``model`` replaces ``requested``
    reasons: tuple[str, ...]  # one line per check, in order

    def __str__(self) -> str:
        head = f"mechlab preflight: {self.model} on {self.device} in {self.dtype}"
        if self.fallback:
            head += f" (instead of {self.requested})"
        return "\n".join([head] + [f"  - {r}" for r in self.reasons])


def _token_source() -> str:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "the HF_TOKEN environment variable"
    return "Colab secrets or the local `huggingface-cli login`"


def _no_token_message(name: str) -> str:
    return (f"no Hugging Face token found (looked in HF_TOKEN, Colab secrets, the local login). {name} is gated: "
            f"accept its licence at https://huggingface.co/{name}, create a read token at {TOKEN_URL}, then set "
            "it as HF_TOKEN (in Colab: the key icon on the left, a secret named HF_TOKEN with notebook access on)")


def preflight(name: str = GEMMA, *, n_params: float | None = None, token: str | None = None,
              verbose: bool = True) -> Plan:
    """Check the token, the licence and the hardware for ``name``; return (and print) what to load.

    Falls back to the offline model (the organism when shipped) when the hub cannot be reached and no local
    copy exists, when a gated model has no token or no accepted licence, or when the GPU (or its absence)
    cannot run the model. ``n_params`` is needed for models outside ``KNOWN_PARAMS``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}: expected a hub name such as {GEMMA!r}.")
    n_params = n_params if n_params is not None else KNOWN_PARAMS.get(name)
    standin = loading.standin_marked(name)
    if standin:  # random weights under the real name, much smaller than the real model: its own size counts
        n_params = standin_params(name)
    if n_params is None or n_params <= 0:
        raise ValueError(f"the size of {name!r} is not known (known: {sorted(KNOWN_PARAMS)}); pass n_params, its "
                         "parameter count, e.g. n_params=2.5e9.")
    reasons: list[str] = []
    usable = True

    # 1. can the weights be had?
    token = token or loading.hf_token()
    gated = name.startswith(loading.GATED_PREFIXES)
    if standin:
        reasons.append(f"{name} in the local cache is a mechlab stand-in (random weights, {n_params / 1e6:.0f}M "
                       "parameters): the code path runs, learned behaviour is absent")
    elif loading.in_local_hf_cache(name):
        reasons.append(f"{name} is in the local Hugging Face cache: no download needed")
    elif not loading.hub_reachable():
        usable = False
        reasons.append(f"the hub is unreachable (offline, or HF_HUB_OFFLINE is set) and {name} is not in the local "
                       "cache")
    elif gated and not token:
        usable = False
        reasons.append(_no_token_message(name))
    elif gated:
        reasons.append(f"found a Hugging Face token in {_token_source()}")
        ok, said = check_access(name, token)
        usable &= ok
        reasons.append(said)

    # 2. can this machine run it, in which dtype?
    gpu = gpu_info()
    dtype, device = "float32", "cpu"
    if gpu is not None:
        advised, why = advise_dtype(n_params, gpu)
        reasons.append(why)
        if advised is None:
            usable = False
        else:
            dtype, device = advised, "cuda"
    elif n_params > 1e9:
        usable = False
        reasons.append(f"no CUDA GPU: {name} ({n_params / 1e9:.1f}B parameters) on the CPU takes minutes per prompt; "
                       "in Colab pick a GPU runtime (Runtime > Change runtime type > T4 GPU)")
    else:
        reasons.append(f"no CUDA GPU: {name} is small enough ({n_params / 1e6:.0f}M parameters) for the CPU")

    forced = os.environ.get(DTYPE_ENV, "")
    if forced:
        if forced not in BYTES_PER_PARAM:
            raise ValueError(f"{DTYPE_ENV}={forced!r}; expected one of {sorted(BYTES_PER_PARAM)} (or unset, to let "
                             "preflight advise).")
        if usable and forced != dtype:
            reasons.append(f"{DTYPE_ENV}={forced}: {forced} instead of the advised {dtype}")
            dtype = forced

    if usable:
        plan = Plan(requested=name, model=name, device=device, dtype=dtype, fallback=False, reasons=tuple(reasons))
    else:
        offline = loading.resolve_model_name("offline")
        reasons.append(f"falling back to {offline!r}, which runs offline on any machine; the lesson's code is the "
                       "same, its numbers are the small model's")
        plan = Plan(requested=name, model=offline, device=loading.default_device(), dtype="float32", fallback=True,
                    reasons=tuple(reasons))
    if verbose:
        print(plan)
    return plan
