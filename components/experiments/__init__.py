"""Online evaluation: what was served (the exposure log), who saw which arm (hashed
assignment, interleaving), what they did with it (attribution) and what it says (the
readout's statistics). Plain numpy / scipy / pyarrow, no Prefect import."""
