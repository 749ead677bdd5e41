"""Batched speculative decoding of ragged prompts: every row equals its own decoding."""

import pytest
import torch
from conftest import VOCAB

from hybridspec_lite import make_draft, speculative_generate
from hybridspec_lite.drafts import Draft

PROMPTS = [[5, 9, 12, 3, 7, 30, 2, 44, 8], [17], [6, 21, 40, 11], [33, 2, 9, 9, 60, 14]]


def reference(model, prompt, max_new_tokens, eos_token_id=None):
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos_token_id, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def drafts_for(family):
    found = [("early-exit", dict(exit_layer=1))]
    if family != "qwen2":
        found += [("component", dict(state="shared")), ("component", dict(state="own"))]
    return found


@pytest.mark.parametrize("k", (1, 3))
def test_rows_equal_single_prompt_runs(tiny_model, family, k):
    expected = [reference(tiny_model, p, 16) for p in PROMPTS]
    for kind, options in drafts_for(family):
        out = speculative_generate(tiny_model, PROMPTS, make_draft(kind, **options), k=k, max_new_tokens=16)
        for row, want in enumerate(expected):
            assert out.tokens[row] == want, f"{kind} {options} row {row}"
            single = speculative_generate(tiny_model, [PROMPTS[row]], make_draft(kind, **options), k=k, max_new_tokens=16)
            assert single.tokens[0] == want


class OracleDraft(Draft):
    """Proposes the target's own greedy continuation for chosen rows and a wrong token for the rest."""

    def __init__(self, continuations, prompts, wrong_rows):
        self.continuations = continuations
        self.prompt_lengths = [len(p) for p in prompts]
        self.wrong_rows = wrong_rows

    def propose(self, adapter, state, last_cached, pending, k, sampler):
        rows = []
        for row in range(pending.shape[0]):
            # Tokens generated so far: valid cache length minus prompt, plus the pending one.
            done = int(state.lengths[row]) - self.prompt_lengths[row] + 1
            truth = self.continuations[row][done : done + k]
            truth = truth + [0] * (k - len(truth))
            if row in self.wrong_rows:
                truth = [(truth[0] + 1) % VOCAB] + truth[1:]
            rows.append(truth)
        return torch.tensor(rows, dtype=torch.long), None


def test_one_row_accepts_all_another_none(tiny_model):
    budget = 14
    expected = [reference(tiny_model, p, budget + 8) for p in PROMPTS]
    draft = OracleDraft(expected, PROMPTS, wrong_rows={1})
    out = speculative_generate(tiny_model, PROMPTS, draft, k=3, max_new_tokens=budget)
    for row, want in enumerate(expected):
        assert out.tokens[row] == want[:budget]
    # Every round of row 0 accepted all drafts while row 1 accepted none in the same rounds.
    assert out.rows[0].alpha == 1.0
    assert out.rows[1].alpha == 0.0
    assert out.rows[1].rounds >= 3


def test_rows_end_at_their_own_eos_and_budget(tiny_model):
    expected = [reference(tiny_model, p, 16) for p in PROMPTS]
    eos = expected[0][3]
    out = speculative_generate(tiny_model, PROMPTS, make_draft("self"), k=4, max_new_tokens=16, eos_token_id=eos)
    for row, want in enumerate(expected):
        cut = want.index(eos) + 1 if eos in want else len(want)
        assert out.tokens[row] == want[:cut], f"row {row}"
        assert out.finished_by_eos[row] == (eos in want)
        assert out.tokens[row] == reference(tiny_model, PROMPTS[row], 16, eos_token_id=eos)


def test_cache_stays_within_bound(tiny_model, family):
    kind, options = drafts_for(family)[-1]
    k, slack = 3, 8
    sizes = []

    def record(state, tokens):
        sizes.append((state.num_slots, int(state.lengths.max())))

    speculative_generate(tiny_model, PROMPTS, make_draft(kind, **options), k=k, max_new_tokens=40,
                         compaction_slack=slack, on_round=record)
    assert len(sizes) > 5
    for slots, longest in sizes:
        assert slots <= longest + slack
