"""A short session on the real server (tools/long_session.py): 12 prompts queued at once, every kind
of bad prompt interleaved with two kinds of good ones that between them mix both adapters, weights
(negative, a weight type, K+V), masks and a chain; then a prompt cancelled mid-sampling.

Good prompts must equal the same prompt run alone on a freshly started server, bad ones must end
with their message, and the server must keep serving. Each distinct good prompt costs a fresh
server (about 20 s here), hence two kinds; the 100-prompt run with all four kinds, and resident
memory, is benchmarks/long_session.py.
"""

from __future__ import annotations

import pytest

from tools import session_prompts
from tools.embedded_models import build_embedded_models
from tools.long_session import MODEL_FILES, run_session

GOOD_KINDS = ("chain", "weighted")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    models = build_embedded_models(only=MODEL_FILES)
    return run_session(models, tmp_path_factory.mktemp("long-session"), count=12, seeds=(7,), good_kinds=GOOD_KINDS)


@pytest.mark.slow
def test_every_good_prompt_equals_its_run_alone_on_a_fresh_server(report):
    good = [o for o in report.outcomes if o.expected_error is None]
    assert sorted(o.kind for o in good) == ["chain"] * 3 + ["weighted"] * 3
    assert report.fresh_count == 2
    for outcome in good:
        assert outcome.status == "image", outcome.record()
        assert outcome.sampler_ran, f"prompt {outcome.index} took its sampler's result from the cache: nothing was checked"
        assert outcome.equals_fresh, f"prompt {outcome.index} ({outcome.kind}) differs from the same prompt alone on a fresh server"


@pytest.mark.slow
def test_every_bad_prompt_ends_with_its_message(report):
    bad = [o for o in report.outcomes if o.expected_error is not None]
    assert sorted({o.kind for o in bad}) == sorted(session_prompts.BAD_KINDS) and len(bad) == 6
    for outcome in bad:
        assert outcome.status in ("rejected", "failed") and outcome.expected_error in outcome.message, outcome.record()
    missing = [o for o in bad if o.kind == "missing_file"]
    assert all(o.status == "rejected" for o in missing)  # refused when queued, before anything runs
    assert all(o.status == "failed" for o in bad if o.kind != "missing_file")  # our error, before sampling


@pytest.mark.slow
def test_a_prompt_cancelled_mid_sampling_leaves_nothing_behind(report):
    interrupt = report.interrupt
    assert interrupt.outcome.status == "interrupted" and interrupt.outcome.message == "interrupted in node sampler"
    assert 2 <= interrupt.steps_before_interrupt < interrupt.total_steps  # cancelled after two steps, long before the end
    following = interrupt.next_outcome
    assert following.status == "image" and following.sampler_ran and following.equals_fresh, following.record()
