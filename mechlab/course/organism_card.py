"""Measure the organism's targets on held-out prompts: ``python -m mechlab.course.organism_card [--model DIR]``.

- IOI: accuracy (IO logit > S logit) and mean logit difference, on prompts from seeds never used in training;
- induction: mean loss on the first and on the second copy of repeated random token sequences;
- PrOntoQA (compact, 1-2 hops): answer and exact-CoT accuracy of greedy generation, graded by
  :func:`mechlab.data.prontoqa.grade`;
- IOI heads: each head's direct effect on the logit difference (clean minus ABC-corrupted head output,
  through the clean final LayerNorm scale), the top name-mover head, and self-repair: resample-ablating that
  head lowers the logit difference by less than its direct effect; the heads whose direct effect grows to
  compensate are the backup heads;
- head types: previous-token, duplicate-token and induction scores from :mod:`mechlab.methods.heads`.

Writes ``evaluation.json`` (read by the model card's tests) next to the checkpoint and ``mechlab/models/organism/
heads.json`` (read by ``mechlab.methods.heads.known_heads("organism")``).

Example::

    from mechlab.core.loading import load_model
    from mechlab.course.organism_card import ioi_metrics
    model = load_model("organism")
    ioi_metrics(model, n=100)      # {'accuracy': ..., 'logit_diff': ...}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.core.activations import head_labels, hook_name, names_filter
from mechlab.core.loading import load_model
from mechlab.core.results import Labelled
from mechlab.core.tokens import logit_diff
from mechlab.data import induction, ioi, prontoqa
from mechlab.methods.generate import generate
from mechlab.methods.heads import head_scores
from mechlab.models.organism import ORGANISM_DIR

HELD_OUT_SEED = 10_000_019  # training draws 32-bit seeds from its own RNG; this stream is separate
TARGETS = {"ioi_accuracy": 0.98, "ioi_logit_diff": 4.0, "induction_second_half_loss": 0.3,
           "induction_first_half_loss_min": 3.0, "prontoqa_answer_acc": 0.90, "prontoqa_cot_acc": 0.90}


def _final_logits(model, batch: ioi.IOIBatch) -> Float[Tensor, "batch d_vocab"]:
    with torch.no_grad():
        logits = model(batch.tokens.to(model.cfg.device))
    return logits[torch.arange(len(batch)), batch.end.to(logits.device)]


def ioi_metrics(model, n: int = 200, *, seed: int = HELD_OUT_SEED) -> dict[str, float]:
    """IOI accuracy and mean logit difference (IO minus S) at the last prompt token, on ``n`` held-out prompts."""
    batch = ioi.ioi_batch(model, ioi.make_ioi(n, seed=seed))
    ld = logit_diff(_final_logits(model, batch), batch.answer, batch.wrong)
    return {"accuracy": float((ld > 0).float().mean()), "logit_diff": float(ld.mean()), "n": n}


def induction_metrics(model, n: int = 50, half_len: int = 20, *, seed: int = HELD_OUT_SEED) -> dict[str, float]:
    """Mean next-token loss (nats) on the first and on the second copy of repeated random sequences."""
    batch = induction.repeated_tokens(n, half_len, induction.ordinary_token_ids(model.tokenizer), seed=seed,
                                      bos_id=model.tokenizer.bos_token_id)
    tokens = batch.tokens.to(model.cfg.device)
    with torch.no_grad():
        logp = model(tokens).float().log_softmax(-1)[:, :-1]
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    return {"first_half_loss": float(nll[:, batch.first_half].mean()),
            "second_half_loss": float(nll[:, batch.second_half].mean()), "n": n, "half_len": half_len}


def prontoqa_metrics(model, n: int = 100, *, hops=(1, 2), n_distractors: int = 3, seed: int = HELD_OUT_SEED,
                     batch: int = 50) -> dict:
    """Greedy-generation answer accuracy and exact-CoT accuracy on ``n`` held-out compact problems, overall
    and per number of hops (``by_hops``). Generation is :func:`mechlab.methods.generate.generate` (KV cache, left
    padding), stopped at the answer."""

    problems = prontoqa.make_problems(n, hops=hops, seed=seed, n_distractors=n_distractors, style="compact")
    prompts = [prontoqa.render(p, "compact", with_proof=False) for p in problems]
    preds = generate(model, prompts, max_new_tokens=64, stop=["Answer: True", "Answer: False"], batch_size=batch,
                     prepend_bos=True, progress=False).texts
    out: dict = prontoqa.grade_many(preds, problems)
    out["by_hops"] = {}
    for h in sorted({p.hops for p in problems}):
        idx = [i for i, p in enumerate(problems) if p.hops == h]
        out["by_hops"][str(h)] = prontoqa.grade_many([preds[i] for i in idx], [problems[i] for i in idx])
    out["example"] = preds[0]
    return out


def _z_and_scale(model, tokens: Tensor, fwd_hooks=()) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """z of every layer [layer, batch, pos, head, d_head], the final-norm scale, the logits and every MLP's
    output [layer, batch, pos, d_model] (with ``fwd_hooks`` active)."""
    layers = range(model.cfg.n_layers)
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits, cache = model.run_with_cache(tokens, names_filter=names_filter(model, ["z", "mlp_out"],
                                                                                extra=["ln_final.hook_scale"]))
    return (torch.stack([cache[hook_name("z", la)] for la in layers]), cache["ln_final.hook_scale"], logits,
            torch.stack([cache[hook_name("mlp_out", la)] for la in layers]))


def _through_final_norm(model, out: Tensor, scale: Tensor, batch: ioi.IOIBatch) -> Tensor:
    """Component outputs at the end position ``out`` [..., batch, d_model] -> their logit difference [..., batch],
    through the final LayerNorm with the given scale (centre, divide, times its weight)."""
    rows, end = torch.arange(len(batch)), batch.end.to(out.device)
    out = out - out.mean(-1, keepdim=True)
    out = out / scale[rows, end] * model.original_model.transformer.ln_f.weight
    direction = model.W_U[:, batch.answer.to(out.device)] - model.W_U[:, batch.wrong.to(out.device)]  # [d_model, b]
    return torch.einsum("...bm,mb->...b", out, direction)


@torch.no_grad()
def _head_direct_effects(model, z: Tensor, scale: Tensor, batch: ioi.IOIBatch) -> Float[Tensor, "layer head batch"]:
    """Each head's output at the end position, through the final LayerNorm (centre, divide by ``scale``,
    times its weight) onto W_U[io] - W_U[s]."""
    z_end = z[:, torch.arange(len(batch)), batch.end.to(z.device)]  # [layer, batch, head, d_head]
    return _through_final_norm(model, torch.einsum("lbhd,lhdm->lhbm", z_end, model.W_O), scale, batch)


@torch.no_grad()
def ioi_circuit(model, n: int = 100, *, seed: int = HELD_OUT_SEED + 1) -> dict:
    """Direct effects of every head on IOI, the top name mover, and self-repair when it is resample-ablated.

    Direct effect of a head = its DLA on clean prompts minus its DLA with its ABC-corrupted output, both
    through the clean run's final-norm scale. Resample ablation replaces the head's z at every position with
    its z on the ABC-corrupted prompt (same template, S2 replaced by a third name). The compensation (direct
    effect minus the drop of the logit difference) is split into what the final LayerNorm's scale gives back
    (``compensation_layernorm``: the ablation rerun with the scale frozen at its clean value) and what the
    other components' direct effects give back (``compensation_components``).
    """
    clean_s = ioi.make_ioi(n, seed=seed)
    clean, corr = ioi.ioi_batch(model, clean_s), ioi.ioi_batch(model, ioi.corrupt(clean_s, "abc", seed=seed))
    dev = model.cfg.device
    z_c, scale_c, logits_c, mlp_c = _z_and_scale(model, clean.tokens.to(dev))
    z_r, _, _, _ = _z_and_scale(model, corr.tokens.to(dev))
    rows = torch.arange(n)
    de = (_head_direct_effects(model, z_c, scale_c, clean) - _head_direct_effects(model, z_r, scale_c, clean))
    de_mean = de.mean(-1)  # [layer, head]
    labels = head_labels(model.cfg.n_layers, model.cfg.n_heads)
    direct = Labelled(de_mean.reshape(-1).cpu(), labels, unit="logit diff", axes=("head",),
                      meta={"what": "direct effect, clean minus ABC-resampled head output"})
    top = direct.top(1, by_abs=False)[0][0]
    layer, head = int(top[1:].split("H")[0]), int(top.split("H")[1])

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = z_r[layer][:, :, head]
        return z

    ld_clean = logit_diff(logits_c[rows, clean.end.to(dev)], clean.answer, clean.wrong)
    z_a, scale_a, logits_a, mlp_a = _z_and_scale(model, clean.tokens.to(dev), [(hook_name("z", layer), ablate)])
    ld_abl = logit_diff(logits_a[rows, clean.end.to(dev)], clean.answer, clean.wrong)
    # how each head's and each MLP's DLA changed when the top head was ablated (same clean scale, so only
    # their outputs differ): the components that step in
    delta = (_head_direct_effects(model, z_a, scale_c, clean) - _head_direct_effects(model, z_c, scale_c, clean))
    delta = delta.mean(-1)
    delta[layer, head] = 0.0
    end = clean.end.to(dev)
    mlp_delta = (_through_final_norm(model, mlp_a[:, rows, end], scale_c, clean)
                 - _through_final_norm(model, mlp_c[:, rows, end], scale_c, clean)).mean(-1)  # [layer]
    compensation = Labelled(torch.cat([delta.reshape(-1), mlp_delta]).cpu(),
                            labels + [f"L{la} mlp" for la in range(model.cfg.n_layers)], unit="logit diff",
                            axes=("component",), meta={"what": f"change of DLA when {top} is resample-ablated"})
    total_drop = float((ld_clean - ld_abl).mean())
    # How much of the compensation is the final LayerNorm: rerun the ablation with the final norm's scale held
    # at its clean value. Ablating a head changes the residual's norm, so every other component is divided by
    # a different scale; with the scale frozen only their own changes are left.
    with model.hooks(fwd_hooks=[(hook_name("z", layer), ablate),
                                ("ln_final.hook_scale", lambda s, hook: scale_c.to(s.dtype))]):
        logits_f = model(clean.tokens.to(dev))
    ld_frozen = logit_diff(logits_f[rows, clean.end.to(dev)], clean.answer, clean.wrong)
    ln_part = float((ld_abl - ld_frozen).mean())
    top_de = float(de_mean[layer, head])
    # attention from the end position to the IO and to S2 (name movers attend to the IO)
    with torch.no_grad():
        _, cache_p = model.run_with_cache(clean.tokens.to(dev), names_filter=names_filter(model, ["pattern"]))
    att_io = torch.stack([cache_p[hook_name("pattern", la)][rows, :, clean.end, clean.io_pos]
                          for la in range(model.cfg.n_layers)]).mean(1)  # [layer, head]
    return {"n": n, "direct_effect": direct.to_dict(), "top_name_mover": top,
            "top_direct_effect": top_de, "clean_logit_diff": float(ld_clean.mean()),
            "ablated_logit_diff": float(ld_abl.mean()), "total_effect": total_drop,
            "compensation": top_de - total_drop, "compensation_fraction": (top_de - total_drop) / top_de,
            "compensation_layernorm": ln_part, "compensation_components": top_de - total_drop - ln_part,
            "end_scale_ratio": float((scale_a[rows, end, 0] / scale_c[rows, end, 0]).mean()),
            "backup_heads": [lab for lab, v in compensation.top(3, by_abs=False)
                             if v > 0.1 * top_de and not lab.endswith("mlp")],
            "stepped_in": [lab for lab, v in compensation.top(3, by_abs=False) if v > 0.1 * top_de],
            "dla_change_when_ablated": compensation.to_dict(),
            "end_to_io_attention": {lab: float(v) for lab, v in zip(labels, att_io.reshape(-1).tolist(),
                                                                       strict=True)}}


def head_types(model, *, threshold: float = 0.4, seq_len: int = 30, batch: int = 8) -> dict:
    """Previous-token, duplicate-token and induction scores of every head (``mechlab.methods.heads``) on repeated
    random tokens, and the heads at or above ``threshold``."""

    scores = head_scores(model, seq_len=seq_len, batch=batch, seed=0)
    return {"scores": {k: scores[k].to_dict() for k in ("previous_token", "duplicate_token", "induction")},
            "detected": scores.detected(threshold=threshold), "threshold": threshold, "seq_len": seq_len,
            "batch": batch}


def evaluate(model, *, fast: bool = False) -> dict:
    """All targets and circuit measurements; ``fast`` uses smaller held-out sets (for tests)."""
    k = 4 if fast else 1
    start = time.time()
    out = {"ioi": ioi_metrics(model, n=200 // k), "induction": induction_metrics(model, n=48 // k),
           "prontoqa": prontoqa_metrics(model, n=100 // k), "ioi_circuit": ioi_circuit(model, n=100 // k),
           "head_types": head_types(model), "targets": TARGETS}
    out["targets_met"] = {
        "ioi_accuracy": out["ioi"]["accuracy"] >= TARGETS["ioi_accuracy"],
        "ioi_logit_diff": out["ioi"]["logit_diff"] >= TARGETS["ioi_logit_diff"],
        "induction": (out["induction"]["second_half_loss"] <= TARGETS["induction_second_half_loss"]
                      and out["induction"]["first_half_loss"] >= TARGETS["induction_first_half_loss_min"]),
        "prontoqa_answer": out["prontoqa"]["answer_acc"] >= TARGETS["prontoqa_answer_acc"],
        "prontoqa_cot": out["prontoqa"]["cot_acc"] >= TARGETS["prontoqa_cot_acc"],
        "self_repair": (out["ioi_circuit"]["top_direct_effect"] > 1.0
                        and out["ioi_circuit"]["total_effect"] < 0.8 * out["ioi_circuit"]["top_direct_effect"]),
    }
    out["seconds"] = round(time.time() - start, 1)
    return out


CARD_START, CARD_END = "<!-- measured:start -->", "<!-- measured:end -->"


def card_section(result: dict, record: dict) -> str:
    """The model card's measured section, written from ``evaluation.json`` and ``training.json``."""
    c, h = result["ioi_circuit"], result["head_types"]
    met = result["targets_met"]
    cfg = record["config"]

    def tick(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        CARD_START,
        "| target | measured | goal | |",
        "|---|---|---|---|",
        f"| IOI accuracy (n={result['ioi']['n']}) | {result['ioi']['accuracy']:.3f} | >= 0.98 | "
        f"{tick(met['ioi_accuracy'])} |",
        f"| IOI mean logit diff | {result['ioi']['logit_diff']:.2f} | >= 4 | {tick(met['ioi_logit_diff'])} |",
        f"| induction loss, first / second half (n={result['induction']['n']}) | "
        f"{result['induction']['first_half_loss']:.2f} / {result['induction']['second_half_loss']:.2f} | "
        f">= 3 / <= 0.3 | {tick(met['induction'])} |",
        f"| PrOntoQA 1-2 hops, answer accuracy (greedy, n={int(result['prontoqa']['n'])}) | "
        f"{result['prontoqa']['answer_acc']:.2f} | >= 0.90 | {tick(met['prontoqa_answer'])} |",
        f"| PrOntoQA 1-2 hops, exact CoT | {result['prontoqa']['cot_acc']:.2f} | >= 0.90 | "
        f"{tick(met['prontoqa_cot'])} |",
        f"| self-repair: top name mover {c['top_name_mover']} direct effect / total effect of resample-ablating "
        f"it | {c['top_direct_effect']:.2f} / {c['total_effect']:.2f} (compensation {c['compensation']:.2f}, "
        f"{100 * c['compensation_fraction']:.0f} %) | total < 0.8 x direct | {tick(met['self_repair'])} |",
        "",
        f"Training: {record['steps_done']} steps of {cfg['batch']} x {cfg['seq_len']} tokens, seed {record['seed']}, "
        f"{record['seconds']:.0f} s on {record['device']} ({record['torch_threads']} torch thread(s), shared CPU); "
        f"{record['n_params']:,} parameters, vocabulary {record['vocab_size']}; final training loss "
        f"{record['losses'][-1][1]:.3f}.",
        "",
        f"Heads detected (score >= {h['threshold']} on repeated random tokens, `mechlab.methods.heads`):",
    ]
    for kind in ("previous_token", "duplicate_token", "induction"):
        heads = h["detected"][kind]
        shown = ", ".join(f"{x} ({h['scores'][kind][x]:.2f})" for x in heads) or "none"
        lines.append(f"- {kind.replace('_', '-')}: {shown}")
    movers = sorted(c["direct_effect"].items(), key=lambda kv: -kv[1])[:3]
    lines.append("- IOI direct effect (top 3): " + ", ".join(f"{k} ({v:+.2f})" for k, v in movers))
    lines.append("- backup heads (DLA rises by > 10 % of the top head's effect when it is ablated): "
                 + (", ".join(f"{x} ({c['dla_change_when_ablated'][x]:+.2f})" for x in c["backup_heads"])
                    or "none"))
    lines.append(f"- where the compensation of {c['compensation']:.2f} comes from: the final LayerNorm's scale "
                 f"{c['compensation_layernorm']:+.2f} (the end position's scale changes by a factor "
                 f"{c['end_scale_ratio']:.3f}), other components' direct effects {c['compensation_components']:+.2f}"
                 + (": " + ", ".join(f"{x} {c['dla_change_when_ablated'][x]:+.2f}" for x in c["stepped_in"])
                    if c["stepped_in"] else ""))
    by_hops = result["prontoqa"].get("by_hops", {})
    if by_hops:
        lines.append("- PrOntoQA by hops (answer / exact CoT): " + ", ".join(
            f"{h} hop{'s' if h != '1' else ''} {v['answer_acc']:.2f} / {v['cot_acc']:.2f} (n={int(v['n'])})"
            for h, v in by_hops.items()))
    lines.append(CARD_END)
    return "\n".join(lines)


