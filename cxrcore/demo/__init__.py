"""Built-in teaching dataset: synthetic chest X-ray phantoms with known findings, boxes and patients.

    from cxrcore.demo import ensure_demo_dataset, DemoConfig
    root = ensure_demo_dataset("data/demo")            # generates only when missing or incomplete
    generate_demo_dataset("data/tiny", DemoConfig(images=100, size=128, seed=3))

Modules: config (arguments, rates, which findings are distinct), cohort (patients, labels, splits),
anatomy and findings (drawing), render (one image + boxes), generate (files), card (README.md).
"""
from __future__ import annotations

from cxrcore.demo.cohort import Cohort, plan_cohort
from cxrcore.demo.config import (DEFAULT_PREVALENCE, DISTINCT_FINDINGS, NIH_PREVALENCE, OVERLAPPING_GROUPS,
                                 DemoConfig, prevalence_from_text)
from cxrcore.demo.generate import (ensure_demo_dataset, generate_demo_dataset, is_complete, read_bbox_csv,
                                   read_marker)
from cxrcore.demo.render import Box, Case, Rendered, render_case

__all__ = [
    "Box", "Case", "Cohort", "DEFAULT_PREVALENCE", "DISTINCT_FINDINGS", "DemoConfig", "NIH_PREVALENCE",
    "OVERLAPPING_GROUPS", "Rendered", "ensure_demo_dataset", "generate_demo_dataset", "is_complete",
    "plan_cohort", "prevalence_from_text", "read_bbox_csv", "read_marker", "render_case",
]
