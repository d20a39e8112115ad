"""Stand-in models: random weights served offline under real hub names, so the GPT-2 / Gemma code paths run in CI.

A notebook asks for ``course_model("gpt2")`` and takes its GPT-2 branch only when the model it got is called
``gpt2``. Without the hub those branches never run. This module writes a local Hugging Face hub cache holding

    ``gpt2``             GPT-2 small's exact config (12 layers, 12 heads, d_model 768, 1024 positions, vocab 50257),
                         random-init weights, and GPT-2's real tokenizer (rebuilt from PyPI, see
                         :mod:`mechlab.core.gpt2_tokenizer`);
    ``google/gemma-2b``  a *small* Gemma-shaped model (RMSNorm, rotary, multi-query: 4 layers, 8 query heads and
                         1 K/V head, d_model 256), random-init. Gemma's own 256k-token vocabulary is not
                         available offline, so it uses GPT-2's tokenizer (50257 tokens); its ids are not Gemma's.

Each saved ``config.json`` carries ``"mechlab_standin": true``. :func:`mechlab.core.loading.load_model` reads that
key and sets ``ModelInfo.standin``, so the printed line says ``STAND-IN`` and
:func:`mechlab.checks.core.expect_learned` skips (by name) the asserts about learned behaviour, which random
weights cannot pass. A stand-in is never mistaken for the real model.

Build the cache and point the hub library at it (no network but PyPI, for the tokenizer, the first time)::

    python -m mechlab.models.standins build --out build/standin-hf
    export HF_HUB_CACHE=$PWD/build/standin-hf/hub HF_HUB_OFFLINE=1
    unset MECHLAB_MODEL          # or MECHLAB_MODEL=google/gemma-2b for a Gemma notebook
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, PretrainedConfig

from mechlab.core.cpu_math import warm_up_vector_math
from mechlab.core.gpt2_tokenizer import EOT_ID, gpt2_tokenizer
from mechlab.core.loading import STANDIN_KEY, quiet_transformers

VERSION = "v1"  # part of the fake commit hash: bump when a stand-in's config or weights change


@dataclass(frozen=True)
class StandIn:
    """One stand-in model: the hub name it is served under, its config and its seed."""

    name: str  # hub id, e.g. "gpt2"
    seed: int  # torch seed of the random init
    note: str  # what it is, written into config.json next to the marker


STANDINS = (
    StandIn("gpt2", seed=0, note="mechlab stand-in: GPT-2 small's config and real tokenizer, RANDOM weights"),
    StandIn("google/gemma-2b", seed=1,
            note="mechlab stand-in: a small Gemma-shaped model (RMSNorm, rotary, MQA), RANDOM weights, GPT-2's "
                 "tokenizer (Gemma's vocabulary is not available offline)"),
)
STANDIN_NAMES = tuple(s.name for s in STANDINS)


def standin_config(name: str) -> PretrainedConfig:
    """The Hugging Face config of the stand-in served as ``name`` (marked with ``mechlab_standin``)."""
    if name == "gpt2":  # GPT-2 small's published config.json, field for field
        config = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                            activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                            layer_norm_epsilon=1e-5, initializer_range=0.02, bos_token_id=EOT_ID,
                            eos_token_id=EOT_ID, architectures=["GPT2LMHeadModel"])
    elif name == "google/gemma-2b":  # Gemma-2b's family traits at a CPU size; vocabulary: GPT-2's tokenizer
        config = GemmaConfig(vocab_size=50257, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
                             hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                             rope_theta=10000.0, bos_token_id=EOT_ID, eos_token_id=EOT_ID, pad_token_id=EOT_ID,
                             architectures=["GemmaForCausalLM"])
    else:
        raise ValueError(f"no stand-in is defined for {name!r}; expected one of {STANDIN_NAMES}.")
    spec = next(s for s in STANDINS if s.name == name)
    setattr(config, STANDIN_KEY, True)
    config.mechlab_standin_note = spec.note
    return config


def commit_hash(name: str) -> str:
    """A fixed 40-hex "commit" for the snapshot folder (the hub cache layout wants one)."""
    return hashlib.sha1(f"mechlab-standin-{name}-{VERSION}".encode()).hexdigest()


def snapshot_dir(hub_cache: Path, name: str) -> Path:
    """``<hub_cache>/models--org--name/snapshots/<commit>``: where the hub library looks for ``name``'s files."""
    return Path(hub_cache) / ("models--" + name.replace("/", "--")) / "snapshots" / commit_hash(name)


def build_standin(name: str, hub_cache: Path, *, force: bool = False) -> Path:
    """Write the stand-in ``name`` (config, random weights, tokenizer) into ``hub_cache``; its snapshot folder.

    Skipped when the snapshot is already complete (same version), unless ``force``.
    """
    snap = snapshot_dir(hub_cache, name)
    done = snap / "config.json"
    if done.is_file() and not force and json.loads(done.read_text()).get(STANDIN_KEY):
        return snap
    spec = next(s for s in STANDINS if s.name == name)
    config = standin_config(name)
    warm_up_vector_math()  # MKL's first-call race (mechlab.core.cpu_math): the same weights on every build
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    snap.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        model.save_pretrained(snap)
    gpt2_tokenizer().save_pretrained(snap)
    (snap / "MECHLAB_STANDIN.txt").write_text(spec.note + "\n")
    refs = snap.parents[1] / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(commit_hash(name))
    return snap


def build_standins(out: Path, names: tuple[str, ...] = STANDIN_NAMES, *, force: bool = False) -> Path:
    """Build the stand-ins ``names`` under ``out/hub`` (point ``HF_HUB_CACHE`` there); returns that folder."""
    unknown = [n for n in names if n not in STANDIN_NAMES]
    if unknown:
        raise ValueError(f"unknown stand-in(s) {unknown}; expected names from {STANDIN_NAMES}.")
    hub = Path(out).resolve() / "hub"
    for name in names:
        start = time.perf_counter()
        snap = build_standin(name, hub, force=force)
        print(f"mechlab: stand-in {name!r} (random weights) in {snap} [{time.perf_counter() - start:.1f} s]")
    return hub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build offline stand-ins (random weights) for gpt2 / google/gemma-2b.")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="write the stand-ins into a local Hugging Face hub cache")
    cmd.add_argument("--out", type=Path, default=Path("build/standin-hf"))
    cmd.add_argument("--only", nargs="+", choices=STANDIN_NAMES, default=list(STANDIN_NAMES))
    cmd.add_argument("--force", action="store_true", help="rebuild even when the snapshot exists")
    args = parser.parse_args(argv)
    hub = build_standins(args.out, tuple(args.only), force=args.force)
    print(f"mechlab: use them with: export HF_HUB_CACHE={hub} HF_HUB_OFFLINE=1; unset MECHLAB_MODEL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
