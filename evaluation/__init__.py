"""MagicBrush evaluation of the editor: ``python -m evaluation`` (see ``__main__``)."""
