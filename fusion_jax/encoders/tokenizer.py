"""BERT WordPiece tokenization from a Hugging Face ``tokenizer.json``, in pure Python.

Implements what all-MiniLM-L6-v2's ``tokenizer.json`` declares (and what
``tokenizers``' ``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` +
``[CLS] A [SEP]`` template do): clean control characters, space out CJK
characters, lowercase and strip accents, split on whitespace and punctuation,
greedy longest-match-first word pieces with ``##`` continuations.

Unlike the file's own setting (pad every line to 128), :meth:`encode`
returns only the real tokens; padding is added, and masked, at batch time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import unicodedata
from typing import Sequence

from fusion_jax.data.errors import DataError
from fusion_jax.errors import MissingDependency


def _is_whitespace(ch: str) -> bool:
  return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
  if ch in "\t\n\r":
    return False
  return unicodedata.category(ch) in ("Cc", "Cf", "Cn", "Co", "Cs")


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
  return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
          or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
          or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


@dataclasses.dataclass
class WordPieceTokenizer:
  """A BERT (uncased) WordPiece tokenizer.

  Attributes:
    vocab: token → id.
    lowercase, strip_accents, handle_chinese_chars, clean_text: normalizer settings.
    max_length: most tokens per line, ``[CLS]`` and ``[SEP]`` included.
    max_chars_per_word: longer words become ``[UNK]``.
  """
  vocab: dict
  lowercase: bool = True
  strip_accents: bool = True
  handle_chinese_chars: bool = True
  clean_text: bool = True
  max_length: int = 128
  max_chars_per_word: int = 100
  unk_token: str = "[UNK]"
  cls_token: str = "[CLS]"
  sep_token: str = "[SEP]"
  prefix: str = "##"

  @classmethod
  def from_file(cls, path) -> "WordPieceTokenizer":
    """Reads a Hugging Face ``tokenizer.json`` of a BERT WordPiece model."""
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    except (OSError, ValueError) as e:
      raise DataError(path, f"cannot read tokenizer ({e})") from None
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
      raise DataError(path, f"expected a WordPiece model, got {model.get('type')!r}",
                      field="model.type")
    norm = spec.get("normalizer") or {}
    lowercase = bool(norm.get("lowercase", True))
    strip = norm.get("strip_accents")
    trunc = spec.get("truncation") or {}
    return cls(vocab=dict(model["vocab"]), lowercase=lowercase,
               strip_accents=lowercase if strip is None else bool(strip),
               handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
               clean_text=bool(norm.get("clean_text", True)),
               max_length=int(trunc.get("max_length", 512)),
               max_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
               unk_token=model.get("unk_token", "[UNK]"),
               prefix=model.get("continuing_subword_prefix", "##"))

  def normalize(self, text: str) -> str:
    out = []
    for ch in text:
      cp = ord(ch)
      if self.clean_text:
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
          continue
        if _is_whitespace(ch):
          ch = " "
      if self.handle_chinese_chars and _is_cjk(cp):
        out.append(f" {ch} ")
      else:
        out.append(ch)
    text = "".join(out)
    if self.strip_accents:
      text = "".join(c for c in unicodedata.normalize("NFD", text)
                     if unicodedata.category(c) != "Mn")
    if self.lowercase:
      text = text.lower()
    return text

  def pre_tokenize(self, text: str) -> list:
    words, current = [], []
    for ch in text:
      if _is_whitespace(ch):
        if current:
          words.append("".join(current))
          current = []
      elif _is_punctuation(ch):
        if current:
          words.append("".join(current))
          current = []
        words.append(ch)
      else:
        current.append(ch)
    if current:
      words.append("".join(current))
    return words

  def word_pieces(self, word: str) -> list:
    if len(word) > self.max_chars_per_word:
      return [self.unk_token]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else self.prefix + word[start:end]
        if piece in self.vocab:
          break
        end -= 1
      if end == start:
        return [self.unk_token]
      pieces.append(piece)
      start = end
    return pieces

  def tokenize(self, text: str) -> list:
    """Word pieces of one line, without special tokens or truncation."""
    return [p for w in self.pre_tokenize(self.normalize(text)) for p in self.word_pieces(w)]

  def encode(self, text: str) -> list:
    """Token ids ``[CLS] pieces [SEP]``, truncated to ``max_length``."""
    pieces = self.tokenize(text)[:max(self.max_length - 2, 0)]
    return ([self.vocab[self.cls_token]] + [self.vocab[p] for p in pieces]
            + [self.vocab[self.sep_token]])

  def encode_pair(self, text: str, context: str) -> tuple:
    """``[CLS] text [SEP] context [SEP]`` ids and their segment ids (0, then 1 from the
    context on), truncated to ``max_length``: the line keeps its pieces first, the context
    keeps its *last* pieces (the lines nearest the current one)."""
    pieces = self.tokenize(text)[:max(self.max_length - 3, 0)]
    budget = max(self.max_length - 3 - len(pieces), 0)
    ctx = self.tokenize(context)
    ctx = ctx[max(len(ctx) - budget, 0):] if budget else []
    first = [self.vocab[self.cls_token]] + [self.vocab[p] for p in pieces] + [
        self.vocab[self.sep_token]]
    second = [self.vocab[p] for p in ctx] + [self.vocab[self.sep_token]]
    return first + second, [0] * len(first) + [1] * len(second)

  def encode_batch(self, texts: Sequence[str]) -> list:
    return [self.encode(t) for t in texts]


class HFTokenizer:
  """A snapshot's own tokenizer run by Hugging Face's ``tokenizers`` package (byte-level BPE
  for RoBERTa, SentencePiece-Unigram for XLM-R, WordPiece for BERT), with the interface of
  :class:`WordPieceTokenizer`: :meth:`encode`, :meth:`encode_pair`, ``max_length``.

  The file's own padding and truncation are switched off: lines are truncated here (to
  ``max_length`` tokens, specials included) and padded, and masked, at batch time.
  """

  def __init__(self, tokenizer, max_length: int, source: str):
    self._tok, self.max_length, self.source = tokenizer, int(max_length), source
    self._tok.no_padding()
    self._tok.no_truncation()

  @classmethod
  def from_snapshot(cls, folder: str, model_type: str, max_positions: int) -> "HFTokenizer":
    """``tokenizer.json``, else RoBERTa's ``vocab.json`` + ``merges.txt`` or BERT's
    ``vocab.txt``; ``max_length``: ``tokenizer_config.json``'s ``model_max_length`` capped
    by the positions the model has.

    Raises:
      MissingDependency: ``tokenizers`` is not installed.
      DataError: no tokenizer file in the folder, or an unreadable one.
    """
    try:
      import tokenizers  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise MissingDependency("Hugging Face text models need the tokenizers package: "
                              "bash scripts/setup.sh --features (or pip install "
                              "tokenizers==0.23.3)") from None
    f = lambda name: os.path.join(folder, name)
    try:
      if os.path.isfile(f("tokenizer.json")):
        tok, source = tokenizers.Tokenizer.from_file(f("tokenizer.json")), f("tokenizer.json")
      elif os.path.isfile(f("vocab.json")) and os.path.isfile(f("merges.txt")):
        bpe = tokenizers.ByteLevelBPETokenizer(f("vocab.json"), f("merges.txt"))
        tok, source = bpe._tokenizer, f("vocab.json")  # pylint: disable=protected-access
        tok.post_processor = tokenizers.processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
      elif os.path.isfile(f("vocab.txt")):
        wp = tokenizers.BertWordPieceTokenizer(f("vocab.txt"), lowercase=True)
        tok, source = wp._tokenizer, f("vocab.txt")  # pylint: disable=protected-access
      else:
        raise DataError(folder, f"no tokenizer: none of tokenizer.json, vocab.json + "
                        f"merges.txt, vocab.txt (a {model_type} snapshot needs one)",
                        hint="download the snapshot's tokenizer files too")
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (tokenizers raises plain Exception)
      raise DataError(folder, f"unreadable tokenizer ({e})") from None
    limit = max_positions
    if os.path.isfile(f("tokenizer_config.json")):
      with open(f("tokenizer_config.json"), encoding="utf-8") as fh:
        declared = json.load(fh).get("model_max_length")
      if isinstance(declared, (int, float)) and 0 < declared < limit:
        limit = int(declared)
    return cls(tok, limit, source)

  def _special(self, pair: bool) -> int:
    return self._tok.num_special_tokens_to_add(pair)

  def encode(self, text: str) -> list:
    """Token ids with the model's specials (``<s> … </s>``, ``[CLS] … [SEP]``), truncated."""
    enc = self._tok.encode(text, add_special_tokens=False)
    enc.truncate(max(self.max_length - self._special(False), 0))
    return list(self._tok.post_process(enc, None, True).ids)

  def encode_pair(self, text: str, context: str) -> tuple:
    """``text`` and ``context`` as the model's pair (segment ids 0 then 1 where the model
    has token types): the line keeps its tokens first, the context its *last* tokens."""
    a = self._tok.encode(text, add_special_tokens=False)
    a.truncate(max(self.max_length - self._special(True), 0))
    budget = max(self.max_length - self._special(True) - len(a.ids), 0)
    b = self._tok.encode(context, add_special_tokens=False)
    if len(b.ids) > budget:
      b.truncate(budget, direction="left")
    out = self._tok.post_process(a, b, True)
    return list(out.ids), list(out.type_ids)
