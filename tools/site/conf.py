"""Sphinx configuration of the study site (tools/site/build.py generates the sources)."""

project = "cameamp-lab"
extensions = ["myst_nb", "sphinx-mathjax-offline"]
html_theme = "furo"
html_title = "cameamp-lab"
html_static_path = ["static"]
html_css_files = ["annotated.css"]
myst_enable_extensions = ["dollarmath"]
nb_execution_mode = "off"  # executed by notebooks.run_all before the build (a failing notebook fails it)
nb_execution_raise_on_error = True
# the spec's heading levels skip (### under #), and its tables are plain Markdown
suppress_warnings = ["myst.header"]
exclude_patterns = []


def setup(app):
    # the annotated pages' math sits in raw HTML, which Sphinx does not see: load MathJax on every page
    app.set_html_assets_policy("always")
