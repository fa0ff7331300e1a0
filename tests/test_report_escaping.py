"""report.html shows every name as written: class, file, run and recipe names holding `<`, `"`,
`&` or `'` are escaped by the Jinja2 templates (autoescape), never taken for markup, and the
page's structure stays whole. The templates draw all markup: report/'s Python holds none."""
from __future__ import annotations

import re
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import make_folder_dataset, write_recipe

from clfapp.report import blocks, html, templates

# A Linux folder or file name may hold any character but '/' and NUL.
ODD_CLASSES = ["a<b>", "x\"&y'", "<script>"]
ODD_RUN = "r<i>\"&'"
VOID = {"meta", "img", "br"}          # elements without a closing tag


class Outline(HTMLParser):
    """What a page is made of: its tags, each section's table rows (cell texts) and figure
    captions, the title, and any closing tag that does not close the element open."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)   # texts come back unescaped, as written
        self.tags, self.open, self.mismatched = [], [], []
        self.sections: list[str] = []
        self.rows = defaultdict(list)
        self.captions = defaultdict(list)
        self.title = ""
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(dict(attrs)["id"])
        where = self.sections[-1] if self.sections else None
        if tag == "tr" and "tbody" in self.open:
            self.rows[where].append([])
        elif tag == "td":
            self.rows[where][-1].append("")
        elif tag == "figcaption":
            self.captions[where].append("")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.mismatched.append((tag, list(self.open)))
        else:
            self.open.pop()

    def handle_data(self, data):
        where = self.sections[-1] if self.sections else None
        if "td" in self.open:
            self.rows[where][-1][-1] += data
        elif "figcaption" in self.open:
            self.captions[where][-1] += data
        elif "title" in self.open:
            self.title += data


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A tiny run whose classes, image files, data folder, recipe and run hold <, ", & and '."""
    from typer.testing import CliRunner

    from clfapp.cli.main import app
    work = tmp_path_factory.mktemp("odd")
    make_folder_dataset(work / "data" / "o<d>&\"d'", n_per_class=6, classes=ODD_CLASSES)
    write_recipe(work / "o<d>&'d.toml", "data/o<d>&\"d'")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        r = CliRunner().invoke(app, ["fit", "o<d>&'d.toml", "--name", ODD_RUN])
    assert r.exit_code == 0, r.output
    return work / "runs" / ODD_RUN


def test_odd_names_are_escaped_and_the_page_stays_whole(odd_run):
    page = (odd_run / "report.html").read_text()
    outline = Outline(page)
    assert outline.mismatched == [] and outline.open == []        # every element closed in order
    assert "could not be drawn" not in page                        # no section failed on the names
    assert "script" not in outline.tags and "<script" not in page  # no markup from the data
    for raw in [*ODD_CLASSES, ODD_RUN, "o<d>"]:
        assert raw not in page, raw
    assert "a&lt;b&gt;" in page and "&lt;script&gt;" in page
    assert re.search(r"x(&#34;|&quot;)&amp;y(&#39;|&#x27;)", page)

    assert outline.sections == [s for s in html.SECTIONS if s != "thresholds"]
    assert outline.title == f"Run {ODD_RUN}"                       # read back as written
    for sid in ("data", "per-class"):                              # one row per class, named
        names = [row[0] for row in outline.rows[sid] if row[0] != "(no label)"]
        assert sorted(names) == sorted(ODD_CLASSES), (sid, names)
    captions = outline.captions["top-losses"]
    assert captions, "no top-loss images"
    for c in captions:   # "<file name>true: <class>predicted: <class>..." (the <br>s drop out)
        m = re.match(r"(.+)_\d\d\.pngtrue: (.+)predicted: (.+?)p ", c)
        assert m and m[1] in ODD_CLASSES and m[2] == m[1] and m[3] in ODD_CLASSES, c
    assert "data/o&lt;d&gt;&amp;" in page                          # the config, with the data path


def test_runs_compare_keeps_a_name_holding_a_bar_in_one_cell(cli, tmp_path, monkeypatch):
    """`runs --compare`'s tables are drawn from their cells, not re-parsed from report.md's
    markdown, where a | in a run or recipe name split the row into one cell too many."""
    from test_runs_command import fake_run

    monkeypatch.chdir(tmp_path)
    odd = "p|<q>&'-1"                       # fake_run names the recipe "p|<q>&'"
    fake_run(tmp_path / "runs", odd, 0.70, 300.0, 2)
    fake_run(tmp_path / "runs", "plain-1", 0.90, 100.0, 4, lr=3e-3)
    r = cli("runs", "--compare", odd, "plain-1")
    assert r.exit_code == 0, r.output
    outline = Outline((tmp_path / "runs" / "compare-runs-1" / "report.html").read_text())
    assert outline.mismatched == [] and outline.open == []
    runs = outline.rows["table"]
    assert [row[:2] for row in runs] == [[odd, "p|<q>&'"], ["plain-1", "plain"]]
    assert len({len(row) for row in runs}) == 1                    # every row as long as the others
    assert ["recipe", "p|<q>&'", "plain"] in outline.rows["config-diff"]


def test_a_section_is_text_and_data_never_markup():
    secs = [blocks.section("s", "<h>", [blocks.para("1 < 2 & \"3\"", ("b", "<i>")),
                                      blocks.table(["<th>"], [["<td>", 1.5]])])]
    page = templates.render("report.html", title="<t>", sections=secs, folder_name="<f>", stamp="now",
                            seconds=0)
    assert "<h>" not in page and "<i>" not in page and "<td><" not in page
    assert "<p>1 &lt; 2 &amp; &#34;3&#34;<b>&lt;i&gt;</b></p>" in page
    assert "<td class=t>&lt;td&gt;</td><td>1.5000</td>" in page


def test_a_template_refuses_what_it_cannot_draw():
    import jinja2
    with pytest.raises(ValueError, match="unknown block kind video"):
        templates.render("report.html", title="t", sections=[blocks.section("s", "s", [{"kind": "video"}])],
                         folder_name="f", stamp="now", seconds=0)
    with pytest.raises(jinja2.UndefinedError):      # a value left out is an error, not a blank
        templates.render("report.html", title="t", sections=[], folder_name="f", seconds=0)


def test_a_new_page_extends_the_layout():
    """A later page (data issues, a server's page) reuses page.html: its CSS, header, nav."""
    child = templates.environment().from_string(
        '{% extends "page.html" %}{% block main %}<p>{{ issue }}</p>{% endblock %}')
    page = child.render(title="Data issues", nav=[("dups", "Duplicates <&>")], issue="<img src=x>")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<h1>Data issues</h1>" in page
    assert '<a href="#dups">Duplicates &lt;&amp;&gt;</a>' in page
    assert "<p>&lt;img src=x&gt;</p>" in page


def test_the_report_modules_hold_no_markup():
    """Markup lives in the templates, where autoescape covers every value; HTML built in Python
    would need marking safe and escaping by hand."""
    tag = re.compile(r"<(/?)(p|b|br|td|th|tr|table|div|img|code|pre|figure|figcaption|section|h\d|ul|li|span)\b[^>]*>")
    found = [(p.name, m.group(0)) for p in Path(html.__file__).parent.glob("*.py")
             for m in tag.finditer(p.read_text())]
    assert found == []
