"""The report pages' Jinja2 templates (the .html files in this folder) and `render`.

page.html is the layout every page extends: the inline CSS (page.css; no external assets, so a
page opens from disk, mailed or copied anywhere), a header with the title and a nav bar, the
main column and a footer, as blocks a page overrides. blocks.html draws the section bodies
(report/blocks.py makes them), report.html a page of sections: a run's or an evaluation's
report.html and the comparison pages. A new page (data issues, a server's page) extends
page.html, or renders report.html with its own sections.

Autoescape is on for every template: each value a page shows is escaped, so names and text
from the user (classes, files, runs, recipes) cannot break or inject into the page. Nothing is
marked safe; undefined variables are errors, not blanks.
"""
from __future__ import annotations

from functools import cache


@cache
def environment():
    """The one Jinja2 environment over this folder (made on first use: `clfapp --help` and
    commands that write no page never import jinja2)."""
    import jinja2
    env = jinja2.Environment(loader=jinja2.PackageLoader("clfapp.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["fail"] = _fail
    return env


def _fail(message: str):
    """Stops a template that meets what it cannot draw (an unknown block kind), rather than
    leaving a hole in the page."""
    raise ValueError(f"report template: {message}")


def render(name: str, **context) -> str:
    """The page of template `name` (e.g. "report.html") filled with `context`: plain values,
    never HTML."""
    return environment().get_template(name).render(**context)
