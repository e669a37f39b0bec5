"""A module whose import fails, for the twistd --backend error test."""

raise RuntimeError("this module is broken on purpose")
