"""Text to batches: corpus reading, vocabularies, the token cache, the input pipeline.

Also holds the shipped sample corpus (`kjv.txt.gz`, see README.md here).
"""
