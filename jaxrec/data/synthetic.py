"""A synthetic data set with planted structure, the default that always works.

Items belong to a two-level topic hierarchy (topic -> subtopic). Each item's content
embedding is drawn around its topic and subtopic centres. Users prefer a few topics and
move along a subtopic-level Markov chain (each subtopic has a few likely successors),
with some noise; within a subtopic, items are drawn by a Zipf popularity. A model that
learns the transitions therefore beats popularity by a wide margin, and a tokenizer that
recovers the hierarchy gives codes that mean something.

Features: "content" (content embedding, `content_dim`) and "cf" (a collaborative
embedding planted from the transition structure: items whose subtopics have similar
successor distributions are close; `cf_dim`), both float32 [N, D]. `data.features`
keeps a subset; a `cf` left out is then derived from the interactions by SASRec, as on
a real data set (jaxrec/pipeline.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxrec.data.dataset import Dataset, from_sequences


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  n_users: int = 3000
  n_items: int = 2000
  n_topics: int = 8
  n_subtopics: int = 6          # per topic
  n_successors: int = 3         # likely next subtopics of each subtopic
  preferred_topics: int = 2     # per user
  noise: float = 0.15           # chance a step jumps to a random subtopic of a preferred topic
  mean_length: float = 9.0      # mean sequence length (min_length + geometric)
  min_length: int = 5
  max_length: int = 60
  zipf: float = 0.8             # within-subtopic popularity exponent
  content_dim: int = 64
  cf_dim: int = 32
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Structure:
  """The planted ground truth: used by the oracle and by tests."""
  subtopic_N: np.ndarray       # int32 [N] subtopic of each item
  transition_SxS: np.ndarray   # float64 [S, S] chain used when not jumping
  popularity_N: np.ndarray     # float64 [N] probability of an item within its subtopic
  user_topics_UxP: np.ndarray  # int32 [U, P]
  spec: SyntheticSpec


def generate(spec: SyntheticSpec = SyntheticSpec()) -> tuple[Dataset, Structure]:
  """Generates the data set deterministically from `spec.seed`."""
  rng = np.random.default_rng(spec.seed)
  n_sub = spec.n_topics * spec.n_subtopics
  topic_of_sub = np.repeat(np.arange(spec.n_topics), spec.n_subtopics)
  subtopic = rng.permutation(np.arange(spec.n_items) % n_sub).astype(np.int32)

  # Zipf popularity within each subtopic.
  popularity = np.zeros(spec.n_items)
  for s in range(n_sub):
    members = np.flatnonzero(subtopic == s)
    w = 1.0 / np.arange(1, len(members) + 1) ** spec.zipf
    popularity[rng.permutation(members)] = w / w.sum()

  # Sparse chain: successors mostly inside the same topic, one elsewhere.
  transition = np.zeros((n_sub, n_sub))
  for s in range(n_sub):
    same = np.flatnonzero(topic_of_sub == topic_of_sub[s])
    other = np.flatnonzero(topic_of_sub != topic_of_sub[s])
    same = same[same != s]
    succ = list(rng.choice(same, min(spec.n_successors - 1, len(same)), replace=False))
    if len(other):
      succ.append(rng.choice(other))
    if not succ:
      succ = [s]
    transition[s, succ] = rng.dirichlet(np.full(len(succ), 2.0))

  # Content embeddings around topic and subtopic centres.
  topic_c = rng.normal(0.0, 1.0, (spec.n_topics, spec.content_dim))
  sub_c = topic_c[topic_of_sub] + rng.normal(0.0, 0.5, (n_sub, spec.content_dim))
  content = sub_c[subtopic] + rng.normal(0.0, 0.25, (spec.n_items, spec.content_dim))
  # Collaborative embeddings planted from the successor structure.
  proj = rng.normal(0.0, 1.0 / np.sqrt(n_sub), (n_sub, spec.cf_dim))
  sub_cf = (transition + 0.5 * np.eye(n_sub)) @ proj
  cf = sub_cf[subtopic] + rng.normal(0.0, 0.05, (spec.n_items, spec.cf_dim))

  members = [np.flatnonzero(subtopic == s) for s in range(n_sub)]
  member_p = [popularity[m] for m in members]
  user_topics = np.stack([rng.choice(spec.n_topics, spec.preferred_topics, replace=False)
                          for _ in range(spec.n_users)]).astype(np.int32)
  p_geo = 1.0 / max(1.0, spec.mean_length - spec.min_length + 1)
  lengths = np.minimum(spec.min_length + rng.geometric(p_geo, spec.n_users) - 1, spec.max_length)
  seqs = []
  for u in range(spec.n_users):
    pref_subs = np.flatnonzero(np.isin(topic_of_sub, user_topics[u]))
    s = rng.choice(pref_subs)
    seq = []
    for _ in range(lengths[u]):
      item = rng.choice(members[s], p=member_p[s])
      if seq and item == seq[-1]:
        item = rng.choice(members[s], p=member_p[s])
      seq.append(int(item))
      if rng.random() < spec.noise:
        s = rng.choice(pref_subs)
      else:
        s = rng.choice(n_sub, p=transition[s])
    seqs.append(seq)
  ds = from_sequences(
      "synthetic", seqs, spec.n_items,
      features={"content": content.astype(np.float32), "cf": cf.astype(np.float32)})
  return ds, Structure(subtopic, transition, popularity, user_topics, spec)


def oracle_scores(structure: Structure, last_items: np.ndarray) -> np.ndarray:
  """Next-item probabilities under the generating process, given each user's last item
  (ignoring the user's preferred topics, so it is an upper-bound-ish, not exact, scorer)."""
  n_sub = structure.transition_SxS.shape[0]
  sub_next = (1 - structure.spec.noise) * structure.transition_SxS[structure.subtopic_N[last_items]]
  sub_next += structure.spec.noise / n_sub
  del n_sub
  return sub_next[:, structure.subtopic_N] * structure.popularity_N[None, :]
