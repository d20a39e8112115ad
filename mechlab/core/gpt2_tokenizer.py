"""GPT-2's real tokenizer offline, rebuilt from a file that ships in a package on PyPI.

Tokens are a property of the tokenizer, not of the weights, so the tokenizer lessons can show GPT-2's real
tokens and ids without the model hub. openai-whisper's source distribution carries
``whisper/assets/gpt2.tiktoken``: GPT-2's byte-level BPE vocabulary, one ``base64(token bytes) rank`` per line,
where a token's rank *is* its GPT-2 id (0..50255; ``<|endoftext|>`` is 50256). From it this module writes
``vocab.json`` and ``merges.txt`` (GPT-2's own file formats) and a Hugging Face tokenizer folder, once, into the
mechlab cache (``$MECHLAB_CACHE``, default ``~/.cache/mechlab``). Nothing is committed to the repository.

The merges follow from the ranks: BPE merges the adjacent pair whose concatenation has the lowest rank, so a
token of rank ``r`` is the merge of the two pieces that BPE makes of its bytes when only tokens ranked below
``r`` may be used.

Fetching needs PyPI only: ``python -m mechlab.core.gpt2_tokenizer`` (``pip download`` of one pinned sdist,
~800 kB, checked against a pinned SHA-256), after which everything works offline. An installed ``whisper``
package is used directly when present.

Example::

    from mechlab.core.gpt2_tokenizer import gpt2_tokenizer
    tok = gpt2_tokenizer()
    tok("Hullo, my name is")["input_ids"]     # [39, 724, 78, 11, 616, 1438, 318]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import GPT2TokenizerFast

from mechlab.core.loading import ModelUnavailableError, cache_dir

WHISPER_SDIST = "openai-whisper==20250625"
SDIST_FILE = "openai_whisper-20250625.tar.gz"
RANKS_MEMBER = "openai_whisper-20250625/whisper/assets/gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
N_RANKS = 50256  # byte-level BPE tokens; <|endoftext|> follows them
EOT = "<|endoftext|>"
EOT_ID = 50256
FETCH_COMMAND = "python -m mechlab.core.gpt2_tokenizer"
BUILD_VERSION = "v1"  # bump when the folder's contents change


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (how vocab.json spells bytes).

    Printable Latin-1 bytes stand for themselves; the other 68 are shifted to code points from 256 up, in order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def parse_ranks(text: str) -> dict[bytes, int]:
    """``{token bytes: rank}`` from the lines of a ``.tiktoken`` file; ranks must run 0..n-1 without gaps."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {lineno} of the ranks file is {line!r}; expected 'base64 rank'.")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError("the ranks file's ranks are not 0..n-1 without gaps; the file is not a BPE rank table.")
    return ranks


