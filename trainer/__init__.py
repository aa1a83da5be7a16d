"""The DeepSpeed ZeRO trainer that streams bertline shards into the encoder (built in issue #4).

It reads shards through `shardformat.schema`, the one module that declares the sample layout.
"""
