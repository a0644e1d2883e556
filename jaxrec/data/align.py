"""Item-ID alignment tasks for an LLM recommender (`data.align`): LC-Rec's `item2index`
(an item's title -> its ID tokens) and `index2item` (its ID tokens -> its title), mixed into
every training batch of the sequential task, as LC-Rec trains them (RUCAIBox/LC-Rec
data.py ItemFeatDataset, prompt.py: sft_prompt around item2index / index2item prompt 0; the
title stripped of ".!?,;:`" at its ends) and as SIIT adds its alignment task.

The prompts are tokenised here once per item (HF `tokenizers`, the model folder's
tokenizer); the ID tokens are placed on device from the run's current code table, so a
method that changes the IDs during training (SIIT, ETEGRec) aligns to the new ones.

Batch fields added (A alignment items per batch, X padded token lengths, P a prompt part's
length; padding always after real tokens and before a part every row has, as the sequential
task's history):
  item2index_item_A, item2index_tokens_AxX, item2index_mask_AxX, item2index_tail_AxP
      the prompt's head and the title, then the rest of the prompt up to "### Response:";
      the target is the item's ID tokens.
  index2item_item_A, index2item_head_AxP, index2item_tokens_AxX, index2item_mask_AxX,
  index2item_label_AxX
      the prompt's head before the ID; after the ID, the rest of the prompt, the title and
      EOS; `label` marks the tokens the loss is on (the title and EOS).

Items: every (seed, epoch, task) permutes the catalogue and batch j takes the next A items
of it, so with `per_batch` 0 (A = ceil(batch x items / train samples), rounded up to the
data-parallel devices) every item is seen about once per task per epoch, as LC-Rec's
concatenated data sets do; the draw depends only on (seed, epoch, batch), so a resumed run
sees the same alignment items.
"""
from __future__ import annotations

import math

import numpy as np

from jaxrec.config import ALIGN_TASKS as TASKS
from jaxrec.data.dataset import Dataset
from jaxrec.errors import DataError

SFT = ("Below is an instruction that describes a task. Write a response that appropriately "
       "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
# LC-Rec prompt.py, prompt 0 of each task: (instruction before the title / the ID, after it)
LCREC = {"item2index": ("Which item has the title: \"", "\"?"),
         "index2item": ("What is the title of item ", "?")}


def titles(ds: Dataset, fields) -> list[str]:
  """Each item's text for the prompts: its non-empty `fields` joined by "; ", stripped of
  ".!?,;:`" at the ends (LC-Rec's title clean-up). A clear error names the item without."""
  if ds.item_text is None:
    raise DataError(ds.name, None, "data.align.tasks need item text (LETTER format: "
                    "<name>.item.json; RecBole: <name>.item columns); this data set has none "
                    "(or run without them: --config.data.align.tasks='()')")
  out = []
  for i, attrs in enumerate(ds.item_text):
    parts = [str(attrs[f]).strip() for f in fields if attrs and str(attrs.get(f, "")).strip()]
    text = "; ".join(parts).strip().strip(".!?,;:`")
    if not text:
      key = ds.item_keys[i] if ds.item_keys is not None else i
      raise DataError(ds.name, f"item {key!r}", f"has no text in data.align.fields "
                      f"{list(fields)} (it has {sorted(attrs or {})})")
    out.append(text)
  return out


def _pad(rows: list, width: int):
  tok = np.zeros((len(rows), width), np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    tok[i, :len(r)] = r
    mask[i, :len(r)] = True
  return tok, mask


def item_arrays(texts: list[str], tokenizer, eos: int, tasks, max_tokens: int,
                templates=None, sft: str = SFT) -> dict[str, np.ndarray]:
  """Per-item token arrays [N, ...] of each task (the batch fields without `_item` and with
  N rows); each title cut to its first `max_tokens` tokens. `templates`: task -> (the text
  before the title / ID, after it) inside `sft`'s {instruction} (LC-Rec's by default).
  The prompt's pieces are tokenised one by one, as the sequential task's prompt is."""
  templates = templates or LCREC
  head_text, tail_text = sft.split("{instruction}")
  enc = lambda text, special=False: (list(tokenizer.encode(text, add_special_tokens=special).ids)
                                     if text else [])
  title_ids = [enc(t)[:max_tokens] for t in texts]
  out = {}
  for task in tasks:
    before, after = templates[task]
    head, tail = enc(head_text + before, True), enc(after + tail_text)
    if task == "item2index":      # the tail after the padding: the ID follows it directly
      tok, mask = _pad([head + t for t in title_ids], len(head) + max_tokens)
      out.update(item2index_tokens=tok, item2index_mask=mask,
                 item2index_tail=np.tile(np.asarray(tail, np.int32), (len(texts), 1)))
    elif task == "index2item":
      rows = [tail + t + [eos] for t in title_ids]
      tok, mask = _pad(rows, len(tail) + max_tokens + 1)
      label = mask.copy()
      label[:, :len(tail)] = False
      out.update(index2item_head=np.tile(np.asarray(head, np.int32), (len(texts), 1)),
                 index2item_tokens=tok, index2item_mask=mask, index2item_label=label)
    else:
      raise ValueError(f"unknown alignment task {task!r} (one of {TASKS})")
  return out


def per_batch(requested: int, batch_size: int, n_items: int, n_train: int, multiple: int) -> int:
  """Alignment items per batch: `requested`, or LC-Rec's share (every item once per epoch)
  when 0; rounded up to a multiple of the data-parallel devices."""
  a = requested or math.ceil(batch_size * n_items / max(n_train, 1))
  return -(-a // multiple) * multiple


class Sampler:
  """The alignment rows of training batch `index` of `epoch` ({field: [A(this process's
  rows), ...]}); a callable for `BatchIterator(extra=...)`."""

  def __init__(self, arrays: dict, tasks, n_items: int, per_batch: int, seed: int,
               rows: slice = slice(None)):
    self.arrays, self.tasks, self.n, self.a, self.seed = arrays, tuple(tasks), n_items, per_batch, seed
    self.rows = rows
    self._perm = {}

  def items(self, task: str, epoch: int, index: int) -> np.ndarray:
    key = (task, epoch)
    if key not in self._perm:
      self._perm = {k: v for k, v in self._perm.items() if k[1] == epoch}   # one epoch kept
      self._perm[key] = np.random.default_rng(
          [self.seed, epoch, TASKS.index(task), 7]).permutation(self.n)
    return self._perm[key][(index * self.a + np.arange(self.a)) % self.n].astype(np.int32)

  def __call__(self, epoch: int, index: int) -> dict:
    out = {}
    for task in self.tasks:
      out.update(batch_fields(self.arrays, task, self.items(task, epoch, index)[self.rows]))
    return out


def batch_fields(arrays: dict, task: str, items) -> dict:
  """A task's batch fields (the module docstring's) for alignment items `items` [A], from
  `item_arrays`' per-item arrays."""
  out = {f"{task}_item_A": items}
  for name, table in arrays.items():
    if name.startswith(task + "_"):
      out[name + ("_AxP" if name.endswith(("_head", "_tail")) else "_AxX")] = table[items]
  return out
