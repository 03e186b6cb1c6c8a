"""Hook that draws the run's learning curve (loss and AP vs iteration) when training ends."""
import logging
import os

from detectron2.engine import HookBase

logger = logging.getLogger(__name__)

LEARNING_CURVE_FILE = "learning_curve.png"


class LearningCurveHook(HookBase):
    """
    After training, read ``OUTPUT_DIR/metrics.json`` and write ``OUTPUT_DIR/learning_curve.png``.

    Must come after Detectron2's ``PeriodicWriter`` in the hook list, so that the last metrics
    are flushed before they are read. A plotting failure is logged, never raised: the trained
    model matters more than its picture.

    Args:
        output_dir (str): the run's ``OUTPUT_DIR``.
    """

    def __init__(self, output_dir):
        self._output_dir = output_dir

    def after_train(self):
        from ..utils.curves import plot_single_run

        out_png = os.path.join(self._output_dir, LEARNING_CURVE_FILE)
        try:
            plot_single_run(self._output_dir, out_png)
        except Exception as e:  # noqa: BLE001 -- see class docstring
            logger.warning("Could not draw %s: %s", out_png, e)
        else:
            logger.info("Learning curve written to %s", out_png)
