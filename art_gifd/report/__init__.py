"""Reports: HTML (self-contained), figures."""

from art_gifd.report.html import render_results_html, write_results_html

__all__ = ["render_results_html", "write_results_html"]
