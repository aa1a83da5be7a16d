"""The shard format, in one place: the sample schema and record codec (`schema`), the streaming shard writer
(`writer`), the indexed reader and verification (`reader`), and the two pure pieces both sides share: masking
(`masking`, static masks in the job, dynamic ones in the loader) and stable hashing (`rng`).

`pipeline/` writes through this package and `trainer/` reads through it; they never import each other.
The format is documented for users in docs/shard-format.md.
"""
