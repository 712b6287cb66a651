"""Modules every layer uses: the input errors (:mod:`.errors`), bounded reads of small user files
(:mod:`.inputs`) and lose-nothing output writing (:mod:`.outputs`)."""
