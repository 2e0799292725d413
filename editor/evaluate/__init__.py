"""MagicBrush evaluation of the editor: ``python -m editor.evaluate`` (see ``__main__``)."""