def split_by_lower_ranks(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair that BPE merges last to make ``token``: run BPE on its bytes with the tokens ranked below it."""
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            raise ValueError(f"token {token!r} (rank {limit}) cannot be built from lower-ranked tokens; the ranks "
                             "file is not a BPE rank table.")
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2 or ranks.get(parts[0], limit) >= limit or ranks.get(parts[1], limit) >= limit:
        raise ValueError(f"token {token!r} (rank {limit}) does not split into two lower-ranked tokens.")
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's ``vocab.json`` (token string -> id, ``<|endoftext|>`` last) and its merges in priority order."""
    spell = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(spell[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    vocab[EOT] = len(ranks)
    merges = []
    for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            left, right = split_by_lower_ranks(tok, ranks)
            merges.append((text(left), text(right)))
    return vocab, merges


def _root() -> Path:
    return cache_dir() / "gpt2-tokenizer"


def tokenizer_dir() -> Path:
    """Where the built tokenizer folder lives (it may not exist yet)."""
    return _root() / BUILD_VERSION


def _ranks_from_installed_whisper() -> str | None:
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "assets" / "gpt2.tiktoken"
        if path.is_file():
            return path.read_text()
    return None


def _ranks_from_sdist(sdist: Path) -> str:
    with tarfile.open(sdist, "r:gz") as tar:
        member = tar.extractfile(RANKS_MEMBER)
        if member is None:
            raise ValueError(f"{sdist} holds no {RANKS_MEMBER}; delete it and run `{FETCH_COMMAND}` again.")
        return member.read().decode("ascii")


def fetch_sdist(*, quiet: bool = False) -> Path:
    """Download openai-whisper's pinned sdist from PyPI into the mechlab cache with pip (once); its path."""
    folder = _root() / "pypi"
    target = folder / SDIST_FILE
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"mechlab: fetching GPT-2's BPE ranks from PyPI ({WHISPER_SDIST}, ~800 kB) into {folder}")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        # pip reads the sdist's metadata, which needs setuptools: the installed one first (fast), then pip's isolated
        # build environment (setuptools from PyPI; Python >= 3.12 venvs ship without it, old ones may be too old)
        attempts = [["--no-build-isolation"], []] if importlib.util.find_spec("setuptools") is not None else [[]]
        for isolation in attempts:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", *isolation,
                   "--quiet", "--dest", tmp, WHISPER_SDIST]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            got = Path(tmp) / SDIST_FILE
            if done.returncode == 0 and got.is_file():
                break
        else:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise ModelUnavailableError(
                f"Could not download {WHISPER_SDIST} from PyPI (pip exited {done.returncode}: {' / '.join(tail)}). "
                f"GPT-2's tokenizer is rebuilt from a file in that package. Connect to PyPI and run "
                f"`{FETCH_COMMAND}`, or `pip install {WHISPER_SDIST}`, or put {SDIST_FILE} into {folder}.")
        got.replace(target)
    return target


def gpt2_tokenizer_dir(*, fetch: bool = True, quiet: bool = False) -> Path:
    """The folder of GPT-2's tokenizer (vocab.json, merges.txt, tokenizer.json ...), built once in the cache.

    The ranks come from an installed ``whisper`` package, else from openai-whisper's sdist in the cache, else
    (when ``fetch``) from PyPI. Raises :class:`ModelUnavailableError` saying what to run when none is possible.
    """
    out = tokenizer_dir()
    if (out / "tokenizer.json").is_file():
        return out
    text = _ranks_from_installed_whisper()
    if text is None:
        sdist = _root() / "pypi" / SDIST_FILE
        if not sdist.is_file():
            if not fetch:
                raise ModelUnavailableError(
                    f"GPT-2's tokenizer is not built yet and {SDIST_FILE} is not in {sdist.parent}. Run "
                    f"`{FETCH_COMMAND}` once (it needs PyPI only), or call gpt2_tokenizer_dir(fetch=True).")
            sdist = fetch_sdist(quiet=quiet)
        text = _ranks_from_sdist(sdist)
    digest = hashlib.sha256(text.encode("ascii")).hexdigest()
    if digest != RANKS_SHA256:
        raise ValueError(f"GPT-2's ranks file has SHA-256 {digest}, expected {RANKS_SHA256} (the file of "
                         f"{WHISPER_SDIST}). Delete {_root()} and run `{FETCH_COMMAND}` again.")
    ranks = parse_ranks(text)
    if len(ranks) != N_RANKS:
        raise ValueError(f"GPT-2's ranks file has {len(ranks)} tokens, expected {N_RANKS}.")
    vocab, merges = vocab_and_merges(ranks)
    _root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=_root()))
    try:
        (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        tok = GPT2TokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                add_prefix_space=False, model_max_length=1024)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(
            f"Rebuilt by mechlab.core.gpt2_tokenizer from whisper/assets/gpt2.tiktoken of {WHISPER_SDIST} (PyPI), "
            f"SHA-256 {RANKS_SHA256}. Token ids are GPT-2's.\n")
        if not out.exists():  # another process may have won the race; its copy is identical
            tmp.replace(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def gpt2_tokenizer(*, fetch: bool = True, quiet: bool = False) -> GPT2TokenizerFast:
    """GPT-2's tokenizer (real ids), from the cache folder :func:`gpt2_tokenizer_dir` builds."""
    return GPT2TokenizerFast.from_pretrained(str(gpt2_tokenizer_dir(fetch=fetch, quiet=quiet)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch (from PyPI) and build GPT-2's tokenizer in the mechlab cache.")
    parser.parse_args(argv)
    path = gpt2_tokenizer_dir()
    ids = gpt2_tokenizer()("Hullo, my name is")["input_ids"]
    print(f"mechlab: GPT-2's tokenizer is in {path}; 'Hullo, my name is' -> {ids}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
