"""Text for a character-level language model (``python train.py model=gpt``).

A corpus becomes one long tensor of character indices (the vocabulary: the corpus's characters,
sorted); the first 90 % trains, the last 10 % validates (contiguous, as nanoGPT splits). A batch
is B windows of block_size + 1 characters at random starts: the first block_size are the input,
the last block_size (shifted by one) the targets, so every position predicts the next character.

Where the text comes from (``conf/data/text.yaml``):

* ``path=FILE``: any UTF-8 text file;
* ``dataset=tinyshakespeare``: karpathy's tiny Shakespeare (1.1 MB), downloaded once into the
  data root (``$MANUALBP_DATA`` or ``~/.cache/manualbp/data``);
* neither: the source of the Python standard library this interpreter runs on -- on every
  machine, with no network -- its modules' ``.py`` files in name order, up to ``max_chars``.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from manualbp.errors import ConfigError
from manualbp.training.data.base import LectureDataModule
from manualbp.training.data.mnist_files import default_data_root, locked

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_BYTES = 1_115_394  # the known file: a download that differs is not kept
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DATASETS = ("python_stdlib", "tinyshakespeare")


# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------


def read_text_file(path: str | Path, minimum_chars: int) -> str:
    """The text of a UTF-8 file, refused in one line if it is missing, empty, binary (not UTF-8,
    or holding NUL bytes) or shorter than ``minimum_chars``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"data.path={path} is a folder; give a UTF-8 text file (one file, e.g. {path}/input.txt)")
    if not path.is_file():
        raise ConfigError(f"data.path={path}: no such file; give a UTF-8 text file")
    raw = path.read_bytes()
    if not raw:
        raise ConfigError(f"data.path={path}: the file is empty; give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"data.path={path}: not UTF-8 text (byte {error.start} is {raw[error.start]:#04x}); "
                          f"is it a binary file? Convert it to UTF-8 text first") from None
    if "\x00" in text:
        raise ConfigError(f"data.path={path}: holds NUL characters, so it is a binary file, not text")
    _check_length(text, minimum_chars, f"data.path={path}")
    return text


def _check_length(text: str, minimum_chars: int, what: str) -> None:
    if len(text) < minimum_chars:
        raise ConfigError(f"{what}: {len(text):,} characters is too short: a validation tenth of at least "
                          f"block_size + 2 characters needs {minimum_chars:,}; give a longer text or a smaller "
                          f"model.net.block_size")


def python_stdlib_text(max_chars: int) -> tuple[str, str]:
    """The Python standard library's own source (its top-level ``.py`` files in name order,
    joined by blank lines) up to ``max_chars`` characters, and a description of it."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    parts, total, files = [], 0, 0
    for file in sorted(folder.glob("*.py")):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        total, files = total + len(text) + 2, files + 1
        if total >= max_chars:
            break
    version = ".".join(map(str, sys.version_info[:3]))
    text = "\n\n".join(parts)[:max_chars]
    if not text:
        raise ConfigError(f"no Python source found in {folder} (a Python without its .py files); "
                          f"give a text file with data.path=FILE")
    return text, f"the Python {version} standard library's source ({files} files from {folder})"


def tinyshakespeare_text(root: Path, url: str, download: bool, timeout_s: float) -> str:
    """karpathy's tiny Shakespeare from ``root/tinyshakespeare/input.txt``, downloaded there first
    if missing (once, under a lock, written atomically)."""
    folder = root / "tinyshakespeare"
    target = folder / "input.txt"
    if not target.is_file():
        if not download:
            raise ConfigError(f"data.dataset=tinyshakespeare: {target} is missing and data.download=false; "
                              f"put the file there or allow the download")
        with locked(folder / ".download.lock"):
            if not target.is_file():  # another run may have downloaded it while this one waited
                _download(url, target, timeout_s)
    try:
        return target.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"data.dataset=tinyshakespeare: {target} is not UTF-8 text; delete it to download it "
                          f"again, or train on any text with data.path=FILE") from None


def fetch(url: str, timeout_s: float) -> bytes:
    """The bytes at ``url`` (the one network access of the text data; tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read()


def check_download(data: bytes, url: str) -> None:
    """Refuse what ``url`` sent unless it is the known tiny Shakespeare (its size and SHA-256) or,
    from another ``data.url``, UTF-8 text that is not a web page."""
    what = f"data.dataset=tinyshakespeare: {url} sent"
    if url == TINY_SHAKESPEARE_URL:
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != TINY_SHAKESPEARE_BYTES or digest != TINY_SHAKESPEARE_SHA256:
            raise ConfigError(f"{what} {len(data):,} bytes with SHA-256 {digest[:12]}..., not tiny Shakespeare "
                              f"({TINY_SHAKESPEARE_BYTES:,} bytes, {TINY_SHAKESPEARE_SHA256[:12]}...); nothing was "
                              f"kept: try again later, or train on any text with data.path=FILE")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} bytes that are not UTF-8 text (byte {error.start}); nothing was kept: give a "
                          f"data.url of a UTF-8 text file, or data.path=FILE") from None
    if text.lstrip()[:15].lower().startswith(("<!doctype html", "<html")):
        raise ConfigError(f"{what} a web page, not a text file; nothing was kept: give the URL of the raw text "
                          f"file, or data.path=FILE")


def _download(url: str, target: Path, timeout_s: float) -> None:
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        data = fetch(url, timeout_s)
        if not data:
            raise ConfigError(f"data.dataset=tinyshakespeare: {url} sent an empty file")
        check_download(data, url)
        partial.write_bytes(data)
        os.replace(partial, target)  # atomic: a reader sees the whole file or none
    except (TimeoutError, urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"data.dataset=tinyshakespeare: could not download {url} ({reason}); put the file at "
                          f"{target} yourself, or train on any text with data.path=FILE") from None
    finally:
        partial.unlink(missing_ok=True)


def encode_compactly(text: str, vocabulary: str) -> Tensor:
    """The indices into ``vocabulary`` (sorted characters) of ``text``'s characters, (len(text),),
    in the smallest integer dtype that holds them (uint8 for up to 256 characters): about 5 bytes
    a character at the peak (the UTF-32 codes, then the tokens) instead of a Python int each."""
    dtype = np.uint8 if len(vocabulary) <= 256 else np.int32
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # (len(text),) code points
    table = np.zeros(ord(vocabulary[-1]) + 1, dtype=dtype)  # code point -> index
    table[[ord(character) for character in vocabulary]] = np.arange(len(vocabulary), dtype=dtype)
    return torch.from_numpy(table[codes])


# ----------------------------------------------------------------------------------------------
# Batches of windows
# ----------------------------------------------------------------------------------------------


class Windows(Dataset):
    """Windows of ``tokens`` (1-D): the item at a LongTensor of B start positions is the batch
    (inputs (B, T), targets (B, T)), targets shifted one character on."""

    def __init__(self, tokens: Tensor, block_size: int) -> None:
        self.tokens, self.offsets = tokens, torch.arange(block_size)

    def __len__(self) -> int:
        return len(self.tokens) - len(self.offsets)

    def __getitem__(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        positions = starts.unsqueeze(1) + self.offsets  # (B, T)
        return self.tokens[positions].long(), self.tokens[positions + 1].long()


class RandomStarts(Sampler[Tensor]):
    """``batches`` batches of ``batch_size`` random start positions in [0, count) an epoch, drawn
    from a generator seeded by (seed, epoch, DDP rank): a run resumed at epoch e sees the batches it
    would have seen. ``fixed=True``: the same batches every epoch (validation)."""

    def __init__(self, count: int, batch_size: int, batches: int, seed: int, fixed: bool = False) -> None:
        self.count, self.batch_size, self.batches, self.seed, self.fixed = count, batch_size, batches, seed, fixed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() \
            else 0
        epoch = 0 if self.fixed else self.epoch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 1009 + rank)
        yield from torch.randint(self.count, (self.batches, self.batch_size), generator=generator)

    def __len__(self) -> int:
        return self.batches


# ----------------------------------------------------------------------------------------------
# The DataModule
# ----------------------------------------------------------------------------------------------


class TextDataModule(LectureDataModule):
    """Character-level next-character prediction on a text (see the module's docstring).

    Training: ``steps_per_epoch`` batches of ``batch_size`` random windows an epoch; validation
    and test: the same ``val_batches`` batches of windows of the validation tenth every time (its
    loss in nats per character, as nanoGPT reports it). ``block_size``: the window's length, the
    model's context (conf/experiment/gpt.yaml sets it from the model's)."""

    def __init__(
        self,
        path: str | None = None,
        dataset: str | None = None,
        block_size: int = 64,
        batch_size: int = 12,
        steps_per_epoch: int = 250,
        val_batches: int = 50,
        val_fraction: float = 0.1,
        seed: int = 0,
        root: str | None = None,
        download: bool = True,
        download_timeout_s: float = 20,
        url: str = TINY_SHAKESPEARE_URL,
        max_chars: int = 1_100_000,
    ) -> None:
        super().__init__()
        if block_size < 1 or batch_size < 1 or steps_per_epoch < 1 or val_batches < 1 or not 0 < val_fraction < 1:
            raise ConfigError(f"need data.block_size, batch_size, steps_per_epoch, val_batches ≥ 1 and 0 < "
                              f"data.val_fraction < 1, got {block_size}, {batch_size}, {steps_per_epoch}, "
                              f"{val_batches}, {val_fraction}")
        if path is not None and dataset is not None:
            raise ConfigError(f"give data.path or data.dataset, not both (got {path} and {dataset})")
        minimum = math.ceil((block_size + 2) / val_fraction)
        if path is not None:
            path = Path(path).expanduser().resolve()  # the run's record names the file from any folder
            text, self.corpus = read_text_file(path, minimum), f"{path.name} ({path})"
        elif dataset in (None, "python_stdlib"):
            text, self.corpus = python_stdlib_text(max_chars)
            _check_length(text, minimum, "the Python standard library's source")
        elif dataset == "tinyshakespeare":
            data_root = Path(root).expanduser() if root else default_data_root()
            text = tinyshakespeare_text(data_root, url, download, download_timeout_s)
            _check_length(text, minimum, "data.dataset=tinyshakespeare")
            self.corpus = "tinyshakespeare (karpathy/char-rnn)"
        else:
            raise ConfigError(f"data.dataset={dataset!r} is not known; choose one of {', '.join(DATASETS)}, or "
                              f"give data.path=FILE")
        self.vocabulary = "".join(sorted(set(text)))
        tokens = encode_compactly(text, self.vocabulary)
        split = int(len(tokens) * (1 - val_fraction))
        self.train_tokens, self.val_tokens = tokens[:split], tokens[split:]
        self.characters = len(text)
        self.block_size, self.batch_size, self.steps_per_epoch = block_size, batch_size, steps_per_epoch
        self.val_batches, self.seed = val_batches, seed
        self.input_size, self.output_size = None, len(self.vocabulary)
        self.task, self.num_classes = "next_token", len(self.vocabulary)

    @property
    def description(self) -> str:
        return f"{self.corpus}: {self.characters:,} characters, {len(self.vocabulary)} distinct"

    def net_settings(self) -> dict:
        return {"vocab_size": len(self.vocabulary)}

    def encode(self, text: str) -> Tensor:
        index = {character: i for i, character in enumerate(self.vocabulary)}
        return torch.tensor([index[character] for character in text], dtype=torch.long)

    def decode(self, tokens) -> str:
        return "".join(self.vocabulary[int(token)] for token in tokens)

    def _loader(self, tokens: Tensor, batches: int, seed: int, fixed: bool) -> DataLoader:
        windows = Windows(tokens, self.block_size)
        sampler = RandomStarts(len(windows), self.batch_size, batches, seed, fixed)
        return DataLoader(windows, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_tokens, self.steps_per_epoch, self.seed, fixed=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_tokens, self.val_batches, seed=12_345, fixed=True)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()  # nanoGPT's split has no test part: the validation windows again

    def report(self, module) -> dict:
        return {"data/corpus": self.corpus, "data/characters": self.characters,
                "data/vocabulary_size": len(self.vocabulary)}

    def draw_figures(self, net: torch.nn.Module, figure_dir: Path) -> list[Path]:
        if not hasattr(net, "attention_weights"):
            return []
        from manualbp.training import figures

        inputs, _ = next(iter(self.val_dataloader()))
        window = inputs[:1, : min(self.block_size, 48)].to(next(net.parameters()).device)
        weights = net.attention_weights(window, layer=0)[0, 0].float().cpu()  # block 0, head 0: (T, T)
        return [figures.plot_attention_map(weights, self.decode(window[0]), figure_dir / "attention.png")]
