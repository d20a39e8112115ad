"""Train the model organism: ``python -m mechlab.models.organism.train [--device cuda] [--steps N] [--out DIR]``.

A GPT-2-architecture model (HF ``GPT2LMHeadModel``, so it loads through ``TransformerBridge`` like GPT-2) trained
from scratch on the mixed corpus of :mod:`mechlab.data.corpus`. Seeded end to end: the tokenizer corpus, the
initial weights, dropout and every batch come from ``TrainConfig.seed``. DropHead (a whole head's output
dropped now and then, :func:`head_dropout`) makes the model spread each job over several heads and gives the
rest of the network a reason to make up for a missing one: that is where the organism's IOI self-repair
comes from (see the model card).

Writes to ``--out`` (default: the shipped checkpoint folder): ``config.json``, ``model.safetensors``, the
tokenizer files, and ``training.json`` (seed, config, wall-clock time, device, loss curve) for the model card.

Example (a 60-second smoke run into a scratch folder)::

    python -m mechlab.models.organism.train --steps 100 --out /tmp/organism-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from mechlab.core.cpu_math import warm_up_vector_math
from mechlab.data.corpus import Mix, pack_batch, text_documents
from mechlab.models.organism.tokenizer import CHECKPOINT_DIR, train_tokenizer


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (plus the device, which should not)."""

    seed: int = 0  # seeds the tokenizer corpus, the init, dropout and the batches
    steps: int = 12000  # optimizer steps
    batch: int = 16  # rows per step
    seq_len: int = 128  # tokens per row (also the model's context length)
    n_layer: int = 3  # transformer blocks
    n_embd: int = 128  # d_model
    n_head: int = 4  # heads per block (d_head = n_embd / n_head)
    attn_pdrop: float = 0.05  # attention-pattern dropout: pushes the model towards redundant heads
    resid_pdrop: float = 0.05  # dropout on each block's writes to the residual stream
    head_pdrop: float = 0.1  # drops a whole head's output (per row), so no job may rest on one head alone
    lr: float = 3e-3  # peak learning rate (AdamW)
    warmup: int = 100  # linear warm-up steps, then cosine decay to lr / 10
    weight_decay: float = 0.05  # AdamW weight decay
    vocab_size: int = 1024  # upper bound for the BPE vocabulary (min_frequency may keep it smaller)
    min_frequency: int = 200  # BPE merge threshold: rare words stay in pieces
    tokenizer_docs: int = 20000  # documents the tokenizer is trained on
    log_every: int = 100  # steps between loss records
    mix: Mix = field(default_factory=Mix)  # corpus weights


def build_model(cfg: TrainConfig, vocab_size: int, bos: int):
    """A freshly initialised GPT-2-architecture model with ``cfg``'s shape (seed the RNG first)."""

    config = GPT2Config(vocab_size=vocab_size, n_positions=cfg.seq_len, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, attn_pdrop=cfg.attn_pdrop, resid_pdrop=cfg.resid_pdrop, embd_pdrop=0.0,
                        bos_token_id=bos, eos_token_id=bos, pad_token_id=bos)
    return GPT2LMHeadModel(config)


@contextmanager
def head_dropout(model, p: float):
    """Within the scope, training-mode forwards zero each head's output with probability ``p`` per row and head
    (scaling the kept ones by 1 / (1 - p)), before the output projection: DropHead (Zhou et al., 2020).
    A head that is sometimes missing makes the rest of the network learn to do its job too."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"head_pdrop={p}: expected a probability in [0, 1).")
    n_head = model.config.n_head

    def drop(module, args):
        (x,) = args  # [batch, pos, n_head * d_head]: the heads' outputs, concatenated
        if not module.training or p == 0.0:
            return None
        b, _, width = x.shape
        keep = torch.rand(b, 1, n_head, 1, device=x.device) >= p
        x = x.view(b, -1, n_head, width // n_head) * keep / (1.0 - p)
        return (x.view(b, -1, width),)

    handles = [block.attn.c_proj.register_forward_pre_hook(drop) for block in model.transformer.h]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train(cfg: TrainConfig, out: Path | str = CHECKPOINT_DIR, *, device: str = "cpu", progress: bool = True,
          max_seconds: float | None = None) -> dict:
    """Train, save the checkpoint in ``out`` and return the training record (also written to training.json).

    ``max_seconds`` stops early (for smoke tests); the record says how many steps actually ran.
    """

    if cfg.steps < 1 or cfg.batch < 1:
        raise ValueError(f"steps={cfg.steps}, batch={cfg.batch}: expected positive numbers.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    warm_up_vector_math()  # MKL's first-call race would make a multi-threaded run's first steps irreproducible
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tok = train_tokenizer(text_documents(cfg.tokenizer_docs, seed=cfg.seed, mix=cfg.mix),
                          vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency)
    model = build_model(cfg, len(tok), tok.bos_token_id).to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed + 1)
    losses: list[tuple[int, float]] = []
    running, steps_done = None, 0
    model.train()
    bar = tqdm(range(cfg.steps), desc="training the organism", disable=not progress)
    with head_dropout(model, cfg.head_pdrop):
        for step in bar:
            tokens = pack_batch(tok, cfg.mix, batch=cfg.batch, seq_len=cfg.seq_len, rng=rng).to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            loss = model(input_ids=tokens, labels=tokens).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            value = float(loss.detach())
            running = value if running is None else 0.95 * running + 0.05 * value
            steps_done = step + 1
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                losses.append((step, round(value, 4)))
                bar.set_postfix(loss=f"{running:.3f}")
            if max_seconds is not None and time.time() - start > max_seconds:
                losses.append((step, round(value, 4)))
                break
    model.eval()
    model.to("cpu")
    model.config.attn_pdrop = cfg.attn_pdrop  # kept in the config as a record; eval() switches dropout off
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    record = {"seed": cfg.seed, "config": asdict(cfg), "steps_done": steps_done, "device": device,
              "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
              "seconds": round(time.time() - start, 1), "losses": losses,
              "n_params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok)}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train mechlab's model organism.")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--out", default=str(CHECKPOINT_DIR), help="output folder (default: the shipped one)")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop early after this many seconds")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu.")
    record = train(TrainConfig(seed=args.seed, steps=args.steps), args.out, device=args.device,
                   max_seconds=args.max_seconds)
    print(f"trained {record['steps_done']} steps in {record['seconds']} s; final loss {record['losses'][-1][1]}; "
          f"saved to {args.out}")


if __name__ == "__main__":
    main()
