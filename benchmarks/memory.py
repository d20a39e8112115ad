"""Peak memory of AtP at Gemma-2b shapes in bfloat16 when the full 18-layer model is too slow to run: Gemma-2b's
shapes (d_model 2048, 8 query heads + 1 K/V head of 256, MLP 16384, vocabulary 256000) with only a few layers,
each size in a fresh process (the process's peak RSS only grows), then a straight line through the peaks
extrapolated to 18 layers.

What is measured: ``mechlab.methods.attribution.attribution_patching`` on resid_pre, mlp_out, z, q, k, v (unit 07's
kinds) of one ``n_tokens`` clean / corrupted pair, random-init weights built directly in bf16. On CUDA the peak is
``torch.cuda.max_memory_allocated``; on the CPU it is the process's peak RSS, which also counts the Python and torch
libraries and the allocator's slack (an over-estimate of what the tensors need). Linear in layers: parameters,
cached activations and saved-for-backward tensors grow by one layer's worth per layer; the embedding, the logits and
the libraries are the intercept.

    python -m benchmarks.memory                       # 1 and 2 layers, 1100 tokens, on the default device
    python -m benchmarks.memory --layers 2 4 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

GEMMA_2B_LAYERS = 18
GIB = 2**30


def _gemma_2b_shaped(n_layers: int, device: str, dtype):
    """Gemma-2b's public config with ``n_layers`` layers, random init in ``dtype``, as a TransformerBridge."""
    import torch
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer, GemmaConfig

    from mechlab.core.loading import fallback_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(str(fallback_tokenizer_dir()))
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    config = GemmaConfig(vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=n_layers,
                         num_attention_heads=8, num_key_value_heads=1, head_dim=256, max_position_embeddings=8192,
                         bos_token_id=bos, eos_token_id=bos, pad_token_id=bos, hidden_act="gelu_pytorch_tanh",
                         hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0)
    folder = tempfile.mkdtemp(prefix="mechlab-gemma2b-shape-")
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", torch_dtype=dtype)
    hf_model = hf_model.to(device=device).eval()
    return TransformerBridge.boot_transformers(folder, hf_model=hf_model, tokenizer=tokenizer, device=device,
                                               dtype=dtype)


def child(n_layers: int, n_tokens: int, device: str) -> dict:
    """One measurement in this process: load, then AtP (``benchmarks.cot.atp_memory``)."""
    import resource

    import torch

    from benchmarks.cot import atp_memory

    start = time.perf_counter()
    model = _gemma_2b_shaped(n_layers, device, torch.bfloat16)
    if device.startswith("cuda"):
        loaded = torch.cuda.max_memory_allocated() / GIB
    else:  # ru_maxrss: KiB on Linux, bytes on macOS
        loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024) / GIB
    row = atp_memory(model, n_tokens)
    row.update(n_layers=n_layers, load_s=time.perf_counter() - start - row["atp_s"], peak_after_load_gib=loaded)
    return row


def measure(layers=(1, 2), n_tokens: int = 1100, device: str | None = None) -> dict:
    """Each layer count in a fresh process; the straight line through the peaks, extrapolated to 18 layers."""
    from mechlab.core.loading import default_device

    device = device or default_device()
    rows = []
    for n in layers:
        out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", str(n), "--tokens", str(n_tokens),
                              "--device", device], capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            raise RuntimeError(f"the {n}-layer measurement failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (n0, p0), (n1, p1) = ((r["n_layers"], r["atp_peak_gib"]) for r in (rows[0], rows[-1]))
    per_layer = (p1 - p0) / (n1 - n0)
    return {"rows": rows, "per_layer_gib": per_layer, "device": device, "tokens": n_tokens,
            "extrapolated_gib": p0 + per_layer * (GEMMA_2B_LAYERS - n0), "memory": rows[0]["atp_memory"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=1100)
    parser.add_argument("--device", default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.tokens, args.device)))
        return
    if len(args.layers) < 2:
        parser.error("--layers needs at least two layer counts to draw a line through")
    r = measure(tuple(args.layers), args.tokens, args.device)
    for row in r["rows"]:
        print(f"Gemma-2b shapes, {row['n_layers']} layer(s), {r['tokens']} tokens, bf16 AtP on resid_pre/mlp_out/z/q/"
              f"k/v: peak {row['atp_peak_gib']:.2f} GiB ({row['atp_memory']}; {row['peak_after_load_gib']:.2f} GiB "
              f"after loading), AtP {row['atp_s']:.1f} s")
    print(f"per layer {r['per_layer_gib']:.3f} GiB -> {GEMMA_2B_LAYERS} layers: {r['extrapolated_gib']:.2f} GiB "
          "(linear extrapolation; goal < 15 GiB)")


if __name__ == "__main__":
    main()