def write_card(result: dict, record: dict, card: Path = ORGANISM_DIR / "README.md") -> None:
    """Replace the measured section of the model card (between the markers) with fresh numbers."""
    text = card.read_text()
    if CARD_START not in text or CARD_END not in text:
        raise ValueError(f"{card} has no {CARD_START} ... {CARD_END} section; add the two markers.")
    head, rest = text.split(CARD_START, 1)
    tail = rest.split(CARD_END, 1)[1]
    card.write_text(head + card_section(result, record) + tail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the organism's targets on held-out prompts.")
    parser.add_argument("--model", default="organism", help="'organism' (default) or a checkpoint folder")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write evaluation.json")
    args = parser.parse_args(argv)
    model = load_model(args.model, device=args.device)
    result = evaluate(model)
    print(json.dumps({k: result[k] for k in ("ioi", "induction", "prontoqa", "targets_met")}, indent=1))
    c = result["ioi_circuit"]
    print(f"top name mover {c['top_name_mover']}: direct effect {c['top_direct_effect']:.2f}, total effect of "
          f"ablating it {c['total_effect']:.2f}, compensation {c['compensation']:.2f}; backups {c['backup_heads']}")
    print("head types:", result["head_types"]["detected"])
    if not args.no_write:
        folder = Path(args.model) if Path(args.model).is_dir() else ORGANISM_DIR / "checkpoint"
        (folder / "evaluation.json").write_text(json.dumps(result, indent=1))
        if folder.resolve() == (ORGANISM_DIR / "checkpoint").resolve():
            (ORGANISM_DIR / "heads.json").write_text(json.dumps(result["head_types"]["detected"], indent=1))
            record = json.loads((folder / "training.json").read_text())
            write_card(result, record)


if __name__ == "__main__":
    main()
