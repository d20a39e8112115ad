"""A 1-layer attention-only transformer written from scratch, its training loop, and the tools that read it.

The model (unit 03) has one-hot embedding and unembedding (``d_model == d_vocab``, both fixed identity maps),
no positional embedding and no MLP: ``logits = W_U (x + sum_h head_h(x) + b_O)``. Every activation passes
through a ``HookPoint``, so ``run_with_cache`` and ``run_with_hooks`` work as on any TransformerLens model:

    hook_embed, blocks.0.hook_resid_pre,
    blocks.0.attn.hook_q / hook_k / hook_v     [batch, pos, head, d_head]
    blocks.0.attn.hook_attn_scores             [batch, head, query_pos, key_pos]  scaled, causally masked
    blocks.0.attn.hook_pattern                 [batch, head, query_pos, key_pos]
    blocks.0.attn.hook_z                       [batch, pos, head, d_head]
    blocks.0.attn.hook_result                  [batch, pos, head, d_model]        one head's output
    blocks.0.hook_attn_out, blocks.0.hook_resid_post, hook_logits

Example::

    from mechlab.data.skip_trigram import make_skip_trigram
    from mechlab.models.toy import ToyConfig, ToyTrainConfig, AttnOnlyTransformer, train_toy
    run = train_toy(ToyConfig(), ToyTrainConfig())           # ~10 s on 2 CPU cores
    logits, cache = run.model.run_with_cache(make_skip_trigram(8, seed=5).tokens,
                                             names_filter=lambda n: n.endswith("hook_pattern"))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm import tqdm
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from mechlab.core.activations import head_labels
from mechlab.core.cpu_math import one_thread
from mechlab.core.results import Labelled
from mechlab.data.skip_trigram import (
    D_VOCAB,
    PAIRS,
    SIGNAL_TOKENS,
    Ceiling,
    SkipTrigramData,
    accuracy_ceiling,
    make_skip_trigram,
    pair_names,
    signal_prompts,
)

# ---------------------------------------------------------------------------------------------------------
# attention, as plain functions (the model calls these; the unit-03 exercises re-implement them)


def causal_mask(n_query: int, n_key: int | None = None, device=None) -> Bool[Tensor, "query_pos key_pos"]:
    """True where query position ``i`` must not see key position ``j`` (``j > i``), decided by *position*."""
    n_key = n_query if n_key is None else n_key
    return torch.ones(n_query, n_key, dtype=torch.bool, device=device).triu(diagonal=1)


def attention_scores(
    q: Float[Tensor, "batch pos head d_head"], k: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch head query_pos key_pos"]:
    """Scaled, causally masked attention scores (``-inf`` above the diagonal); the input is not modified."""
    if q.shape != k.shape or q.ndim != 4:
        raise ValueError(f"attention_scores: q {tuple(q.shape)} and k {tuple(k.shape)} must both be "
                         "[batch, pos, head, d_head].")
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    mask = causal_mask(q.shape[1], k.shape[1], device=q.device)
    return scores.masked_fill(mask, float("-inf"))  # out of place: never edit a tensor a hook may hold


def attention_pattern(
    q: Float[Tensor, "batch pos head d_head"], k: Float[Tensor, "batch pos head d_head"]
) -> Float[Tensor, "batch head query_pos key_pos"]:
    """Causal attention weights: softmax over key positions of :func:`attention_scores`."""
    return attention_scores(q, k).softmax(dim=-1)


# ---------------------------------------------------------------------------------------------------------
# the model


@dataclass
class ToyConfig:
    """Shape and initialisation of :class:`AttnOnlyTransformer`."""

    d_vocab: int = D_VOCAB  # number of tokens; embedding/unembedding are one-hot, so d_model = d_vocab
    n_ctx: int = 4  # sequence length the model is built for
    n_heads: int = 3  # attention heads in the single layer
    d_head: int = 1  # width of each head's query/key/value (1: each head moves one number per token)
    init_range: float = 0.5  # std of the normal initialisation of W_Q, W_K, W_V, W_O (biases start at 0)
    seed: int = 0  # seed of the initial weights (a private generator; the global RNG is untouched)

    @property
    def d_model(self) -> int:
        return self.d_vocab

    @property
    def n_layers(self) -> int:
        return 1


class _Attention(nn.Module):
    def __init__(self, cfg: ToyConfig, gen: torch.Generator):
        super().__init__()
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head

        def normal(*shape):
            return nn.Parameter(torch.randn(*shape, generator=gen) * cfg.init_range)

        self.W_Q, self.W_K, self.W_V = normal(h, m, d), normal(h, m, d), normal(h, m, d)
        self.W_O = normal(h, d, m)
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(h, d)) for _ in range(3))
        self.b_O = nn.Parameter(torch.zeros(m))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q = self.hook_q(torch.einsum("bpm,hmd->bphd", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpm,hmd->bphd", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpm,hmd->bphd", x, self.W_V) + self.b_V)
        scores = self.hook_attn_scores(attention_scores(q, k))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        result = self.hook_result(torch.einsum("bqhd,hdm->bqhm", z, self.W_O))
        return result.sum(dim=2) + self.b_O


class _Block(nn.Module):
    def __init__(self, cfg: ToyConfig, gen: torch.Generator):
        super().__init__()
        self.attn = _Attention(cfg, gen)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.hook_attn_out(self.attn(x)))


class AttnOnlyTransformer(HookedRootModule):
    """One attention layer between a one-hot embedding and a one-hot unembedding (see the module docstring).

    Example::

        model = AttnOnlyTransformer(ToyConfig(seed=1))
        logits = model(torch.tensor([[1, 7, 3, 0]]))        # [1, 4, 11]
    """

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        if cfg.n_heads < 1 or cfg.d_head < 1 or cfg.n_ctx < 1:
            raise ValueError(f"ToyConfig {cfg}: n_heads, d_head and n_ctx must all be >= 1.")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("W_E", torch.eye(cfg.d_vocab, cfg.d_model))  # fixed one-hot embedding
        self.register_buffer("W_U", torch.eye(cfg.d_model, cfg.d_vocab))  # fixed one-hot unembedding
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([_Block(cfg, gen)])
        self.hook_logits = HookPoint()
        self.setup()

    @property
    def attn(self) -> _Attention:
        return self.blocks[0].attn

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        if tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"AttnOnlyTransformer: tokens must be integer ids of shape [batch, pos]; got "
                             f"{tuple(tokens.shape)} of {tokens.dtype}.")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"AttnOnlyTransformer: {tokens.shape[1]} positions but the model is built for "
                             f"n_ctx={self.cfg.n_ctx}. Shorten the sequences.")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.d_vocab):
            raise ValueError(f"AttnOnlyTransformer: token ids must lie in 0..{self.cfg.d_vocab - 1}; got "
                             f"{int(tokens.min())}..{int(tokens.max())}.")
        x = self.hook_embed(self.W_E[tokens])
        resid = self.blocks[0](x)
        return self.hook_logits(resid @ self.W_U)


# ---------------------------------------------------------------------------------------------------------
# training


@dataclass
class ToyTrainConfig:
    """How :func:`train_toy` trains the toy model on skip-trigrams."""

    n_train: int = 20_000  # training sequences (a fixed, seeded set)
    n_test: int = 20_000  # held-out sequences, drawn with another seed
    p_signal: float = 0.5  # share of signal sequences in both sets
    batch_size: int = 500  # sequences per optimiser step
    epochs: int = 15  # passes over the training set
    lr: float = 3e-2  # Adam learning rate (the seed's 1e-3 with batch 10,000 underfits)
    weight_decay: float = 0.0  # Adam weight decay
    seed: int = 0  # seeds the training data (seed), the test data (seed + 1) and the batch order


@dataclass
class History:
    """Per-epoch metrics; losses are mean cross-entropy per sequence, accuracies fractions."""

    train_loss: list[float]
    train_acc: list[float]
    test_loss: list[float]
    test_acc: list[float]


@dataclass
class TrainResult:
    """What :func:`train_toy` returns: the trained model, its metrics, the data it saw, and the task's ceiling."""

    model: AttnOnlyTransformer
    history: History
    train_data: SkipTrigramData
    test_data: SkipTrigramData
    ceiling: Ceiling  # measured on the test set

    def summary(self) -> str:
        """Rounded final numbers, stable from run to run (for notebooks that compare outputs)."""
        h = self.history
        return (f"final train loss {h.train_loss[-1]:.3f}, acc {h.train_acc[-1]:.2%} | "
                f"test loss {h.test_loss[-1]:.3f}, acc {h.test_acc[-1]:.2%} | ceiling {self.ceiling.total:.2%}")


