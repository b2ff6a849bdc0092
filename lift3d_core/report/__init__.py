"""The run report and the batch index: pure page assembly (:mod:`.page`), charts (:mod:`.svg`), pictures
(:mod:`.images`). Reading a run from the store and writing the files is ``tasks/report.py``'s."""

from lift3d_core.report.page import SECTIONS, BatchRow, RunReport, batch_index_html, run_report_html

__all__ = ["SECTIONS", "BatchRow", "RunReport", "batch_index_html", "run_report_html"]
