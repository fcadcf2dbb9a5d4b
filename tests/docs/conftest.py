"""The docs tests' fixtures: ``site`` (the site built strictly once per session)."""

from _docs_support import site  # noqa: F401 - the built site
