"""``panopticlab demo``: shapes data -> train -> evaluate -> report (:mod:`.pipeline`, :mod:`.report`)."""

from panopticlab.demo.pipeline import DEMO_CONFIG, DEMO_DATA, DemoPlan, plan_demo, run_demo
from panopticlab.demo.report import loss_curve_svg, result_lines, thing_confusion

__all__ = ["DEMO_CONFIG", "DEMO_DATA", "DemoPlan", "loss_curve_svg", "plan_demo", "result_lines", "run_demo", "thing_confusion"]