def last_position_loss(
    logits: Float[Tensor, "batch pos d_vocab"], labels: Int[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """Mean cross-entropy of the prediction at the last position (the only one the task scores)."""
    return F.cross_entropy(logits[:, -1], labels)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, tokens: Int[Tensor, "batch pos"],
               labels: Int[Tensor, " batch"]) -> float:
    """One optimiser step on one batch; returns the batch's mean loss (before the step)."""
    return _step(model, optimizer, tokens, labels)[0]


def _step(model, optimizer, tokens, labels) -> tuple[float, int]:
    """:func:`train_step`, also returning how many of the batch the model got right before the step."""
    optimizer.zero_grad()
    logits = model(tokens)
    loss = last_position_loss(logits, labels)
    loss.backward()
    optimizer.step()
    return loss.item(), int((logits[:, -1].detach().argmax(-1) == labels).sum())


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, data: SkipTrigramData, batch_size: int = 5_000) -> tuple[float, float]:
    """``(mean loss, accuracy)`` over ``data``; each batch is weighted by its size, so a short last batch counts
    for what it holds."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        batch = data[start:start + batch_size]
        logits = model(batch.tokens)[:, -1]
        total_loss += F.cross_entropy(logits, batch.labels, reduction="sum").item()
        correct += int((logits.argmax(-1) == batch.labels).sum())
    return total_loss / len(data), correct / len(data)


def train_toy(model_cfg: ToyConfig, train_cfg: ToyTrainConfig, *, progress: bool = True) -> TrainResult:
    """Train a fresh :class:`AttnOnlyTransformer` on seeded skip-trigram data; the same configs give the same
    numbers on the same machine. Shows a tqdm bar with the running train loss and the test accuracy.
    Runs on one CPU thread (restored afterwards): for a model this small that is the fastest setting."""
    with one_thread():   # the toy's matrices are ~11 x 11: more threads only add synchronisation
        return _train(model_cfg, train_cfg, progress=progress)


def _train(model_cfg: ToyConfig, train_cfg: ToyTrainConfig, *, progress: bool) -> TrainResult:
    if train_cfg.batch_size < 1 or train_cfg.epochs < 1:
        raise ValueError(f"ToyTrainConfig: batch_size={train_cfg.batch_size}, epochs={train_cfg.epochs}; both must "
                         "be >= 1.")
    train_data = make_skip_trigram(train_cfg.n_train, seed=train_cfg.seed, p_signal=train_cfg.p_signal,
                                   n_ctx=model_cfg.n_ctx)
    test_data = make_skip_trigram(train_cfg.n_test, seed=train_cfg.seed + 1, p_signal=train_cfg.p_signal,
                                  n_ctx=model_cfg.n_ctx)
    model = AttnOnlyTransformer(model_cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    order_gen = torch.Generator().manual_seed(train_cfg.seed)
    history = History([], [], [], [])
    bar = tqdm(range(train_cfg.epochs), desc="training the toy model", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(train_data), generator=order_gen)
        seen, loss_sum, correct = 0, 0.0, 0
        for start in range(0, len(train_data), train_cfg.batch_size):
            batch = train_data[perm[start:start + train_cfg.batch_size]]
            loss, n_right = _step(model, optimizer, batch.tokens, batch.labels)
            loss_sum += loss * len(batch)  # weighted by batch size: the last batch may be short
            correct += n_right
            seen += len(batch)
        model.eval()
        test_loss, test_acc = loss_and_accuracy(model, test_data)
        history.train_loss.append(loss_sum / seen)
        history.train_acc.append(correct / seen)
        history.test_loss.append(test_loss)
        history.test_acc.append(test_acc)
        bar.set_postfix(train_loss=f"{loss_sum / seen:.3f}", test_acc=f"{test_acc:.1%}")
    return TrainResult(model=model, history=history, train_data=train_data, test_data=test_data,
                       ceiling=accuracy_ceiling(test_data))


def describe(model: AttnOnlyTransformer) -> str:
    """One line saying what the model is (every notebook prints the model it runs on)."""
    c = model.cfg
    n_params = sum(p.numel() for p in model.parameters())
    return (f"mechlab: model toy-attn-only (AttnOnlyTransformer, trained from scratch here): 1 layer, "
            f"{c.n_heads} heads of d_head {c.d_head}, "
            f"one-hot d_model = d_vocab = {c.d_vocab}, n_ctx {c.n_ctx}, {n_params} trained parameters; "
            f"config {asdict(c)}")


# ---------------------------------------------------------------------------------------------------------
# reading the model


def _check_model(model) -> None:
    if not isinstance(model, AttnOnlyTransformer):
        raise ValueError(f"expected an AttnOnlyTransformer (mechlab.models.toy), got {type(model).__name__}.")


def head_attention(model: AttnOnlyTransformer, tokens: Int[Tensor, " pos"]) -> Labelled:
    """The attention pattern of every head on one sequence: values ``[head, query_pos, key_pos]``."""
    _check_model(model)
    if tokens.ndim != 1:
        raise ValueError(f"head_attention: tokens must be one sequence of shape [pos]; got "
                         f"{tuple(tokens.shape)}. Pass tokens[i] for the i-th sequence of a batch.")
    name = "blocks.0.attn.hook_pattern"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=[name])
    return Labelled(cache[name][0], head_labels(1, model.cfg.n_heads), unit="attention weight",
                    axes=("head", "query_pos", "key_pos"), meta={"tokens": tokens.tolist()})


def head_logit_contributions(model: AttnOnlyTransformer, tokens: Int[Tensor, "batch pos"]) -> Labelled:
    """Split the last-position logits into ``embed`` (the direct path), each head ``L0H{h}``, and ``bias``
    (``b_O``, added once, not per head): values ``[component, batch, d_vocab]`` that sum to the logits."""
    _check_model(model)
    name = "blocks.0.attn.hook_result"
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        heads = cache[name][:, -1] @ model.W_U  # [batch, head, d_vocab]
        embed = model.W_E[tokens[:, -1]] @ model.W_U
        bias = (model.attn.b_O @ model.W_U).expand_as(embed)
    values = torch.cat([embed[None], heads.permute(1, 0, 2), bias[None]])
    labels = ["embed", *head_labels(1, model.cfg.n_heads), "bias"]
    return Labelled(values, labels, unit="logit", axes=("component", "batch", "d_vocab"))


def ov_circuit(model: AttnOnlyTransformer) -> Labelled:
    """What each head writes to the logits when it attends only to token ``t``: ``(W_E[t] W_V + b_V) W_O W_U``.

    Values ``[head, src_token, d_vocab]``; row ``t`` of head ``h`` says which labels ``t`` promotes through it.
    """
    _check_model(model)
    a = model.attn
    with torch.no_grad():
        values = (torch.einsum("tm,hmd->htd", model.W_E, a.W_V) + a.b_V[:, None])  # [head, token, d_head]
        out = torch.einsum("htd,hdm,mv->htv", values, a.W_O, model.W_U)
    return Labelled(out, head_labels(1, model.cfg.n_heads), unit="logit",
                    axes=("head", "src_token", "d_vocab"))


def qk_circuit(model: AttnOnlyTransformer) -> Labelled:
    """Each head's attention score (scaled, before the mask) between a query token and a key token:
    values ``[head, query_token, key_token]``. Row 0 (the ``0`` token) is where the answer is read."""
    _check_model(model)
    a = model.attn
    with torch.no_grad():
        q = torch.einsum("tm,hmd->htd", model.W_E, a.W_Q) + a.b_Q[:, None]
        k = torch.einsum("tm,hmd->htd", model.W_E, a.W_K) + a.b_K[:, None]
        out = torch.einsum("hqd,hkd->hqk", q, k) / math.sqrt(model.cfg.d_head)
    return Labelled(out, head_labels(1, model.cfg.n_heads), unit="attention score (scaled)",
                    axes=("head", "query_token", "key_token"))


def _pair_index(names: list[str]) -> Int[Tensor, " batch"]:
    order = pair_names()
    return torch.tensor([order.index(n) for n in names])


def pair_logit_table(model: AttnOnlyTransformer) -> Labelled:
    """Which component pushes the right answer for which pair: for every signal sequence, each component's
    contribution to ``logit[correct] - mean(logit[other pair labels])``, averaged per unordered pair {a, b}.

    Values ``[component, pair]`` (components ``embed``, ``L0H{h}``, ``bias``); the rows sum to the model's
    average margin of the correct label over the other nine pair labels.
    """
    _check_model(model)
    tokens, labels, names = signal_prompts(model.cfg.n_ctx)
    contrib = head_logit_contributions(model, tokens)
    n_pairs = len(PAIRS)
    onehot = F.one_hot(labels, n_pairs).float()  # only the 10 pair labels compete
    own = (contrib.values[..., :n_pairs] * onehot).sum(-1)
    others = (contrib.values[..., :n_pairs] * (1 - onehot)).sum(-1) / (n_pairs - 1)
    margin = own - others  # [component, batch]
    idx = _pair_index(names)
    table = torch.zeros(len(contrib.labels), n_pairs).index_add_(1, idx, margin)
    table /= torch.bincount(idx, minlength=n_pairs)
    return Labelled(table, contrib.labels, unit="logit margin (correct - mean of other pair labels)",
                    axes=("component", "pair"), meta={"pairs": pair_names()})


def pair_accuracy_ablated(model: AttnOnlyTransformer) -> Labelled:
    """Accuracy on every signal sequence, per pair, with nothing ablated (``none``) and with each head's output
    replaced by its mean over all signal sequences (mean ablation, at every position). Values ``[ablated, pair]``.

    A head whose ablation breaks a pair is *needed* for it; compare with :func:`pair_logit_table`.
    """
    _check_model(model)
    tokens, labels, names = signal_prompts(model.cfg.n_ctx)
    name = "blocks.0.attn.hook_result"
    idx = _pair_index(names)
    counts = torch.bincount(idx, minlength=len(PAIRS)).float()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[name])
        mean_result = cache[name].mean(dim=0)  # [pos, head, d_model]
        rows = []
        for head in [None, *range(model.cfg.n_heads)]:
            def ablate(result, hook, head=head):
                result = result.clone()
                result[:, :, head] = mean_result[None, : result.shape[1], head]
                return result

            hooks = [] if head is None else [(name, ablate)]
            logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1]
            right = (logits.argmax(-1) == labels).float()
            rows.append(torch.zeros(len(PAIRS)).index_add_(0, idx, right) / counts)
    return Labelled(torch.stack(rows), ["none", *head_labels(1, model.cfg.n_heads)], unit="accuracy",
                    axes=("ablated", "pair"), meta={"pairs": pair_names()})


def signal_token_names() -> list[str]:
    """Names of the tokens ``0..10`` for table axes: ``'0 (end)'``, ``'1'``..``'4'``, ``'5 (filler)'``..."""
    return [f"{t} (end)" if t == 0 else (str(t) if t in SIGNAL_TOKENS else f"{t} (filler)") for t in range(D_VOCAB)]


__all__ = ["AttnOnlyTransformer", "History", "ToyConfig", "ToyTrainConfig", "TrainResult", "attention_pattern",
           "head_attention", "attention_scores", "causal_mask", "describe", "loss_and_accuracy",
           "head_logit_contributions", "last_position_loss", "ov_circuit", "pair_accuracy_ablated",
           "pair_logit_table", "qk_circuit", "signal_token_names", "train_step", "train_toy"]
