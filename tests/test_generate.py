"""mechlab.methods.generate against step-by-step greedy decoding: one prompt at a time, a full forward per token."""

from __future__ import annotations

import pytest
import torch

from mechlab.core.loading import load_model
from mechlab.methods.generate import generate

PROMPTS = [  # different lengths, so the batch is left-padded
    "Hello",
    "The quick brown fox jumps over",
    "Every wumpus is a yumpus. Fae is a wumpus. Is Fae sunny?",
    "a b c",
]


def stepwise_greedy(model, prompt: str, n: int) -> tuple[list[int], list[float]]:
    """The reference: no cache, no padding, the whole sequence through the model for every new token."""
    tokens = model.to_tokens(prompt)
    chosen, logprobs = [], []
    with torch.no_grad():
        for _ in range(n):
            last = model(tokens)[0, -1].float()
            tok = int(last.argmax())
            chosen.append(tok)
            logprobs.append(float(last.log_softmax(-1)[tok]))
            tokens = torch.cat([tokens, torch.tensor([[tok]], device=tokens.device)], dim=1)
    return chosen, logprobs


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-gemma"])
def sharp_model(request, device):
    """A tiny model with its block weights scaled up, so that its greedy tokens depend on every position.

    The session fixtures' small random weights make near-uniform attention: their greedy output barely
    depends on the positions or the mask, so a wrong position id could still give the right tokens.
    """
    model = load_model(request.param, device=device, seed=5, verbose=False)
    with torch.no_grad():
        for name, param in model.original_model.named_parameters():
            if param.ndim == 2 and not any(k in name for k in ("embed", "wte", "wpe")):
                param.mul_(5)
    return model


def _check_against_stepwise(model, n_new: int) -> list[list[int]]:
    out = generate(model, PROMPTS, max_new_tokens=n_new, stop_at_eos=False, batch_size=3)
    refs = []
    for i, prompt in enumerate(PROMPTS):
        ref_tokens, ref_logprobs = stepwise_greedy(model, prompt, n_new)
        assert out.tokens[i].tolist() == ref_tokens, f"prompt {i} ({prompt!r})"
        # the log-probs see what tokens may hide: a slightly wrong position or mask shifts them
        torch.testing.assert_close(out.logprobs[i], torch.tensor(ref_logprobs), atol=1e-5, rtol=0)
        assert out.finish[i] == "length"
        assert out.texts[i] == model.tokenizer.decode(ref_tokens)
        refs.append(ref_tokens)
    return refs


def test_generation_matches_stepwise_greedy(tiny_model):
    _check_against_stepwise(tiny_model, n_new=10)


def test_generation_matches_stepwise_greedy_on_position_sensitive_models(sharp_model):
    refs = _check_against_stepwise(sharp_model, n_new=12)
    assert any(len(set(r)) > 3 for r in refs), "the reference continuations are too repetitive to test anything"


def test_a_prompt_gets_the_same_tokens_alone_and_in_a_batch(sharp_model):
    alone = generate(sharp_model, PROMPTS[0], max_new_tokens=8, stop_at_eos=False)
    batched = generate(sharp_model, PROMPTS, max_new_tokens=8, stop_at_eos=False, batch_size=len(PROMPTS))
    assert alone.tokens[0].tolist() == batched.tokens[0].tolist()


def _multi_token_stop(model) -> tuple[str, str, list[int], int]:
    """A printable piece of 2-3 tokens that one prompt's reference continuation completes at token ``end``.

    Returns (prompt, stop string, reference tokens, end); the piece does not occur before token ``end``.
    """
    decode = model.tokenizer.decode
    for prompt in PROMPTS:
        tokens, _ = stepwise_greedy(model, prompt, 16)
        for width in (3, 2):
            for end in range(width, len(tokens) + 1):
                piece = decode(tokens[end - width:end])
                if (piece.isprintable() and piece.strip() and "\ufffd" not in piece
                        and piece in decode(tokens[:end]) and piece not in decode(tokens[:end - 1])
                        and model.to_tokens(piece, prepend_bos=False).shape[1] >= 2):
                    return prompt, piece, tokens, end
    raise AssertionError("no printable multi-token piece in any reference continuation; change the seed")


def test_multi_token_stop_string_ends_the_row_and_cuts_the_text(sharp_model):
    prompt, stop, ref_tokens, end = _multi_token_stop(sharp_model)
    full = sharp_model.tokenizer.decode(ref_tokens[:end])
    cut = full.index(stop)
    other = next(p for p in PROMPTS if p != prompt)

    out = generate(sharp_model, [prompt, other], max_new_tokens=16, stop=["\x00never", stop], stop_at_eos=False)
    assert out.tokens[0].tolist() == ref_tokens[:end]  # stops on the token that completes the string
    assert out.finish[0] == "stop" and out.stop_found[0] == stop
    assert out.texts[0] == full[:cut + len(stop)] and out.texts[0].endswith(stop)
    assert out.full_texts[0] == prompt + out.texts[0]
    # the other row carries on to max_new_tokens unless the string shows up there too
    assert out.finish[1] == ("stop" if stop in out.texts[1] else "length")
    assert len(out.tokens[1]) == 16 or out.finish[1] == "stop"

    dropped = generate(sharp_model, prompt, max_new_tokens=16, stop=stop, include_stop=False, stop_at_eos=False)
    assert dropped.texts[0] == full[:cut]


