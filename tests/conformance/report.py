"""`make conformance`: % of rows identical to LLaMA-Factory 0.9.5's preprocessing, per template x variant.

Usage: python tests/conformance/report.py [--show-diffs] [TEMPLATE ...]
(defaults: every template both kubetune and LLaMA-Factory have). Exit status 1 if LLaMA-Factory's
venv is missing; the table is printed either way it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from cases import VARIANTS  # noqa: E402
from cases_dataset import DATASET_VARIANTS  # noqa: E402
from harness import compare_all, lf_available, lf_template_plugins  # noqa: E402

from kubetune.data.named_templates import TEMPLATE_NAMES  # noqa: E402
from kubetune.model.embedded import embedded_model_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("templates", nargs="*")
    parser.add_argument("--show-diffs", action="store_true", help="print the first differing row of each case")
    args = parser.parse_args()
    logging.getLogger("kubetune").setLevel(logging.ERROR)  # the SmolLM2 tokenizer lacks most families' tokens
    if not lf_available():
        print("LLaMA-Factory's venv (tools/lf-venv) is missing: run `make bench` or `make conformance`")
        return 1
    started = time.time()
    lf_names = sorted(lf_template_plugins())
    templates = args.templates or [t for t in TEMPLATE_NAMES if t in lf_names]
    results = compare_all(embedded_model_dir(), templates)
    variants = [v for v, _, _ in VARIANTS] + [v for v, _, _ in DATASET_VARIANTS]
    width = max(len(t) for t in templates) + 2
    print("template".ljust(width) + "".join(v[:18].rjust(20) for v in variants))
    cells = {(r.template, r.variant): r for r in results}
    same = total = 0
    for template in templates:
        line = template.ljust(width)
        for variant in variants:
            r = cells[(template, variant)]
            same, total = same + r.identical, total + r.total
            line += (f"{100 * r.identical / r.total:.0f}%" if r.total else "LF refuses").rjust(20)
        print(line)
    print(f"\n{same}/{total} comparable rows identical ({100 * same / max(total, 1):.1f}%) over {len(templates)} "
          f"templates, {time.time() - started:.0f}s")
    missing = [n for n in lf_names if n not in TEMPLATE_NAMES]
    print(f"LLaMA-Factory templates kubetune lacks ({len(missing)}): {', '.join(missing)}")
    if args.show_diffs:
        for r in results:
            if r.first_difference:
                print(f"\n--- {r.template}/{r.variant}: {r.first_difference}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
