"""The Prov-GigaPath LongNet slide encoder, reimplemented without flash-attn."""