def test_the_cache_is_used_one_new_token_per_step(tiny_model):
    widths, logit_widths = [], []

    def record(act, hook):
        widths.append(act.shape[1])

    def record_logits(act, hook):
        logit_widths.append(act.shape[1])

    with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", record), ("unembed.hook_out", record_logits)]):
        generate(tiny_model, PROMPTS[:2], max_new_tokens=5, stop_at_eos=False)
    longest = max(tiny_model.to_tokens(p).shape[1] for p in PROMPTS[:2])
    assert widths == [longest] + [1] * 4
    assert logit_widths == [1] * 5  # the prompt's pass unembeds only its last position


def test_hooks_in_scope_act_on_every_step(gpt2_like):
    plain = generate(gpt2_like, PROMPTS[1], max_new_tokens=6, stop_at_eos=False)
    boost = gpt2_like.W_U[:, 7].detach() * 1e3  # pushes every prediction towards token 7

    def steer(resid, hook):
        return resid + boost

    with gpt2_like.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):
        steered = generate(gpt2_like, PROMPTS[1], max_new_tokens=6, stop_at_eos=False)
    assert steered.tokens[0].tolist() == [7] * 6
    assert plain.tokens[0].tolist() != [7] * 6


def test_refuses_bad_arguments(gpt2_like):
    with pytest.raises(ValueError, match="context"):
        generate(gpt2_like, "x" * 250, max_new_tokens=20)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        generate(gpt2_like, [])
    with pytest.raises(ValueError, match="stop must be non-empty strings"):
        generate(gpt2_like, "hi", stop=[""])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(gpt2_like, "hi", max_new_tokens=0)


def _eos_when(model, trigger: int):
    """A logits hook: wherever ``trigger`` would be the greedy token, the end-of-text token wins instead."""
    eos = model.tokenizer.eos_token_id

    def hook(logits, hook):
        logits = logits.clone()
        hit = logits.argmax(-1) == trigger
        logits[..., eos] = torch.where(hit, logits.max(-1).values + 10.0, logits[..., eos])
        return logits
    return hook


def test_a_row_that_reaches_end_of_text_stops_without_it_in_its_text(sharp_model):
    n = 10
    eos = sharp_model.tokenizer.eos_token_id
    plain = {p: stepwise_greedy(sharp_model, p, n)[0] for p in PROMPTS}
    # a token that one prompt's continuation reaches at step k >= 2 and another prompt's never writes
    found = next(((a, b, k) for a in PROMPTS for b in PROMPTS if a != b for k in range(2, n)
                  if plain[a][k] not in plain[a][:k] + plain[b] and eos not in plain[a][:k] + plain[b]), None)
    assert found is not None, "no usable trigger token in the reference continuations; change the seed"
    a, b, k = found
    trigger = plain[a][k]
    with sharp_model.hooks(fwd_hooks=[("unembed.hook_out", _eos_when(sharp_model, trigger))]):
        ref_a, _ = stepwise_greedy(sharp_model, a, k + 1)  # the hand loop sees the same forced end-of-text
        out = generate(sharp_model, [a, b], max_new_tokens=n, batch_size=2)
        on = generate(sharp_model, [a, b], max_new_tokens=n, batch_size=2, stop_at_eos=False)
    assert ref_a == plain[a][:k] + [eos]

    assert out.finish == ["eos", "length"]
    assert out.tokens[0].tolist() == ref_a  # the end-of-text id is kept in the tokens...
    assert out.texts[0] == sharp_model.tokenizer.decode(plain[a][:k])  # ...but not in the text
    assert sharp_model.tokenizer.decode([eos]) not in out.texts[0]
    assert out.full_texts[0] == a + out.texts[0] and out.stop_found[0] is None
    # the other row of the batch carries on untouched after the first one leaves it
    assert out.tokens[1].tolist() == plain[b]
    assert out.texts[1] == sharp_model.tokenizer.decode(plain[b])
    # with stop_at_eos=False the end-of-text token is an ordinary token: decoded, and the row goes on
    assert on.finish[0] == "length" and on.tokens[0].tolist()[:k + 1] == ref_a
    assert sharp_model.tokenizer.decode([eos]) in on.texts[0]


def test_prompts_that_are_not_strings_are_refused(gpt2_like):
    for bad in (None, 5, b"bytes", torch.tensor([[1, 2]])):
        with pytest.raises(ValueError, match="prompts must be a string or a non-empty list of strings"):
            generate(gpt2_like, bad)
    with pytest.raises(ValueError, match="non-empty list of strings"):
        generate(gpt2_like, ["ok", None])


def test_generation_leaves_no_module_hooks_behind(gpt2_like, monkeypatch):
    """The pre-hooks that hand the KV cache to the bridge's attention (transformers >= 5.24) live only while
    generating: they fire during generation (where this transformers passes ``cache``) and are gone after."""
    import mechlab.methods.generate as gen

    fired = []
    original = gen._pass_cache_as_past_key_values

    def counting(module, args, kwargs):
        fired.append(len(module._forward_pre_hooks))
        return original(module, args, kwargs)

    monkeypatch.setattr(gen, "_pass_cache_as_past_key_values", counting)
    before = [len(block.attn._forward_pre_hooks) for block in gpt2_like.blocks]
    generate(gpt2_like, PROMPTS[:2], max_new_tokens=3, stop_at_eos=False)
    assert [len(block.attn._forward_pre_hooks) for block in gpt2_like.blocks] == before
    if gen._accepts(gpt2_like, "cache"):   # transformers >= 5.24: one call per block per forward pass
        assert len(fired) >= 3 * len(gpt2_like.blocks) and all(n == before[0] + 1 for n in fired), fired
    else:
        assert fired == []
