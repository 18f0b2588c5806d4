"""Sphinx extension for the course's book: memlib's docstrings link to the chapters they cite.

In a docstring (or a ``#:`` comment), ``chapter 03`` / ``Chapter 04 §LoRA`` / ``chapters 02``
becomes a link to that chapter's page: the book page whose name starts with the chapter's two
digits.  The link covers "chapter NN"; a ``§`` name after it stays text (the docstrings name
sections informally, so no anchor is guessed).  A chapter the book does not have (yet) stays
plain text.  ``make book`` prints how many references were linked and which stayed plain.

Two fixes for the build, also here: the same inline script can reach a page twice (Jupyter
Book 1.0.4 with sphinx-thebe 0.3.1 adds thebe's configuration twice, and the browser then
reports "Identifier 'THEBE_JS_URL' has already been declared"); each page keeps one copy.
And it reads ``|x|`` in a docstring as an absolute value, not as a reST substitution
(memlib's docstrings never use substitutions; "max |error|" would otherwise be a build error
and a broken link).
"""
from __future__ import annotations

import re

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

logger = logging.getLogger(__name__)

# "chapter 03", "Chapter 04", "chapters 02" (not inside ``code`` or an existing role)
REF = re.compile(r"(?<![\w`<:])([Cc]hapters? )(\d\d)\b")
# |x| with a word character right inside the bars: an absolute value
ABS = re.compile(r"(?<![\\\w|])\|(\w[^|`]*?)\|(?![\w|])")


class chapter_ref(nodes.Inline, nodes.TextElement):
    """A chapter reference, resolved to a link once every page has been read."""


def chapter_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    return [chapter_ref(rawtext, text, chapter=REF.fullmatch(text).group(2))], []


def process_docstring(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if "hapter" in line:
            line = REF.sub(lambda m: f":chapter:`{m.group(0)}`", line)
        if "|" in line:
            line = ABS.sub(r"\\|\1\\|", line)
        lines[i] = line


class ResolveChapterRefs(SphinxPostTransform):
    """Replace each chapter reference by a link to its page, or by its text."""
    default_priority = 5

    def run(self, **kwargs):
        env, builder = self.env, self.app.builder
        stats = self.app.__dict__.setdefault("_chapter_link_stats", {"linked": 0, "plain": set()})
        for node in list(self.document.findall(chapter_ref)):
            nn = node["chapter"]
            docs = sorted(d for d in env.found_docs if d.rsplit("/", 1)[-1].startswith(f"{nn}_"))
            if not docs:
                node.replace_self(nodes.Text(node.astext()))
                stats["plain"].add(node.astext().lower())
                continue
            ref = nodes.reference("", "", internal=True, classes=["chapter-link"],
                                  refuri=builder.get_relative_uri(env.docname, docs[0]))
            ref += nodes.Text(node.astext())
            node.replace_self(ref)
            stats["linked"] += 1


def report(app, exception):
    stats = app.__dict__.get("_chapter_link_stats")
    if exception is None and stats:
        logger.info(f"chapter_links: {stats['linked']} docstring chapter references linked; left plain "
                    f"(no such chapter in the book yet): {sorted(stats['plain']) or 'none'}")


def dedupe_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated <script> entries (same file or inline body, same attributes) from a page."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = (getattr(js, "filename", str(js)) or "",     # an inline script's is None or ""
               tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=1)   # first: a handler may end the event
    app.add_node(chapter_ref, html=(lambda self, node: None, lambda self, node: None))
    app.add_role("chapter", chapter_role)
    app.connect("autodoc-process-docstring", process_docstring)
    app.add_post_transform(ResolveChapterRefs)
    app.connect("build-finished", report)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
