"""Modules every layer uses: the input errors (:mod:`.errors`) and lose-nothing output writing (:mod:`.outputs`)."""
