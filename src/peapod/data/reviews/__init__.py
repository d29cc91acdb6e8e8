"""Raw review dumps -> a P5-style dataset directory (`peapod data from-reviews`): `read` (files, fields,
bad input), `extraction` (the feature lexicon and one explanation sentence per review), `output` (what is
written and its provenance), `convert` (the three in order)."""
