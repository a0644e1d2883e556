"""data.align (jaxrec/data/align.py): LC-Rec's item2index / index2item prompts per item, the
alignment items of each batch, and their losses on the decoder (known answers on the tiny
Qwen2 of tests/fixtures/hf)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import align
from jaxrec.data import from_sequences
from jaxrec.errors import DataError
from jaxrec.recommender import decoder_steps, hf
from jaxrec.recommender.decoder import Decoder
from jaxrec.recommender.steps import code_loss

QWEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf", "qwen2")
# the tiny tokenizer's words: please 24, answer 25, what 14, is 15, item 18, the 16, next 17,
# ? 19, : 12 (WordLevel, whitespace split)
SFT = "please answer {instruction} :"
TEMPLATES = {"item2index": ("what item is", "?"), "index2item": ("what is", "?")}


def _arrays(texts, max_tokens=4):
  return align.item_arrays(texts, hf.tokenizer(QWEN), 2, align.TASKS, max_tokens, TEMPLATES, SFT)


def test_prompts_per_item_are_the_templates_tokenised():
  a = _arrays(["the next item", "item item item item item"])
  # item2index: head and title (padded), then the tail that the ID follows
  np.testing.assert_array_equal(a["item2index_tokens"][0], [24, 25, 14, 18, 15, 16, 17, 18, 0])
  np.testing.assert_array_equal(a["item2index_mask"][0], [1] * 8 + [0])
  np.testing.assert_array_equal(a["item2index_tokens"][1], [24, 25, 14, 18, 15] + [18] * 4)  # cut at 4
  np.testing.assert_array_equal(a["item2index_tail"], [[19, 12]] * 2)
  # index2item: head before the ID; after it the tail, the title and EOS, the loss on those
  np.testing.assert_array_equal(a["index2item_head"], [[24, 25, 14, 15]] * 2)
  np.testing.assert_array_equal(a["index2item_tokens"][0], [19, 12, 16, 17, 18, 2, 0])
  np.testing.assert_array_equal(a["index2item_label"][0], [0, 0, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(a["index2item_mask"][0], [1, 1, 1, 1, 1, 1, 0])


def test_titles_are_cleaned_and_a_missing_one_is_named():
  ds = from_sequences("toy", [[0, 1, 2]], 3, item_keys=["a", "b", "c"],
                      item_text=[{"title": "Strings!"}, {"title": " Picks, "}, {"brand": "x"}])
  with pytest.raises(DataError, match="item 'c'.*has no text in data.align.fields"):
    align.titles(ds, ("title",))
  ds.item_text[2]["title"] = "`Capo`"
  assert align.titles(ds, ("title",)) == ["Strings", "Picks", "Capo"]


def test_each_item_once_per_epoch_and_the_same_after_a_restore():
  n, a = 10, 4
  s = align.Sampler({}, ("item2index",), n, a, seed=3)
  epoch = np.concatenate([s(1, j)["item2index_item_A"] for j in range(3)])
  assert sorted(epoch[:n]) == list(range(n))                       # a permutation, then wraps
  again = align.Sampler({}, ("item2index",), n, a, seed=3)        # e.g. a resumed run
  np.testing.assert_array_equal(again(1, 2)["item2index_item_A"], epoch[8:])
  assert not np.array_equal(s(2, 0)["item2index_item_A"], epoch[:a])   # a new epoch, a new order
  half = align.Sampler({}, ("item2index",), n, a, seed=3, rows=slice(2, 4))   # process 1 of 2
  np.testing.assert_array_equal(half(1, 0)["item2index_item_A"], epoch[2:4])
  assert align.per_batch(0, 64, 100, 1000, 2) == 8 and align.per_batch(0, 64, 100, 1000, 1) == 7


def test_losses_are_the_teacher_forced_ones_of_the_whole_prompt():
  """Each task's loss equals the model's on the unpadded sequence written out by hand:
  the code loss of the ID after the title prompt; the title's and EOS's cross-entropy over
  the vocabulary after the ID prompt (not the prompt's own tokens)."""
  cfg = hf.decoder_config(QWEN, (8, 8))
  model = Decoder(cfg)
  codes = jnp.asarray([[1, 2], [3, 4], [5, 6]], jnp.int32)
  a = _arrays(["the next item", "item", "next next"])
  params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool))
  items = np.array([2, 0])
  batch = {**align.batch_fields(a, "item2index", items),
           **align.batch_fields(a, "index2item", items)}
  got = jax.jit(lambda p, b: decoder_steps.align_losses(p, model, b, codes, False))(params, batch)
  off = np.asarray(cfg.offsets)
  i2i, i2t = [], []
  for row, i in enumerate(items):
    real = a["item2index_tokens"][i][a["item2index_mask"][i]]
    seq = np.concatenate([real, a["item2index_tail"][i], codes[i, :-1] + off[:-1]])[None]
    hidden, _, _ = model.apply(params, jnp.asarray(seq), jnp.ones(seq.shape, bool))
    logits = model.apply(params, hidden[:, -2:], np.arange(2), method=Decoder.logits)
    i2i.append(code_loss(logits, codes[i][None], jnp.ones(1))[0])
    rest = a["index2item_tokens"][i][a["index2item_mask"][i]]
    seq = np.concatenate([a["index2item_head"][i], codes[i] + off, rest[:-1]])[None]
    hidden, _, _ = model.apply(params, jnp.asarray(seq), jnp.ones(seq.shape, bool))
    logp = jax.nn.log_softmax(model.apply(params, hidden[0], method=Decoder.vocab_logits))
    title = slice(len(a["index2item_head"][i]) + 2 + 1, None)   # after the ID and '? :'
    i2t.append(-logp[np.arange(seq.shape[1])[title], rest[2:]])
  np.testing.assert_allclose(got["item2index"], np.mean(i2i), rtol=1e-5)
  np.testing.assert_allclose(got["index2item"], np.mean(np.concatenate(i2t)), rtol=1e-5)


def test_the_tasks_need_an_llm_and_known_names():
  import tiger
  from jaxrec.config import config_problems
  cfg = tiger.get_config("tiny")
  cfg.data.align.tasks = ("item2index", "title2id")
  problems = config_problems(cfg)
  assert any("'title2id' is not one of item2index, index2item" in p for p in problems)
  assert any("prompts for a pretrained LLM recommender" in p for p in problems)
  import letter
  cfg = letter.get_config("tiny_lcrec")
  cfg.data.align.tasks = ("index2item",)
  assert config_problems(cfg) == []
