"""kubetune's rows equal LLaMA-Factory 0.9.5's own preprocessing, row by row, for every template both have.

LLaMA-Factory runs in its own venv (tools/lf-venv, installed by `make bench` / `make conformance`), in
one subprocess for all cases (its answer is cached under .cache/conformance). Skipped without that venv.
"""

from __future__ import annotations

import pytest
from cases import VARIANTS
from harness import compare_all, lf_available, lf_template_plugins

from kubetune.data.named_templates import NAMED_TEMPLATES, TEMPLATE_NAMES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not lf_available(), reason="LLaMA-Factory's venv tools/lf-venv is absent (make conformance installs it)"
    ),
]

# Deliberate differences, with the reason (also in the README's Templates section).
DELIBERATE = {
    # LF labels the row's first token EOS when an efficient_eos template is used with mask_history, and the
    # ends of the masked history answers too; kubetune learns only the last answer and its EOS.
    "sft_mask_history": lambda t: t.efficient_eos,
}


@pytest.fixture(scope="module")
def results(smollm2_dir):
    names = lf_template_plugins()
    return compare_all(smollm2_dir, [t for t in TEMPLATE_NAMES if t in names])


def test_every_comparable_row_is_identical(results):
    different = []
    for r in results:
        deliberate = DELIBERATE.get(r.variant, lambda t: False)(NAMED_TEMPLATES[r.template])
        if r.identical != r.total and not deliberate:
            different.append(f"{r.template}/{r.variant}: {r.identical}/{r.total} identical; {r.first_difference}")
    assert not different, "\n".join(different)


def test_the_comparison_covers_every_variant_of_most_templates(results):
    # A template LF cannot run on this tokenizer (its multimodal processor is missing) is not compared;
    # the rest must be, under every variant.
    compared = {r.template for r in results if r.total}
    assert len(compared) >= 60
    assert {r.variant for r in results if r.total} == {v for v, _, _ in VARIANTS}
